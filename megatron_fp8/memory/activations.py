"""Bytes autograd keeps for backward in one micro-batch's forward pass on one rank, op by op.

Learned from ActivationMeter on this implementation (every storage counted once), per layer:
- each norm keeps its input (residual stream; split along the sequence under SP) and its statistics;
- each FP8 linear keeps only the FP8 transpose of its input (1 byte/element; column-parallel inputs are
  whole-sequence, since the FP8 all-gather happens inside) and its scale_inv; at ``off`` F.linear keeps the
  compute-dtype input instead;
- attention keeps SDPA's q/k/v (views of the QKV output, or RoPE'd copies), its output and logsumexp
  (fused kernels), or, on CPU with attention dropout, the math path's float32 scores, mask and
  probabilities (s x s per head);
- the MLP keeps the GeLU input (SwiGLU: fc1's output and silu's output);
- dropout keeps its mask: bool on CUDA (fused kernel), the compute dtype on CPU (x * mask);
- embeddings keep the token ids (and position ids), the loss keeps the FP32 softmax over the local
  vocabulary plus labels.
Parameters that ops save (norm weights, the head weight, linear weights at ``off``) are counted by the
meter but are no extra memory: they are returned apart, as ``saved_params``.
A layer --first-last-layers-bf16 keeps out of FP8 is counted as at ``off`` (``fp8=False``); a stage's
layers are described by one such flag each (:func:`stage_layers`).
``cuda=False`` is measured here to the byte (tests/test_memory_plan.py); ``cuda=True`` swaps in what the
CUDA kernels are documented to save (bool dropout masks, flash/efficient attention, FP32 norm statistics,
fused RMSNorm, SDPA output not laid out sequence-major) and has not been measured on a GPU.
"""

from dataclasses import dataclass


from ..config import Config
from ..fp8.blockwise import BLOCK

INT64, BOOL, FP32 = 8, 1, 4


@dataclass(frozen=True)
class Shapes:
    """Per-rank sizes of one micro-batch (tokens = seq x micro-batch)."""

    seq: int
    batch: int
    hidden: int
    ffn: int
    heads: int  # heads on this TP rank
    groups: int  # key/value heads (query groups) on this TP rank
    head_dim: int
    tp: int
    sp: bool
    elem: int  # compute dtype bytes

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

    @property
    def stream(self) -> int:
        """Elements of the residual stream on this rank ([s/tp, b, h] under SP)."""
        return self.tokens * self.hidden // (self.tp if self.sp else 1)


def shapes(config: Config) -> Shapes:
    m, p = config.model, config.parallel
    tp = p.tensor_model_parallel_size
    return Shapes(m.seq_length, config.training.micro_batch_size, m.hidden_size, m.ffn_hidden_size,
                  m.num_attention_heads // tp, m.query_groups // tp, m.head_dim, tp, p.sequence_parallel and tp > 1,
                  config.precision.policy.compute.itemsize)


def _norm(config: Config, sh: Shapes, cuda: bool) -> int:
    rows = sh.stream // sh.hidden
    # --apply-layernorm-1p: the op saves the 1 + w it was given, a fresh tensor per forward
    one_plus_w = sh.hidden * sh.elem if config.model.apply_layernorm_1p else 0
    if config.model.normalization == "LayerNorm":  # input, mean, rstd
        return sh.stream * sh.elem + 2 * rows * (FP32 if cuda else sh.elem) + one_plus_w
    if cuda:  # rms_norm dispatches to _fused_rms_norm on CUDA: input and float32 rstd
        return sh.stream * sh.elem + rows * FP32 + one_plus_w
    return 2 * sh.stream * FP32 + rows * FP32 + one_plus_w  # CPU composite: float32 input and normalised copy, rstd


def stage_layers(config: Config, pp_rank: int) -> list[bool]:
    """Per layer of pipeline stage ``pp_rank``: whether its linears run in FP8 (global layer numbers)."""
    m, pr = config.model, config.precision
    per_stage = m.num_layers // config.parallel.pipeline_model_parallel_size
    return [pr.policy.fp8_gemm and not pr.high_precision_layer(i, m.num_layers)
            for i in range(pp_rank * per_stage, (pp_rank + 1) * per_stage)]


def _linear_input(config: Config, sh: Shapes, rows: int, cols: int, fp8: bool) -> int:
    """What one linear keeps of its [rows, cols] input (``fp8``: an FP8 linear)."""
    if not fp8:
        return rows * cols * sh.elem
    recipe = config.precision.recipe.recipe
    scales = cols * -(-rows // BLOCK) * FP32 if recipe == "blockwise" else FP32
    return rows * cols + scales


def _dropout_mask(sh: Shapes, numel: int, p: float, cuda: bool) -> int:
    return 0 if p == 0 else numel * (BOOL if cuda else sh.elem)


def _attention(config: Config, sh: Shapes, cuda: bool) -> int:
    m = config.model
    local = sh.tokens * sh.heads * sh.head_dim  # q (and SDPA's output) on this rank
    kv = sh.tokens * sh.groups * sh.head_dim  # k or v on this rank (fewer under grouped-query attention)
    qkv_out = local + 2 * kv  # the QKV linear's output, of which k and v (and q without GQA) are views
    rope = m.position_embedding_type == "rope"
    strided_q = sh.heads != sh.groups > 1  # GQA with more than one group on this rank: q is not a view
    if cuda or m.attention_dropout == 0:  # fused SDPA: inputs, output, logsumexp
        # RoPE'd copies of q and k; without RoPE, GQA's q is one reshaped copy (groups are strided)
        copies = local + kv if rope else (local if strided_q else 0)
        return (qkv_out + copies) * sh.elem + local * sh.elem + sh.batch * sh.heads * sh.seq * FP32
    # CPU math path (dropout): float32 scaled q and k, v, and scores, dropout mask, dropped scores. v is a
    # view of the QKV output in FP32 attention; a float32 copy in BF16, and under GQA (K/V repeated per head)
    v = qkv_out * FP32 if sh.elem == FP32 and sh.groups == sh.heads else local * FP32
    return 2 * local * FP32 + v + 3 * sh.batch * sh.heads * sh.seq * sh.seq * FP32


def _attention_inputs(config: Config, sh: Shapes) -> int:
    """What selective recomputation keeps of the attention core: q, k, v (views of the QKV output, or the
    RoPE'd / regrouped copies)."""
    local, kv = sh.tokens * sh.heads * sh.head_dim, sh.tokens * sh.groups * sh.head_dim
    copies = local + kv if config.model.position_embedding_type == "rope" else \
        (local if sh.heads != sh.groups > 1 else 0)
    return (local + 2 * kv + copies) * sh.elem


def attention_core_bytes(config: Config, cuda: bool) -> int:
    """What the attention core (SDPA) saves: what selective recomputation rebuilds in backward."""
    return _attention(config, shapes(config), cuda)


def layer_bytes(config: Config, cuda: bool, selective: bool = False, fp8: bool | None = None) -> int:
    """One transformer layer, one micro-batch: everything kept (no recomputation), or with ``selective``
    what selective recomputation keeps (the core's inputs instead of what it saves). ``fp8``: whether its
    linears run in FP8 (default: the level's choice)."""
    fp8 = config.precision.policy.fp8_gemm if fp8 is None else fp8
    m, sh = config.model, shapes(config)
    tokens, ffn_local, h_local = sh.tokens, sh.ffn // sh.tp, sh.heads * sh.head_dim
    total = 2 * _norm(config, sh, cuda)
    total += _linear_input(config, sh, tokens, sh.hidden, fp8)  # QKV (whole sequence)
    total += _attention_inputs(config, sh) if selective else _attention(config, sh, cuda)
    # attention output projection; at ``off`` its input is SDPA's output, already kept where the CPU fused
    # kernel writes it sequence-major (the reshape is a view), a fresh copy otherwise
    view = not fp8 and not cuda and m.attention_dropout == 0 and not selective
    total += 0 if view else _linear_input(config, sh, tokens, h_local, fp8)
    total += _linear_input(config, sh, tokens, sh.hidden, fp8)  # fc1 (whole sequence)
    total += tokens * ffn_local * sh.elem * (3 if m.swiglu else 1)  # GeLU input / fc1 output + silu output
    total += _linear_input(config, sh, tokens, ffn_local, fp8)  # fc2
    total += 2 * _dropout_mask(sh, sh.stream, m.hidden_dropout, cuda)
    return total


def embedding_bytes(config: Config, cuda: bool) -> int:
    """First stage: token ids (TP: shifted ids and the out-of-range mask), position ids, dropout mask."""
    m, sh = config.model, shapes(config)
    total = sh.tokens * INT64 + (sh.tokens * BOOL if sh.tp > 1 else 0)
    if m.position_embedding_type == "learned_absolute":
        total += sh.seq * INT64  # arange(seq), expanded over the batch
    return total + _dropout_mask(sh, sh.stream, m.hidden_dropout, cuda)


def rope_bytes(config: Config) -> int:
    """The cos/sin tables every layer's RoPE multiplies by (saved once per forward)."""
    m = config.model
    if m.position_embedding_type != "rope":
        return 0
    return 2 * m.seq_length * m.rotary_dim * config.precision.policy.compute.itemsize


def head_bytes(config: Config, cuda: bool) -> int:
    """Last stage: final norm, the head's input (whole sequence), FP32 softmax over the local vocabulary,
    labels and their in-range mask."""
    sh = shapes(config)
    vocab_local = config.model.vocab_size // sh.tp
    return (_norm(config, sh, cuda) + sh.tokens * sh.hidden * sh.elem + sh.tokens * vocab_local * FP32
            + sh.tokens * (INT64 + BOOL))


def layer_input_bytes(config: Config) -> int:
    """What full-layer recomputation keeps of each layer: its input."""
    sh = shapes(config)
    return sh.stream * sh.elem


def recompute_split(config: Config, layers: list[bool], cuda: bool) -> tuple[int, int, list[bool], list[bool]]:
    """A stage's ``layers`` (:func:`stage_layers`) under the configured recomputation (model/recompute.py), one
    micro-batch: (bytes the layers keep until backward, bytes the largest recomputed region rebuilds, layers
    whose parameters ops save in the first forward, layers of that region)."""
    t = config.training
    full = [layer_bytes(config, cuda, fp8=f) for f in layers]
    if t.recompute_granularity == "selective":
        kept = sum(layer_bytes(config, cuda, selective=True, fp8=f) for f in layers)
        return kept, attention_core_bytes(config, cuda), layers, []
    if t.recompute_granularity != "full":
        return sum(full), 0, layers, []
    n = min(t.recompute_num_layers, len(layers))
    if t.recompute_method == "uniform":  # groups of n layers, each rebuilt whole
        groups = [range(i, min(i + n, len(layers))) for i in range(0, len(layers), n)]
        kept, saved = len(groups) * layer_input_bytes(config), []
    else:  # block: the first n layers, one by one
        groups = [range(i, i + 1) for i in range(n)]
        kept, saved = n * layer_input_bytes(config) + sum(full[n:]), layers[n:]
    region = max(groups, key=lambda g: sum(full[i] for i in g)
                 + saved_param_bytes(config, [layers[i] for i in g], False, cuda))
    return kept, sum(full[i] for i in region), saved, [layers[i] for i in region]


def saved_param_bytes(config: Config, layers: list[bool], last: bool, cuda: bool) -> int:
    """Storage of the parameters that ops save for backward: counted by ActivationMeter, no extra memory.
    ``layers``: one FP8 flag per layer (:func:`stage_layers`)."""
    m, sh = config.model, shapes(config)
    rows_split = sh.tp
    # the norm's weight (with --apply-layernorm-1p the op saves 1 + w instead: an activation) and bias
    norm = sh.hidden * ((0 if m.apply_layernorm_1p else 1) + (1 if m.normalization == "LayerNorm" else 0))
    fc1 = 2 * sh.ffn if m.swiglu else sh.ffn
    column = (m.qkv_size + fc1) * sh.hidden // rows_split  # QKV, fc1
    attn = m.num_attention_heads * m.head_dim
    linears = column + (attn + sh.ffn) * sh.hidden // sh.tp  # + proj, fc2 (split along columns)
    total = sum(2 * norm + (0 if fp8 else linears) for fp8 in layers)  # F.linear keeps its weight
    if last:
        total += norm + m.vocab_size // rows_split * sh.hidden
    return total * sh.elem
