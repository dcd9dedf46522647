"""What a process holds at its peak beyond the log's categories: the import baseline, the step's
transient tensors and the allocator's slack (issue 13, item 1).

The categories (model states, FP8 caches, kept activations) are what stays alive; the process peak adds:

- **baseline**: the interpreter with torch, our kernels and the data pipeline loaded, before any
  tensor exists (the import), plus what the runtime allocates on first use and keeps (OpenMP and BLAS
  thread buffers, the CPU FP8 GEMM's workspace): :data:`CPU_RUNTIME_BYTES`. On CPU it is resident
  memory like any other. The import is measured at run time and logged as ``mem.rss_at_start`` (the RSS
  when the Trainer starts building); the planner takes that measurement where it has one (``import_rss``)
  and :data:`CPU_IMPORT_BYTES` otherwise: it varies by machine and by what is installed. On a GPU the
  CUDA context and torch's kernels live outside what the caching allocator reports, so the planner counts
  no baseline there (it predicts ``max_memory_allocated``).
- **step transients**: tensors alive for part of a step only. The largest set is met at the head: the
  forward makes the logits and their shifted copy before the float32 softmax (which the loss keeps, an
  activation); backward then holds the logits' gradient (float32) with the head weight's float32
  gradient before it reaches its buffer, while every activation of the micro-batch is still alive.
  Inside the layers, a CPU FP8 linear decodes its FP8 operands to float32 (``fp8/cpu_gemm.py``) and
  makes the float32 weight gradient before accumulating it into the FP8 ``main_grad``; on a GPU,
  ``_scaled_mm`` reads FP8 directly and only the weight gradient is float32. The larger of the two
  phases is the transient.
- **allocator slack** (CPU): glibc raises its mmap threshold to the largest block freed so far, after
  which step tensors of that size come from the heap, whose freed pages the process keeps
  (docs/RESULTS.md, "Peak process memory"). What is kept is a share of what a step allocates and frees
  (activations and transients); :data:`CPU_SLACK_FRACTION` is that share, fitted on the 110M GPT of
  docs/RESULTS.md and checked on other shapes (tests/test_memory_plan.py, bench/memory_peak.py). With a
  fixed threshold (``MALLOC_MMAP_THRESHOLD_``) freed blocks go back and the slack is
  :data:`CPU_SLACK_FRACTION_FIXED`. On a GPU the caching allocator's slack shows in
  ``max_memory_reserved``, not in what the planner predicts.
"""

from ..config import Config
from . import activations as act

MB = 1 << 20
CPU_IMPORT_BYTES = 227 * MB  # python + torch 2.13 CPU + megatron_fp8._C imported (x86-64 Linux, AMD EPYC)
CPU_RUNTIME_BYTES = 53 * MB  # kept after the first steps beyond tensors, fitted with the mmap threshold fixed
CPU_SLACK_FRACTION = 1.2  # of a step's freed activations and transients kept by glibc's dynamic threshold
CPU_SLACK_FRACTION_FIXED = 0.05  # the same with the mmap threshold fixed at 64 KiB
FP32 = 4


def head_transients(config: Config) -> int:
    """Beyond the kept float32 softmax, on the last stage: the larger of the forward (logits and their
    max-shifted copy) and the backward (the logits' gradient, the head's float32 weight gradient and the
    gradient of its input)."""
    sh = act.shapes(config)
    vocab_local = config.model.vocab_size // sh.tp
    logits = sh.tokens * vocab_local
    forward = logits * sh.elem + logits * FP32
    # the loss's backward: a copy of the softmax and its product with the loss gradient; then the head's
    # backward: the logits' gradient with the weight and input gradients it makes
    backward = max(2 * logits * FP32, logits * FP32 + (vocab_local + sh.tokens) * sh.hidden * FP32)
    return max(forward, backward)


def linear_transients(config: Config, cuda: bool) -> int:
    """The largest linear's backward: its float32 weight gradient, and on CPU at FP8 levels the decoded
    weight and output gradient (the input gradient is the next activation gradient, counted alike)."""
    m, sh = config.model, act.shapes(config)
    fc1 = (2 if m.swiglu else 1) * sh.ffn // sh.tp
    shapes = [(m.qkv_size // sh.tp, sh.hidden), (sh.hidden, m.num_attention_heads * m.head_dim // sh.tp),
              (fc1, sh.hidden), (sh.hidden, sh.ffn // sh.tp)]
    worst = 0
    for rows, cols in shapes:
        total = rows * cols * FP32 + sh.tokens * cols * FP32  # weight gradient, input gradient
        if config.precision.policy.fp8_gemm and not cuda:  # decoded weight, output gradient and input
            total += rows * cols * FP32 + sh.tokens * rows * FP32 + sh.tokens * cols * FP32
        worst = max(worst, total)
    return worst


def step_transients(config: Config, last_stage: bool, cuda: bool) -> int:
    return max(head_transients(config) if last_stage else 0, linear_transients(config, cuda))


def process_extras(config: Config, activations: int, last_stage: bool, device: str,
                   fixed_mmap_threshold: bool = False, import_rss: int | None = None) -> dict:
    """Bytes beyond the categories at the process peak: ``baseline``, ``step_transients``,
    ``allocator_slack`` (see the module docstring; zero baseline and slack on CUDA). ``import_rss``: the
    resident bytes measured after the imports on the machine that will train, if known."""
    cuda = device == "cuda"
    transients = step_transients(config, last_stage, cuda)
    if cuda:
        return {"baseline": 0, "step_transients": transients, "allocator_slack": 0}
    fraction = CPU_SLACK_FRACTION_FIXED if fixed_mmap_threshold else CPU_SLACK_FRACTION
    baseline = (CPU_IMPORT_BYTES if import_rss is None else import_rss) + CPU_RUNTIME_BYTES
    return {"baseline": baseline, "step_transients": transients,
            "allocator_slack": int(fraction * (activations + transients))}
