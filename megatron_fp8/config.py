"""The configuration: one ``Config`` of validated dataclasses, built from Megatron-style flags.

Every error names the flag a user would change. The precision level (DESIGN §1) is resolved here, once,
into a :class:`PrecisionPolicy` — plain data that the layers and the optimizer read, so that no module
branches on the level name.
"""

from dataclasses import dataclass, field

import torch

from .data.data_config import DataConfig
from .fp8.formats import E4M3, dtype_from_name
from .fp8.scaling import Fp8Recipe

FP8_LEVELS = ("off", "gemm", "O1", "O2", "O3")


@dataclass
class ModelConfig:
    num_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 4
    ffn_hidden_size: int | None = None
    seq_length: int = 256
    max_position_embeddings: int | None = None
    vocab_size: int | None = None  # set from the tokenizer, then padded
    unpadded_vocab_size: int | None = None  # the tokenizer's size, kept so other layouts pad from it
    make_vocab_size_divisible_by: int = 128
    position_embedding_type: str = "learned_absolute"
    rotary_base: int = 10000
    normalization: str = "LayerNorm"
    layernorm_epsilon: float = 1e-5
    swiglu: bool = False
    openai_gelu: bool = False  # tanh-approximate GeLU (GPT-2's "gelu_new") instead of the exact erf form
    untie_embeddings_and_output_weights: bool = False
    add_bias_linear: bool = True
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02

    def __post_init__(self):
        _positive(self, "num_layers", "hidden_size", "num_attention_heads", "seq_length")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} must be divisible by "
                             f"--num-attention-heads {self.num_attention_heads}")
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        if self.position_embedding_type not in ("learned_absolute", "rope"):
            raise ValueError("--position-embedding-type must be learned_absolute or rope, "
                             f"got {self.position_embedding_type!r}")
        if self.position_embedding_type == "learned_absolute" and self.seq_length > self.max_position_embeddings:
            raise ValueError(f"--seq-length {self.seq_length} exceeds --max-position-embeddings "
                             f"{self.max_position_embeddings}")
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"--normalization must be LayerNorm or RMSNorm, got {self.normalization!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.head_dim % 2 and self.position_embedding_type == "rope":
            raise ValueError("--position-embedding-type rope needs an even head dimension "
                             "(--hidden-size / --num-attention-heads)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False
    ddp_bucket_size: int = 1 << 22  # elements per gradient bucket
    distributed_timeout_minutes: float = 10.0  # every process group; fractions allowed (tests)

    def __post_init__(self):
        _positive(self, "tensor_model_parallel_size", "pipeline_model_parallel_size", "ddp_bucket_size",
                  "distributed_timeout_minutes")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ValueError("--sequence-parallel needs --tensor-model-parallel-size > 1")


@dataclass(frozen=True)
class PrecisionPolicy:
    """What each level keeps in which dtype (DESIGN §1), resolved from the level and explicit flags.

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

    def eligible_bytes_per_param(self, dp_size: int = 1, sharded: bool = False) -> float:
        """Model-state bytes per FP8-eligible parameter (the DESIGN §1 table)."""
        def size(dtype):
            return torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
        states = size(self.master) + size(self.exp_avg) + size(self.exp_avg_sq)
        return size(self.weight) + size(self.grad) + states / (dp_size if sharded else 1)


@dataclass
class PrecisionConfig:
    fp8_level: str = "O2"
    bf16: bool = False
    recipe: Fp8Recipe = field(default_factory=Fp8Recipe)
    main_params_dtype: str | None = None
    exp_avg_dtype: str | None = None
    exp_avg_sq_dtype: str | None = None
    grad_reduce_dtype: str | None = None

    def __post_init__(self):
        if self.fp8_level not in FP8_LEVELS:
            raise ValueError(f"--fp8-level must be one of {', '.join(FP8_LEVELS)}, got {self.fp8_level!r}")
        _choice("--main-params-dtype", self.main_params_dtype, ("fp32", "fp16"))
        _choice("--exp-avg-dtype", self.exp_avg_dtype, ("fp32", "fp16", "bf16", "fp8"))
        _choice("--exp-avg-sq-dtype", self.exp_avg_sq_dtype, ("fp32", "fp16", "bf16", "fp8"))
        _choice("--grad-reduce-dtype", self.grad_reduce_dtype, ("fp32", "bf16", "fp8"))
        if self.grad_reduce_dtype == "fp8" and self.fp8_level in ("off", "gemm"):
            raise ValueError("--grad-reduce-dtype fp8 needs FP8 weight gradients (--fp8-level O1, O2 or O3)")
        if self.grad_reduce_dtype in ("fp32", "bf16") and self.fp8_level in ("O1", "O2", "O3"):
            raise ValueError(f"--grad-reduce-dtype {self.grad_reduce_dtype} is for the baselines: --fp8-level "
                             f"{self.fp8_level} keeps FP8 weight gradients, which are reduced in FP8")
        self.policy  # resolve once so bad combinations fail here

    @property
    def policy(self) -> PrecisionPolicy:
        compute = torch.bfloat16 if self.bf16 else torch.float32
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
            other_grad_reduce=torch.float32 if grad_reduce == torch.float32 else torch.bfloat16)


@dataclass
class TrainingConfig:
    micro_batch_size: int = 8
    global_batch_size: int | None = None
    train_iters: int = 300
    lr: float = 1e-3
    min_lr: float = 1e-4
    lr_decay_style: str = "cosine"
    lr_warmup_iters: int = 30
    lr_decay_iters: int | None = None
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    seed: int = 1234
    log_interval: int = 10
    eval_interval: int = 100
    eval_iters: int = 10
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    async_save: bool = False
    log_json: str | None = None
    tensorboard_dir: str | None = None
    exit_interval: int | None = None
    check_for_nan_in_loss_and_grad: bool = True  # stop at a NaN loss or gradient norm (Megatron's default)
    max_consecutive_skipped_iterations: int = 10  # stop after this many skipped steps in a row (0: never)

    def __post_init__(self):
        _positive(self, "micro_batch_size", "train_iters", "log_interval", "eval_interval")
        if self.max_consecutive_skipped_iterations < 0:
            raise ValueError("--max-consecutive-skipped-iterations must be >= 0 (0: never stop)")
        if self.global_batch_size is None:
            self.global_batch_size = self.micro_batch_size
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.train_iters
        if self.lr_decay_style not in ("constant", "linear", "cosine"):
            raise ValueError(f"--lr-decay-style must be constant, linear or cosine, got {self.lr_decay_style!r}")
        if self.lr_warmup_iters < 0 or self.eval_iters < 0:
            raise ValueError("--lr-warmup-iters and --eval-iters must be >= 0")
        if self.min_lr > self.lr:
            raise ValueError(f"--min-lr {self.min_lr} exceeds --lr {self.lr}")
        if self.save_interval is not None and self.save_interval <= 0:
            raise ValueError("--save-interval must be positive")
        if self.save_interval is not None and self.save is None:
            raise ValueError("--save-interval needs --save DIR")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig | None = None

    def check_world(self, world_size: int) -> int:
        """Validate the layout against the world size; returns the data-parallel size."""
        p, t = self.parallel, self.training
        model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
        if world_size % model_parallel:
            raise ValueError(f"world size {world_size} is not divisible by --tensor-model-parallel-size "
                             f"{p.tensor_model_parallel_size} x --pipeline-model-parallel-size "
                             f"{p.pipeline_model_parallel_size}")
        dp = world_size // model_parallel
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ValueError(f"--global-batch-size {t.global_batch_size} is not divisible by "
                             f"--micro-batch-size {t.micro_batch_size} x data-parallel size {dp}")
        if self.model.num_attention_heads % p.tensor_model_parallel_size:
            raise ValueError(f"--num-attention-heads {self.model.num_attention_heads} is not divisible by "
                             f"--tensor-model-parallel-size {p.tensor_model_parallel_size}")
        if self.model.num_layers % p.pipeline_model_parallel_size:
            raise ValueError(f"--num-layers {self.model.num_layers} is not divisible by "
                             f"--pipeline-model-parallel-size {p.pipeline_model_parallel_size}")
        return dp


def _positive(obj, *names):
    for name in names:
        if getattr(obj, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(obj, name)}")


def _choice(flag, value, allowed):
    if value is not None and value not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
