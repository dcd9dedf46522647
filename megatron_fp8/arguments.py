"""Megatron-LM-compatible command-line flags, mapped onto :class:`megatron_fp8.config.Config`."""

import argparse

from .config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from .data.arguments import add_data_args, data_config_from_args
from .fp8.scaling import Fp8Recipe


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=4)
    g.add_argument("--hidden-size", type=int, default=256)
    g.add_argument("--ffn-hidden-size", type=int, default=None)
    g.add_argument("--num-attention-heads", type=int, default=4)
    g.add_argument("--seq-length", type=int, default=256)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--position-embedding-type", default="learned_absolute", choices=["learned_absolute", "rope"])
    g.add_argument("--rotary-base", type=int, default=10000)
    g.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"])
    g.add_argument("--layernorm-epsilon", "--norm-epsilon", dest="layernorm_epsilon", type=float, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--openai-gelu", action="store_true", help="tanh-approximate GeLU, as GPT-2 was trained with")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_false")
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--init-method-std", type=float, default=0.02)


def _parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="start each gradient bucket's data-parallel reduction during backward")
    g.add_argument("--ddp-bucket-size", type=int, default=1 << 22, help="elements per gradient bucket")
    g.add_argument("--distributed-timeout-minutes", type=float, default=10.0,
                   help="timeout of every process group: a collective blocked this long by a hung peer fails")


def _precision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("precision (DESIGN §1, §2)")
    g.add_argument("--fp8-level", default="O2", help="off | gemm | O1 | O2 | O3")
    g.add_argument("--bf16", action="store_true", help="BF16 compute dtype (the GPU setting)")
    g.add_argument("--fp8-format", default="hybrid", help="hybrid (E4M3 fwd, E5M2 grads) | e4m3")
    g.add_argument("--fp8-recipe", default="delayed", help="delayed | current | blockwise")
    g.add_argument("--fp8-amax-history-len", type=int, default=16)
    g.add_argument("--fp8-amax-compute-algo", default="max", help="max | most_recent")
    g.add_argument("--fp8-margin", type=int, default=0)
    g.add_argument("--main-params-dtype", default=None, help="fp32 | fp16 (default: by level)")
    g.add_argument("--exp-avg-dtype", default=None, help="fp32 | fp16 | bf16 | fp8 (default: by level)")
    g.add_argument("--exp-avg-sq-dtype", default=None, help="fp32 | fp16 | bf16 | fp8 (default: by level)")
    g.add_argument("--grad-reduce-dtype", default=None, help="fp32 | bf16 | fp8 (default: by level)")


def _training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=8)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--train-iters", type=int, default=300)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--min-lr", type=float, default=1e-4)
    g.add_argument("--lr-decay-style", default="cosine", choices=["constant", "linear", "cosine"])
    g.add_argument("--lr-warmup-iters", type=int, default=30)
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--eval-interval", type=int, default=100)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--async-save", action="store_true",
                   help="write checkpoints in the background from a snapshot while training goes on")
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--log-json", default=None, help="write one JSON object per logged iteration")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--no-check-for-nan-in-loss-and-grad", dest="check_for_nan_in_loss_and_grad",
                   action="store_false", help="do not stop at a NaN loss or gradient norm (skip the step)")
    g.add_argument("--check-for-nan-in-loss-and-grad", dest="check_for_nan_in_loss_and_grad",
                   action="store_true", default=True, help="stop at a NaN loss or gradient norm (default)")
    g.add_argument("--max-consecutive-skipped-iterations", type=int, default=10,
                   help="stop when this many iterations in a row were skipped (inf/NaN gradients); 0: never")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="megatron_fp8 GPT pretraining",
                                     allow_abbrev=False)
    for add in (_model_args, _parallel_args, _precision_args, _training_args, add_data_args):
        add(parser)
    return parser


def _pick(cls, args) -> dict:
    """The argparse values whose names are fields of dataclass ``cls``."""
    return {name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)}


def config_from_args(args: argparse.Namespace) -> Config:
    recipe = Fp8Recipe(format=args.fp8_format, recipe=args.fp8_recipe, amax_history_len=args.fp8_amax_history_len,
                       amax_compute_algo=args.fp8_amax_compute_algo, margin=args.fp8_margin)
    precision = PrecisionConfig(recipe=recipe, **{k: v for k, v in _pick(PrecisionConfig, args).items()
                                                  if k != "recipe"})
    model = ModelConfig(**{k: v for k, v in _pick(ModelConfig, args).items() if k != "vocab_size"})
    return Config(model=model, parallel=ParallelConfig(**_pick(ParallelConfig, args)), precision=precision,
                  training=TrainingConfig(**_pick(TrainingConfig, args)),
                  data=data_config_from_args(args, seq_length=model.seq_length, seed=args.seed))


def parse_config(argv=None) -> Config:
    """Parse flags into a validated Config; bad values exit with the message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
