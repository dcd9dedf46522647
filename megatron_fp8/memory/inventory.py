"""The parameters one rank holds, as (name, local shape, FP8-eligible), in GPTModel's registration order.
The linears of the layers --first-last-layers-bf16 keeps out of FP8 (global layer numbers) are not eligible.

Mirrors model/gpt.py, model/transformer.py, model/attention.py, model/mlp.py and layers/: TP splits the
linears (column-parallel: output rows; row-parallel: input columns) and the vocabulary; PP gives each
stage ``num_layers / pp`` layers, the first stage the embeddings, the last the final norm and the head
(a copy of the tied embedding when the first and last stages differ).
"""

from dataclasses import dataclass, field
from math import prod

from ..config import Config
from ..layers.weights import ParamInfo


@dataclass(frozen=True, eq=False)
class ParamSpec:
    """Duck-types what the ownership rule reads of an ``nn.Parameter`` (``numel`` and its ParamInfo)."""

    name: str
    shape: tuple[int, ...]
    info: ParamInfo = field(default_factory=ParamInfo)

    def numel(self) -> int:
        return prod(self.shape)


def _layer(config: Config, index: int, tp: int) -> list[ParamSpec]:
    m = config.model
    h, ffn = m.hidden_size, m.ffn_hidden_size
    fc1 = 2 * ffn if m.swiglu else ffn
    prefix = f"decoder.layers.{index}"
    fp8 = not config.precision.high_precision_layer(index, m.num_layers)  # --first-last-layers-bf16

    def norm(name):
        out = [ParamSpec(f"{prefix}.{name}.weight", (h,))]
        return out + ([ParamSpec(f"{prefix}.{name}.bias", (h,))] if m.normalization == "LayerNorm" else [])

    def linear(name, rows, cols, bias_rows, bias=m.add_bias_linear):
        info = ParamInfo(fp8_eligible=fp8, high_precision_layer=not fp8)
        out = [ParamSpec(f"{prefix}.{name}.weight", (rows, cols), info)]
        return out + ([ParamSpec(f"{prefix}.{name}.bias", (bias_rows,))] if bias else [])

    qkv, attn = m.qkv_size // tp, m.num_attention_heads * m.head_dim // tp  # GQA: fewer K/V rows
    return (norm("input_layernorm")
            + linear("self_attention.linear_qkv", qkv, h, qkv, bias=m.add_bias_linear or m.add_qkv_bias)
            + linear("self_attention.linear_proj", h, attn, h)
            + norm("pre_mlp_layernorm")
            + linear("mlp.linear_fc1", fc1 // tp, h, fc1 // tp)
            + linear("mlp.linear_fc2", h, ffn // tp, h))


def stage_params(config: Config, pp_rank: int = 0) -> list[ParamSpec]:
    """The parameters of one TP rank of pipeline stage ``pp_rank`` (every TP rank holds the same sizes)."""
    m, p = config.model, config.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    first, last = pp_rank == 0, pp_rank == pp - 1
    tied = not m.untie_embeddings_and_output_weights
    h, vocab_local = m.hidden_size, m.vocab_size // tp
    params = []
    if last and (not tied or not first):  # registered directly on GPTModel, so listed first
        params.append(ParamSpec("output_layer.weight" if not tied else "embedding.word_embeddings.weight",
                                (vocab_local, h)))
    if first:
        params.append(ParamSpec("embedding.word_embeddings.weight", (vocab_local, h)))
        if m.position_embedding_type == "learned_absolute":
            params.append(ParamSpec("embedding.position_embeddings.weight", (m.max_position_embeddings, h)))
    per_stage = m.num_layers // pp
    for i in range(pp_rank * per_stage, (pp_rank + 1) * per_stage):
        params += _layer(config, i, tp)
    if last:
        params.append(ParamSpec("decoder.final_layernorm.weight", (h,)))
        if m.normalization == "LayerNorm":
            params.append(ParamSpec("decoder.final_layernorm.bias", (h,)))
    return params


def total_params(config: Config) -> int:
    """Parameters of the whole model (one copy of everything, tied embedding counted once)."""
    return sum(q.numel() for q in stage_params(Config(model=config.model), 0))  # TP 1, PP 1
