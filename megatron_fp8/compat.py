"""Megatron-LM flags that tune another implementation, and Megatron features this project does not have.

A Megatron launch script should run with only the script name changed. Flags in ``ACCEPTED`` are parsed
and each one given prints one start-up line saying what it maps to here or why it changes nothing. Flags in
``REFUSED`` are parsed so that the error can say which feature is missing (a value that asks for nothing,
such as ``--context-parallel-size 1``, is fine). Any other unknown flag still fails in argparse.
"""

import argparse
from dataclasses import dataclass

SWITCH = "switch"  # a flag without a value


@dataclass(frozen=True)
class CompatFlag:
    name: str
    note: str
    kind: object = SWITCH  # SWITCH, or the value type (int, float, str)
    nargs: object = None

    @property
    def dest(self) -> str:
        return "compat_" + self.name.lstrip("-").replace("-", "_")


_SDPA = "attention runs through torch's scaled_dot_product_attention, which picks its kernel itself"
_FUSED = "no separate fused kernel to switch: the operation runs as it always does here"
_NO_TE = "the FP8 layers are megatron_fp8's own; Transformer Engine is not used"

ACCEPTED = [CompatFlag(*row) for row in (
    ("--use-mcore-models", "the model is always Megatron-Core's GPT layout"),
    ("--transformer-impl", _NO_TE, str),
    ("--attention-backend", _SDPA, str),
    ("--use-flash-attn", _SDPA),
    ("--no-masked-softmax-fusion", _SDPA),
    ("--no-bias-gelu-fusion", _FUSED),
    ("--no-bias-swiglu-fusion", _FUSED),
    ("--no-bias-dropout-fusion", _FUSED),
    ("--no-rope-fusion", _FUSED),
    ("--no-persist-layer-norm", _FUSED),
    ("--cross-entropy-loss-fusion", "the vocab-parallel cross entropy already runs in one pass"),
    ("--cross-entropy-fusion-impl", "the vocab-parallel cross entropy already runs in one pass", str),
    ("--no-gradient-accumulation-fusion", "weight gradients are always accumulated into main_grad (in FP8 at "
                                          "O1-O3) by the linear's backward"),
    ("--accumulate-allreduce-grads-in-fp32", "FP8 levels accumulate weight gradients in FP8 with a fresh "
                                             "scale; the baselines accumulate in FP32"),
    ("--manual-gc", "Python's garbage collector is left to run as usual"),
    ("--manual-gc-interval", "Python's garbage collector is left to run as usual", int),
    ("--no-manual-gc-eval", "Python's garbage collector is left to run as usual"),
    ("--empty-unused-memory-level", "the CUDA caching allocator is not emptied between steps", int),
    ("--no-mmap-bin-files", ".bin files are always memory-mapped read-only"),
    ("--no-create-attention-mask-in-dataloader", "the data loader never builds attention masks; the model builds "
                                                 "one only for packed samples (--sft, --reset-attention-mask)"),
    ("--calculate-per-token-loss", "the loss is always the masked token mean over the global batch (token losses "
                                   "summed over micro-batches and data-parallel ranks / their unmasked tokens), "
                                   "which is what this flag selects in Megatron-LM"),
    ("--log-throughput", "tokens/s and TFLOP/s per GPU are always in the log line"),
    ("--log-timers-to-tensorboard", "step time is always logged"),
    ("--log-validation-ppl-to-tensorboard", "validation loss and perplexity are always logged"),
    ("--log-memory-to-tensorboard", "memory per category is always in the log and --log-json"),
    ("--log-params-norm", "not computed; the gradient norm is always logged"),
    ("--log-num-zeros-in-grad", "not computed; the gradient norm is always logged"),
    ("--tensorboard-log-interval", "TensorBoard gets every --log-interval line", int),
    ("--tensorboard-queue-size", "TensorBoard's writer keeps its default queue", int),
    ("--timing-log-level", "one step time per log line", int),
    ("--timing-log-option", "one step time per log line", str),
    ("--overlap-param-gather", "the distributed optimizer gathers parameters right after its step"),
    ("--tp-comm-overlap", "tensor-parallel collectives are not overlapped with GEMMs"),
    ("--ckpt-format", "checkpoints are megatron_fp8's distributed format (per-rank files and metadata.json "
                      "with checksums); tools/convert_checkpoint.py changes layouts", str),
    ("--ckpt-fully-parallel-save", "every rank writes its own files already"),
    ("--ckpt-fully-parallel-load", "every rank reads its own files already"),
    ("--dist-ckpt-strictness", "loading is always strict: every tensor must match", str),
    ("--auto-detect-ckpt-format", "one checkpoint format only"),
    ("--tiktoken-pattern", "only used by the TikTokenizer, which megatron_fp8 does not have", str),
    ("--distributed-backend", "the backend is nccl on CUDA and gloo on CPU", str),
    ("--use-cpu-initialization", "weights are always initialised on the CPU from per-name seeds"),
    ("--num-dataset-builder-threads", "dataset indices are built by rank 0 in one thread", int),
    ("--dataloader-type", "samples are read in order from the shuffled index (Megatron's single sampler)", str),
    ("--async-tensor-model-parallel-allreduce", "tensor-parallel all-reduces run synchronously"),
    ("--no-async-tensor-model-parallel-allreduce", "tensor-parallel all-reduces run synchronously"),
    ("--profile", "no built-in profiler; profile with py-spy or torch.profiler around pretrain_gpt.py"),
    ("--profile-step-start", "no built-in profiler", int),
    ("--profile-step-end", "no built-in profiler", int),
    ("--profile-ranks", "no built-in profiler", int, "*"),
    ("--wandb-project", "Weights & Biases logging is not built in; use --tensorboard-dir or --log-json", str),
    ("--wandb-exp-name", "Weights & Biases logging is not built in", str),
    ("--wandb-save-dir", "Weights & Biases logging is not built in", str),
    ("--fp8-param-gather", "FP8 parameters are gathered at --fp8-level O3 (FP8 weights, the distributed "
                           "optimizer all-gathers their bytes); O1/O2 gather FP16 weights"),
)]


@dataclass(frozen=True)
class RefusedFlag:
    name: str
    feature: str
    kind: object = int
    allowed: object = None  # a value that asks for nothing (e.g. 1 for a parallel size)


REFUSED = [RefusedFlag(*row) for row in (
    ("--context-parallel-size", "context parallelism", int, 1),
    ("--expert-model-parallel-size", "expert parallelism (mixture of experts)", int, 1),
    ("--expert-tensor-parallel-size", "expert parallelism (mixture of experts)", int, 1),
    ("--num-experts", "mixture of experts", int),
    ("--virtual-pipeline-model-parallel-size", "the interleaved (virtual) pipeline schedule", int, 1),
    ("--num-layers-per-virtual-pipeline-stage", "the interleaved (virtual) pipeline schedule", int),
    ("--use-torch-fsdp2", "FSDP2 (use --use-distributed-optimizer: ZeRO-1 at every precision level)", SWITCH),
    ("--use-custom-fsdp", "Megatron-FSDP (use --use-distributed-optimizer)", SWITCH),
    ("--multi-latent-attention", "multi-latent attention", SWITCH),
    ("--num-query-groups-per-layer", "per-layer query groups", str),
)]


def _add(group, name: str, dest: str, kind, nargs=None) -> None:
    if kind is SWITCH:
        group.add_argument(name, dest=dest, action="store_true", help=argparse.SUPPRESS)
    else:
        group.add_argument(name, dest=dest, type=kind, nargs=nargs, default=None, help=argparse.SUPPRESS)


def add_compat_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Megatron-LM flags accepted for compatibility (hidden)")
    for f in ACCEPTED:
        _add(group, f.name, f.dest, f.kind, f.nargs)
    for f in REFUSED:
        _add(group, f.name, "compat_" + f.name.lstrip("-").replace("-", "_"), f.kind)
    _add(group, "--grad-reduce-in-bf16", "compat_grad_reduce_in_bf16", SWITCH)


BASELINES = ("off", "gemm")  # the levels without FP8 weight gradients


def adjust_args(args: argparse.Namespace) -> list[str]:
    """Megatron flags whose meaning here is another flag's value, applied to ``args`` as Megatron applies
    them; one start-up line each. Contradictions raise ValueError."""
    notes = []
    if getattr(args, "sequence_parallel", False) and args.tensor_model_parallel_size == 1:
        args.sequence_parallel = False  # Megatron warns and disables it
        notes.append("--sequence-parallel: disabled, --tensor-model-parallel-size is 1 (as Megatron does)")
    if getattr(args, "compat_grad_reduce_in_bf16", False):
        if args.fp8_level not in BASELINES:
            notes.append(f"--grad-reduce-in-bf16: accepted; at --fp8-level {args.fp8_level} weight gradients are "
                         "FP8 and reduced in FP8, the other gradients already travel in BF16")
        elif args.grad_reduce_dtype not in (None, "bf16"):
            raise ValueError(f"--grad-reduce-in-bf16 contradicts --grad-reduce-dtype {args.grad_reduce_dtype}")
        else:
            args.grad_reduce_dtype = "bf16"
            notes.append("--grad-reduce-in-bf16: data-parallel gradients travel in BF16 (--grad-reduce-dtype bf16)")
    return notes


def compat_notes(args: argparse.Namespace) -> list[str]:
    """One start-up line per accepted flag that was given; refused features raise ValueError."""
    for f in REFUSED:
        value = getattr(args, "compat_" + f.name.lstrip("-").replace("-", "_"), None)
        if value not in (None, False, f.allowed):
            shown = f.name if f.kind is SWITCH else f"{f.name} {value}"
            raise ValueError(f"{shown}: {f.feature} is not implemented in megatron_fp8")
    notes = []
    for f in ACCEPTED:
        value = getattr(args, f.dest, None)
        if value not in (None, False):
            shown = f.name if f.kind is SWITCH else f"{f.name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
            notes.append(f"{shown}: accepted, {f.note}")
    return notes
