"""The configuration: one ``Config`` of validated dataclasses, built from Megatron-style flags.

Every error names the flag a user would change. The precision level (docs/design.md §1) is resolved here, once,
into a :class:`PrecisionPolicy` — plain data that the layers and the optimizer read, so that no module
branches on the level name.
"""

from dataclasses import dataclass, field, replace

import torch

from .data.data_config import DataConfig
from .flagspec import NON_NEGATIVE, POSITIVE, PROBABILITY, UNIT_INTERVAL, check_fields, flag
from .fp8.formats import E4M3, dtype_from_name, is_fp8
from .fp8.scaling import Fp8Recipe
from .schedule import batch_schedule, check_batch_sizes, check_rampup, parse_step_schedule

FP8_LEVELS = ("off", "gemm", "O1", "O2", "O3")


@dataclass
class ModelConfig:
    num_layers: int = flag(4, "transformer layers", bounds=POSITIVE)
    hidden_size: int = flag(256, "transformer hidden size", bounds=POSITIVE)
    num_attention_heads: int = flag(4, "attention heads", bounds=POSITIVE)
    ffn_hidden_size: int | None = flag(None, "MLP hidden size (default: 4 x --hidden-size)", bounds=POSITIVE)
    seq_length: int = flag(256, "tokens per sample", bounds=POSITIVE)
    max_position_embeddings: int | None = flag(None, "positions of the learned position embedding "
                                                     "(default: --seq-length)", bounds=POSITIVE)
    vocab_size: int | None = None  # set from the tokenizer, then padded
    unpadded_vocab_size: int | None = None  # the tokenizer's size, kept so other layouts pad from it
    make_vocab_size_divisible_by: int = flag(128, "pad the vocabulary to a multiple of this x TP", bounds=POSITIVE)
    position_embedding_type: str = flag("learned_absolute", choices=("learned_absolute", "rope"))
    rotary_base: int = flag(10000, "RoPE base (theta)", bounds=POSITIVE)
    # grouped-query attention, head size, QKV bias, partial and Llama-3.1-scaled RoPE, zero-centred norms
    group_query_attention: bool = flag(False, "grouped-query attention: --num-query-groups key/value heads, "
                                              "each shared by a group of query heads")
    num_query_groups: int | None = flag(None, "key/value heads with --group-query-attention (default 1, as "
                                              "Megatron; without it: --num-attention-heads)", bounds=POSITIVE)
    kv_channels: int | None = flag(None, "head dimension (default: --hidden-size / --num-attention-heads)",
                                   bounds=POSITIVE)
    add_qkv_bias: bool = flag(False, "bias on the QKV projection only (as Qwen2), also with --disable-bias-linear")
    rotary_percent: float = flag(1.0, "fraction of the head dimension RoPE rotates", bounds=(0, 1, False, True))
    use_rope_scaling: bool = flag(False, "Llama-3.1 RoPE frequency scaling (low/high frequency factors 1 and 4, "
                                         "original context 8192)")
    rope_scaling_factor: float = flag(8.0, "Llama-3.1 RoPE scaling factor (with --use-rope-scaling)",
                                      bounds=POSITIVE)
    apply_layernorm_1p: bool = flag(False, "zero-centred norm weights: stored as w - 1, applied as 1 + w")
    normalization: str = flag("LayerNorm", choices=("LayerNorm", "RMSNorm"))
    layernorm_epsilon: float = flag(1e-5, "epsilon of every norm", name="--norm-epsilon",
                                    aliases=("--layernorm-epsilon",), bounds=POSITIVE)
    swiglu: bool = flag(False, "SwiGLU MLP (gated SiLU), as Llama")
    # tanh-approximate GeLU (GPT-2's "gelu_new") instead of the exact erf form
    openai_gelu: bool = flag(False, "tanh-approximate GeLU, as GPT-2 was trained with")
    untie_embeddings_and_output_weights: bool = flag(False, "separate output head")
    add_bias_linear: bool = flag(True, "no biases in the linear layers", name="--disable-bias-linear",
                                 action="store_false")
    hidden_dropout: float = flag(0.1, "dropout on the residual branches", bounds=UNIT_INTERVAL)
    attention_dropout: float = flag(0.1, "dropout on attention probabilities", bounds=UNIT_INTERVAL)
    init_method_std: float = flag(0.02, "standard deviation of the normal initialisation", bounds=NON_NEGATIVE)

    def __post_init__(self):
        check_fields(self)
        self._check_attention()
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        if self.position_embedding_type == "learned_absolute" and self.seq_length > self.max_position_embeddings:
            raise ValueError(f"--seq-length {self.seq_length} exceeds --max-position-embeddings "
                             f"{self.max_position_embeddings}")
        self._check_rope()

    def _check_attention(self) -> None:
        """Megatron's rules for --kv-channels and --num-query-groups (the values stay as given; ``head_dim``
        and ``query_groups`` resolve the defaults, so a copy with another --hidden-size stays consistent)."""
        heads = self.num_attention_heads
        if self.kv_channels is None and self.hidden_size % heads:
            raise ValueError(f"--hidden-size {self.hidden_size} must be divisible by --num-attention-heads "
                             f"{heads} (or give the head dimension with --kv-channels)")
        if not self.group_query_attention and self.num_query_groups not in (None, heads):
            raise ValueError(f"--num-query-groups {self.num_query_groups} needs --group-query-attention")
        if heads % self.query_groups:
            raise ValueError(f"--num-attention-heads {heads} is not divisible by --num-query-groups "
                             f"{self.query_groups}")

    def _check_rope(self) -> None:
        if self.position_embedding_type != "rope":
            for name, value, default in (("--rotary-percent", self.rotary_percent, 1.0),
                                         ("--use-rope-scaling", self.use_rope_scaling, False)):
                if value != default:
                    raise ValueError(f"{name} needs --position-embedding-type rope")
        elif self.rotary_dim % 2 or self.rotary_dim == 0:
            raise ValueError(f"--position-embedding-type rope needs an even, non-zero rotary dimension: head "
                             f"dimension {self.head_dim} (--kv-channels) x --rotary-percent {self.rotary_percent} "
                             f"gives {self.rotary_dim}")

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        """Key/value heads: --num-query-groups (default 1) with --group-query-attention, else one per head."""
        if not self.group_query_attention:
            return self.num_attention_heads
        return 1 if self.num_query_groups is None else self.num_query_groups

    @property
    def rotary_dim(self) -> int:
        """Leading channels of each head that RoPE rotates (Megatron: int(kv_channels x rotary_percent))."""
        return int(self.head_dim * self.rotary_percent)

    @property
    def qkv_size(self) -> int:
        """Output rows of the fused QKV projection: the query heads plus one key and one value per group."""
        return (self.num_attention_heads + 2 * self.query_groups) * self.head_dim


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = flag(1, "tensor-parallel ranks", bounds=POSITIVE)
    pipeline_model_parallel_size: int = flag(1, "pipeline stages", bounds=POSITIVE)
    sequence_parallel: bool = flag(False, "split norms/dropout along the sequence across the TP group")
    use_distributed_optimizer: bool = flag(False, "shard optimizer states over data-parallel ranks (ZeRO-1)")
    overlap_grad_reduce: bool = flag(False, "start each gradient bucket's data-parallel reduction during backward")
    ddp_bucket_size: int = flag(1 << 22, "elements per gradient bucket", bounds=POSITIVE)
    distributed_timeout_minutes: float = flag(10.0, "timeout of every process group: a collective blocked this "
                                              "long by a hung peer fails, naming the operation", bounds=POSITIVE)

    def __post_init__(self):
        check_fields(self)
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("--sequence-parallel needs --tensor-model-parallel-size > 1")


@dataclass(frozen=True)
class PrecisionPolicy:
    """What each level keeps in which dtype (docs/design.md §1), resolved from the level and explicit flags.

    ``weight``/``grad``/``master``/``exp_avg``/``exp_avg_sq`` describe FP8-eligible parameters (linear
    weights). ``master`` is None when the weight itself is the master copy. Other parameters keep
    compute-dtype weights, FP32 gradients, an FP32 master when the compute dtype is BF16, FP32 moments.
    """

    fp8_gemm: bool
    compute: torch.dtype
    weight: torch.dtype
    grad: torch.dtype
    master: torch.dtype | None
    exp_avg: torch.dtype
    exp_avg_sq: torch.dtype
    grad_reduce: torch.dtype
    other_grad_reduce: torch.dtype  # wire dtype of the float gradients of non-FP8 parameters
    # how the optimizer stores the FP16/BF16 master of FP8-eligible weights: "nearest" or "stochastic"
    master_rounding: str = "nearest"

    def stores_scale(self, fp8_eligible: bool) -> bool:
        """Whether a parameter's storage carries a scale_inv: FP8-eligible weights at O1-O3 (FP16 + scale or
        FP8); compute-dtype storage never does, FP16 with --fp16 included."""
        return fp8_eligible and is_fp8(self.grad)

    def eligible_bytes_per_param(self, dp_size: int = 1, sharded: bool = False) -> float:
        """Model-state bytes per FP8-eligible parameter (the docs/design.md §1 table)."""
        return _bytes_per_param(self.weight, self.grad, (self.master, self.exp_avg, self.exp_avg_sq),
                                dp_size if sharded else 1)

    def other_bytes_per_param(self, dp_size: int = 1, sharded: bool = False) -> float:
        """Model-state bytes per parameter that is not FP8-eligible (a linear weight of the layers
        --first-last-layers-bf16 keeps out of FP8 among them): compute-dtype weight, FP32 gradient and
        moments, an FP32 master unless the compute dtype is FP32. `off`'s bytes: 16 in FP32, 18 in BF16/FP16."""
        return _bytes_per_param(self.compute, torch.float32, (self.other_master, torch.float32, torch.float32),
                                dp_size if sharded else 1)

    @property
    def other_master(self) -> torch.dtype | None:
        """The master of a parameter that is not FP8-eligible: FP32 unless its compute-dtype storage is FP32."""
        return None if self.compute == torch.float32 else torch.float32


def _bytes_per_param(weight, grad, states, shards: int) -> float:
    def size(dtype):
        return dtype.itemsize if dtype is not None else 0
    return size(weight) + size(grad) + sum(size(d) for d in states) / shards


@dataclass
class PrecisionConfig:
    fp8_level: str = flag("O2", "what is kept in FP8 (docs/design.md §1)", choices=FP8_LEVELS)
    bf16: bool = flag(False, "BF16 compute dtype (the GPU setting)")
    recipe: Fp8Recipe = field(default_factory=Fp8Recipe)  # its own flags: --fp8-format, --fp8-recipe, ...
    main_params_dtype: str | None = flag(None, "master weights (default: by level)", choices=("fp32", "fp16"))
    exp_avg_dtype: str | None = flag(None, "first moment (default: by level)", choices=("fp32", "fp16", "bf16", "fp8"))
    exp_avg_sq_dtype: str | None = flag(None, "second moment (default: by level)",
                                        choices=("fp32", "fp16", "bf16", "fp8"))
    main_params_rounding: str | None = flag(None, "rounding of the FP16/BF16 master weights of FP8 linears when "
                                            "the optimizer stores them (default: stochastic where O1-O3 keep them "
                                            "in FP16, which keeps updates below half an FP16 step in expectation)",
                                            choices=("nearest", "stochastic"))
    grad_reduce_dtype: str | None = flag(None, "data-parallel gradient wire dtype (default: by level)",
                                         choices=("fp32", "bf16", "fp8"))
    # FP16 compute with loss scaling, as Megatron's --fp16 (optim/loss_scaler.py)
    fp16: bool = flag(False, "FP16 compute dtype with dynamic loss scaling (FP32 master weights)")
    loss_scale: float | None = flag(None, "static loss scale (default: dynamic with --fp16)", bounds=POSITIVE)
    initial_loss_scale: float = flag(2.0 ** 32, "first scale of the dynamic loss scaler", bounds=POSITIVE)
    min_loss_scale: float = flag(1.0, "the dynamic loss scale never goes below this", bounds=POSITIVE)
    loss_scale_window: int = flag(1000, "successful steps before the dynamic loss scale doubles", bounds=POSITIVE)
    hysteresis: int = flag(2, "overflows tolerated before the dynamic loss scale halves", bounds=POSITIVE)
    # Megatron's high-precision first and last transformer layers (docs/design.md §7)
    first_last_layers_bf16: bool = flag(False, "keep the first --num-layers-at-start-in-bf16 and the last "
                                               "--num-layers-at-end-in-bf16 transformer layers out of FP8: their "
                                               "linears run in the compute dtype and keep --fp8-level off's states")
    num_layers_at_start_in_bf16: int = flag(1, "transformer layers at the start kept out of FP8 with "
                                               "--first-last-layers-bf16", bounds=NON_NEGATIVE)
    num_layers_at_end_in_bf16: int = flag(1, "transformer layers at the end kept out of FP8 with "
                                             "--first-last-layers-bf16", bounds=NON_NEGATIVE)

    def __post_init__(self):
        check_fields(self)
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16: choose one compute dtype")
        self._check_first_last_layers()
        if self.grad_reduce_dtype == "fp8" and self.fp8_level in ("off", "gemm"):
            raise ValueError("--grad-reduce-dtype fp8 needs FP8 weight gradients (--fp8-level O1, O2 or O3)")
        if self.grad_reduce_dtype in ("fp32", "bf16") and self.fp8_level in ("O1", "O2", "O3"):
            raise ValueError(f"--grad-reduce-dtype {self.grad_reduce_dtype} is for the baselines: --fp8-level "
                             f"{self.fp8_level} keeps FP8 weight gradients, which are reduced in FP8")
        self.policy  # resolve once so bad combinations fail here

    def _check_first_last_layers(self) -> None:
        if self.first_last_layers_bf16 and self.fp8_level == "off":
            raise ValueError("--first-last-layers-bf16 needs an FP8 level (--fp8-level gemm, O1, O2 or O3): at "
                             "--fp8-level off no layer is in FP8")
        if not self.first_last_layers_bf16:
            for name in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
                if getattr(self, name) != 1:
                    raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} needs "
                                     "--first-last-layers-bf16")

    def high_precision_layer(self, layer: int, num_layers: int) -> bool:
        """Whether transformer layer ``layer`` (global, 0-based, as in checkpoints) stays out of FP8 with
        --first-last-layers-bf16 (Megatron's ``is_first_last_bf16_layer``)."""
        return self.first_last_layers_bf16 and (layer < self.num_layers_at_start_in_bf16
                                                or layer >= num_layers - self.num_layers_at_end_in_bf16)

    def first_last_note(self) -> str:
        """What --first-last-layers-bf16 keeps out of FP8, for the start-up log and the planner."""
        return (f"first {self.num_layers_at_start_in_bf16} and last {self.num_layers_at_end_in_bf16} transformer "
                "layers out of FP8 (--first-last-layers-bf16: compute-dtype linears, --fp8-level off's states)")

    def at_level(self, level: str) -> "PrecisionConfig":
        """The same settings at another level: explicit dtype overrides belong to the level they were chosen
        for and are dropped; --first-last-layers-bf16 is kept where the level has FP8 layers."""
        keep_layers = self.first_last_layers_bf16 and level != "off"
        return replace(self, fp8_level=level, main_params_dtype=None, exp_avg_dtype=None, exp_avg_sq_dtype=None,
                       grad_reduce_dtype=None, first_last_layers_bf16=keep_layers,
                       num_layers_at_start_in_bf16=self.num_layers_at_start_in_bf16 if keep_layers else 1,
                       num_layers_at_end_in_bf16=self.num_layers_at_end_in_bf16 if keep_layers else 1)

    @property
    def policy(self) -> PrecisionPolicy:
        compute = torch.bfloat16 if self.bf16 else (torch.float16 if self.fp16 else torch.float32)
        level = self.fp8_level
        fp8_weights = level in ("O1", "O2", "O3")
        weight = {"O1": torch.float16, "O2": torch.float16, "O3": E4M3}.get(level, compute)
        master = torch.float16 if level == "O3" else (torch.float32 if compute != torch.float32 and not fp8_weights
                                                      else None)
        if self.main_params_dtype is not None:
            chosen = dtype_from_name(self.main_params_dtype)
            master = None if chosen == weight else chosen
        if weight == E4M3 and master is None:
            raise ValueError("--fp8-level O3 keeps FP8 weights and needs a master copy: "
                             "--main-params-dtype must be fp16 or fp32")
        if weight == compute == torch.float16 and not fp8_weights and master is None:
            raise ValueError(f"--main-params-dtype fp16 with --fp16 at --fp8-level {level} leaves the FP16 weights "
                             "without a master copy (Megatron keeps FP32 master weights with --fp16)")
        narrow_master = (master or weight) in (torch.float16, torch.bfloat16)
        rounding = self.main_params_rounding or ("stochastic" if fp8_weights and narrow_master else "nearest")
        if rounding == "stochastic" and not narrow_master:
            raise ValueError(f"--main-params-rounding stochastic rounds FP16/BF16 master weights, and --fp8-level "
                             f"{level} keeps them in {str(master or weight).replace('torch.', '')}")
        exp_avg = E4M3 if level in ("O2", "O3") else torch.float32
        exp_avg_sq = torch.float16 if level in ("O2", "O3") else torch.float32
        grad_reduce = dtype_from_name(self.grad_reduce_dtype) if self.grad_reduce_dtype \
            else (E4M3 if fp8_weights else torch.float32)
        return PrecisionPolicy(
            fp8_gemm=level != "off", compute=compute, weight=weight,
            grad=E4M3 if fp8_weights else torch.float32, master=master,
            exp_avg=dtype_from_name(self.exp_avg_dtype) if self.exp_avg_dtype else exp_avg,
            exp_avg_sq=dtype_from_name(self.exp_avg_sq_dtype) if self.exp_avg_sq_dtype else exp_avg_sq,
            grad_reduce=grad_reduce,
            # FP8 levels send the small non-FP8 gradients in BF16; the baselines keep one dtype throughout
            other_grad_reduce=torch.float32 if grad_reduce == torch.float32 else torch.bfloat16,
            master_rounding=rounding)


@dataclass
class TrainingConfig:
    micro_batch_size: int = flag(8, "samples per micro-batch and data-parallel rank", bounds=POSITIVE)
    global_batch_size: int | None = flag(None, "samples per optimizer step (default: --micro-batch-size, or the "
                                               "last batch size of --step-batch-size-schedule)", bounds=POSITIVE)
    train_iters: int | None = flag(None, "optimizer steps (default 300 unless --train-samples)", bounds=POSITIVE)
    lr: float = flag(1e-3, "peak learning rate", bounds=NON_NEGATIVE)
    min_lr: float = flag(1e-4, "learning rate at the end of the decay", bounds=NON_NEGATIVE)
    lr_decay_style: str = flag("cosine", choices=("constant", "linear", "cosine"))
    lr_warmup_iters: int | None = flag(None, "linear warm-up steps (default 30; 0 with --lr-warmup-fraction or "
                                             "--train-samples)", bounds=NON_NEGATIVE)
    lr_decay_iters: int | None = flag(None, "decay steps (default: --train-iters)", bounds=POSITIVE)
    weight_decay: float = flag(0.1, "decoupled weight decay", bounds=NON_NEGATIVE)
    clip_grad: float = flag(1.0, "global gradient-norm clip (0: none)", bounds=NON_NEGATIVE)
    adam_beta1: float = flag(0.9, bounds=UNIT_INTERVAL)
    adam_beta2: float = flag(0.95, bounds=UNIT_INTERVAL)
    adam_eps: float = flag(1e-8, bounds=POSITIVE)
    seed: int = flag(1234, "random seed (weights, dropout, data order)", bounds=NON_NEGATIVE)
    log_interval: int = flag(10, "iterations per log line", bounds=POSITIVE)
    eval_interval: int = flag(100, "iterations between evaluations", bounds=POSITIVE)
    eval_iters: int = flag(10, "batches per evaluation", bounds=NON_NEGATIVE)
    save: str | None = flag(None, "checkpoint directory to write")
    load: str | None = flag(None, "checkpoint directory to resume from")
    use_checkpoint_args: bool = flag(False, "take the model's shape, tokenizer, precision and TP/PP layout from the "
                                            "checkpoint under --load (flags given explicitly must agree)")
    save_interval: int | None = flag(None, "iterations between checkpoints", bounds=POSITIVE)
    async_save: bool = flag(False, "write checkpoints in the background from a snapshot while training goes on")
    log_json: str | None = flag(None, "write one JSON object per logged iteration to this file")
    tensorboard_dir: str | None = flag(None, "TensorBoard event directory")
    # FP8 statistics (stats_collector.py, docs/design.md §7): every N-th iteration, per FP8 tensor
    fp8_stats_interval: int = flag(0, "measure amax, scale, underflow, saturation and quantization error of every "
                                      "FP8 tensor every N iterations (0: off, no cost)", bounds=NON_NEGATIVE)
    fp8_stats_warn_underflow: float | None = flag(None, "warn for each FP8 tensor whose underflow fraction exceeds "
                                                        "this", bounds=PROBABILITY)
    fp8_stats_warn_saturation: float | None = flag(None, "warn for each FP8 tensor whose saturated fraction "
                                                         "exceeds this", bounds=PROBABILITY)
    exit_interval: int | None = flag(None, "stop after an iteration divisible by this", bounds=POSITIVE)
    check_for_nan_in_loss_and_grad: bool = flag(True, "stop at a NaN loss or gradient norm (Megatron's default)",
                                                negative="--no-check-for-nan-in-loss-and-grad")
    max_consecutive_skipped_iterations: int = flag(10, "stop when this many iterations in a row were skipped "
                                                       "(inf/NaN gradients); 0: never", bounds=NON_NEGATIVE)
    # Megatron's sample-based schedule, batch-size ramps, decoupled lr and early exits (schedule.py,
    # optim/lr_scheduler.py, exit_conditions.py)
    train_samples: int | None = flag(None, "samples to train on (instead of --train-iters)", bounds=POSITIVE)
    lr_warmup_samples: int = flag(0, "linear warm-up samples (with --train-samples)", bounds=NON_NEGATIVE)
    lr_decay_samples: int | None = flag(None, "decay samples (default: --train-samples)", bounds=POSITIVE)
    lr_warmup_fraction: float | None = flag(None, "warm-up as a fraction of the decay length", bounds=PROBABILITY)
    rampup_batch_size: list[int] | None = flag(None, "grow the global batch from START by INCR over SAMPLES samples "
                                                     "to --global-batch-size", nargs=3,
                                               metavar=("START", "INCR", "SAMPLES"))
    step_batch_size_schedule: str | None = flag(None, "global batch size by consumed tokens: \"0:16 2.4B:320 ...\" "
                                                      "(suffixes K, M, B, T)")
    decoupled_lr: float | None = flag(None, "peak learning rate of the word embedding and output layer",
                                      bounds=NON_NEGATIVE)
    decoupled_min_lr: float | None = flag(None, "their minimum (default: --min-lr)", bounds=NON_NEGATIVE)
    exit_duration_in_mins: float | None = flag(None, "save and stop once the run has lasted this long",
                                               bounds=POSITIVE)
    exit_signal_handler: bool = flag(False, "on SIGTERM, save a checkpoint and exit cleanly (all ranks agree)")
    # fine-tuning and what a checkpoint carries (Megatron's names; docs in megatron_fp8/finetune.py)
    finetune: bool = flag(False, "load the weights of --load only: iteration, optimizer, scheduler, RNG and data "
                                 "position start fresh; a different --fp8-level or layout converts on load")
    no_load_optim: bool = flag(False, "do not load the optimizer state from --load")
    no_load_rng: bool = flag(False, "do not load the RNG state from --load")
    no_save_optim: bool = flag(False, "write checkpoints without optimizer state")
    no_save_rng: bool = flag(False, "write checkpoints without RNG state")
    # activation recomputation (Megatron's flags; model/recompute.py)
    recompute_activations: bool = flag(False, "recompute the attention core in backward (= --recompute-granularity "
                                              "selective)")
    recompute_granularity: str | None = flag(None, "full: recompute whole transformer layers; selective: the "
                                                   "attention core", choices=("full", "selective"))
    recompute_method: str | None = flag(None, "with full granularity: uniform (groups of --recompute-num-layers "
                                              "layers) or block (the first --recompute-num-layers layers of each "
                                              "stage)", choices=("uniform", "block"))
    recompute_num_layers: int | None = flag(None, "layers per recomputed group (uniform) or recomputed layers per "
                                                  "pipeline stage (block)", bounds=POSITIVE)

    def __post_init__(self):
        check_fields(self)
        self._resolve_recompute()
        if self.seed >= 2 ** 32:
            raise ValueError(f"--seed must be below 2**32, got {self.seed}")
        self._resolve_batch()
        self._resolve_lengths()
        if self.min_lr > self.lr:
            raise ValueError(f"--min-lr {self.min_lr} exceeds --lr {self.lr}")
        if self.decoupled_lr is None and self.decoupled_min_lr is not None:
            raise ValueError("--decoupled-min-lr needs --decoupled-lr")
        decoupled_min = self.min_lr if self.decoupled_min_lr is None else self.decoupled_min_lr
        if self.decoupled_lr is not None and decoupled_min > self.decoupled_lr:
            raise ValueError(f"--decoupled-min-lr (default: --min-lr) {decoupled_min} exceeds --decoupled-lr "
                             f"{self.decoupled_lr}")
        if self.save_interval is not None and self.save is None:
            raise ValueError("--save-interval needs --save DIR")
        if self.use_checkpoint_args and self.load is None:
            raise ValueError("--use-checkpoint-args needs --load DIR (the checkpoint to take the model from)")
        if self.finetune and self.load is None:
            raise ValueError("--finetune needs --load DIR (the checkpoint whose weights to fine-tune)")

    def _resolve_recompute(self) -> None:
        """Megatron's rules: --recompute-activations means selective; full needs a method and a layer count;
        selective takes neither."""
        if self.recompute_activations:
            if self.recompute_granularity == "full":
                raise ValueError("--recompute-activations (selective) conflicts with --recompute-granularity full")
            self.recompute_granularity = "selective"
        g = self.recompute_granularity
        if g == "full" and (self.recompute_method is None or self.recompute_num_layers is None):
            raise ValueError("--recompute-granularity full needs --recompute-method uniform|block and "
                             "--recompute-num-layers N")
        if g != "full" and (self.recompute_method is not None or self.recompute_num_layers is not None):
            what = "--recompute-method" if self.recompute_method is not None else "--recompute-num-layers"
            raise ValueError(f"{what} needs --recompute-granularity full (selective recomputation recomputes "
                             "the attention core of every layer)")

    def _resolve_batch(self) -> None:
        if self.rampup_batch_size is not None and self.step_batch_size_schedule is not None:
            raise ValueError("--rampup-batch-size and --step-batch-size-schedule: give one batch-size schedule")
        if self.step_batch_size_schedule is not None:
            final = parse_step_schedule(self.step_batch_size_schedule)[-1][1]
            if self.global_batch_size not in (None, final):
                raise ValueError(f"--global-batch-size {self.global_batch_size} differs from the last batch size "
                                 f"{final} of --step-batch-size-schedule")
            self.global_batch_size = final
        if self.rampup_batch_size is not None:
            if self.global_batch_size is None:
                raise ValueError("--rampup-batch-size needs --global-batch-size (the batch size it ramps up to)")
            check_rampup(self.rampup_batch_size, self.global_batch_size)
        if self.global_batch_size is None:
            self.global_batch_size = self.micro_batch_size

    def _resolve_lengths(self) -> None:
        """Megatron's rules: train by iterations or by samples, with warm-up and decay in the same unit."""
        if self.train_samples is not None:
            wrong = [f for f, v in (("--train-iters", self.train_iters), ("--lr-decay-iters", self.lr_decay_iters),
                                    ("--lr-warmup-iters", self.lr_warmup_iters)) if v]
            if wrong:
                raise ValueError(f"{wrong[0]} is for iteration-based training; with --train-samples use "
                                 f"{wrong[0].replace('iters', 'samples')}")
        else:
            wrong = [f for f, v in (("--lr-decay-samples", self.lr_decay_samples),
                                    ("--lr-warmup-samples", self.lr_warmup_samples)) if v]
            if wrong:
                raise ValueError(f"{wrong[0]} needs --train-samples (sample-based training)")
            if self.train_iters is None:
                self.train_iters = 300
            if self.lr_decay_iters is None:
                self.lr_decay_iters = self.train_iters
        if self.lr_warmup_fraction is not None and (self.lr_warmup_iters or self.lr_warmup_samples):
            raise ValueError("--lr-warmup-fraction: give one of --lr-warmup-fraction, --lr-warmup-iters and "
                             "--lr-warmup-samples")
        if self.lr_warmup_iters is None:
            self.lr_warmup_iters = 30 if self.train_samples is None and self.lr_warmup_fraction is None else 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig | None = None
    startup_notes: list[str] = field(default_factory=list)  # what accepted Megatron flags map to (compat.py)

    def __post_init__(self):
        if self.training.step_batch_size_schedule is not None:  # token thresholds need --seq-length
            batch_schedule(self.training, self.model.seq_length)

    def validate_layout(self, world_size: int, batch: bool = True) -> int:
        """Every rule that ties the model to a parallel layout, checked in one place before any work (by
        training, the memory planner, the checkpoint converter and Hugging Face import); returns the
        data-parallel size. Rules on single flags live in each dataclass (``check_fields``). ``batch=False``
        leaves out the batch rule (checkpoint conversion has no batch)."""
        m, p, t, pr = self.model, self.parallel, self.training, self.precision
        tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
        if world_size < 1:
            raise ValueError(f"world size must be positive, got {world_size}")
        if world_size % (tp * pp):
            raise ValueError(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                             f"--pipeline-model-parallel-size {pp}")
        dp = world_size // (tp * pp)
        if batch:
            check_batch_sizes(t, m.seq_length, dp)
        rules = (
            (m.num_attention_heads % tp == 0,
             f"--num-attention-heads {m.num_attention_heads} is not divisible by --tensor-model-parallel-size {tp}"),
            # each TP rank holds whole query groups (QKV rows are laid out per group, DESIGN §7)
            (m.query_groups % tp == 0,
             f"--num-query-groups {m.query_groups} is not divisible by --tensor-model-parallel-size {tp}: "
             "each tensor-parallel rank holds whole query groups"),
            (m.num_layers % pp == 0,
             f"--num-layers {m.num_layers} is not divisible by --pipeline-model-parallel-size {pp}"),
            (t.recompute_num_layers is None or t.recompute_num_layers <= max(1, m.num_layers // pp),
             f"--recompute-num-layers {t.recompute_num_layers} must be between 1 and the layers per pipeline "
             f"stage ({m.num_layers // pp})"),
            # Megatron's rule for each count (TransformerConfig), and together at most every layer
            *((getattr(pr, n) <= m.num_layers // pp,
               (f"--{n.replace('_', '-')} {getattr(pr, n)} must be between 0 and the layers per pipeline stage "
                f"({m.num_layers // pp})")) for n in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16")
              if pr.first_last_layers_bf16),
            (not pr.first_last_layers_bf16
             or pr.num_layers_at_start_in_bf16 + pr.num_layers_at_end_in_bf16 <= m.num_layers,
             (f"--num-layers-at-start-in-bf16 {pr.num_layers_at_start_in_bf16} + --num-layers-at-end-in-bf16 "
              f"{pr.num_layers_at_end_in_bf16} exceed --num-layers {m.num_layers} (--first-last-layers-bf16)")),
            # fc2's input columns, and each of SwiGLU's two fc1 blocks
            (m.ffn_hidden_size % tp == 0,
             f"--ffn-hidden-size {m.ffn_hidden_size} is not divisible by --tensor-model-parallel-size {tp}"),
            (m.vocab_size is None or m.vocab_size % tp == 0,
             f"padded vocabulary {m.vocab_size} is not divisible by --tensor-model-parallel-size {tp} "
             "(--make-vocab-size-divisible-by)"),
            (not (p.sequence_parallel and tp > 1) or m.seq_length % tp == 0,
             f"--seq-length {m.seq_length} is not divisible by --tensor-model-parallel-size {tp} "
             "(needed by --sequence-parallel)"),
        )
        for ok, message in rules:
            if not ok:
                raise ValueError(message)
        return dp
