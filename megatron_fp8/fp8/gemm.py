"""FP8 GEMMs on ``torch._scaled_mm``: ``out = a @ b.T`` with both operands stored row-major.

Keeping both operands row-major ("NT" form) means the second operand reaches ``_scaled_mm`` as a
column-major view, the layout cuBLASLt requires on GPUs; the CPU kernel accepts it too, so one code path
serves both. Products are accumulated in float32 and scaled by ``scale_inv_a * scale_inv_b``. On CUDA the
operands are first padded to cuBLASLt's rules (:mod:`.gemm_rules`), so the model's GEMMs are never refused.

On CPU the GEMMs run decoded instead (:mod:`.cpu_gemm`: same exact products, float32 accumulation, at
the float32 GEMM rate, three orders of magnitude faster than ``_scaled_mm``'s CPU kernel), and take
operands stored transposed as they are.

What ``_scaled_mm`` still refuses (a GPU older than compute capability 8.9, a torch without FP8 GEMMs on
this device) falls back to dequantize-and-matmul in float32. Only its own refusals do: running out of
memory or a device fault propagates. Every fallback call is counted per shape in :data:`FALLBACKS`
(the training log line reports the total, the JSON log each shape). The first fallback of a shape is
logged; on CUDA it is also a ``RuntimeWarning``, since the GPU then runs an FP32 GEMM where an FP8 one
was meant.
"""

import logging
import warnings

import torch

from . import cpu_gemm, gemm_rules
from .blockwise import BLOCK, BlockwiseFp8Tensor
from .tensor import Fp8Tensor

logger = logging.getLogger(__name__)

# Messages of runtime failures that are not a refusal of the operands (checked before the refusal test).
_NOT_REFUSALS = ("out of memory", "CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS_ALLOC",
                 "CUBLAS_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_INTERNAL_ERROR", "NCCL")


def is_refusal(err: BaseException) -> bool:
    """True when ``err`` is ``_scaled_mm`` declining these operands on this device (a failed argument check,
    a missing kernel, cuBLASLt's NOT_SUPPORTED), False for out-of-memory and every other failure."""
    if isinstance(err, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8: device faults
    if accelerator_error is not None and isinstance(err, accelerator_error):
        return False
    if not isinstance(err, (RuntimeError, ValueError, NotImplementedError)):
        return False
    text = str(err)
    if "CUBLAS_STATUS_NOT_SUPPORTED" in text:
        return True
    return not any(marker in text for marker in _NOT_REFUSALS)


class GemmFallbacks:
    """How often each GEMM shape fell back to dequantize-and-matmul, and why (first refusal per shape)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.reasons: dict[str, str] = {}

    def record(self, key: str, reason: str | None, device: torch.device) -> None:
        first = key not in self.counts
        self.counts[key] = self.counts.get(key, 0) + 1
        if not first:
            return
        self.reasons[key] = reason or ""
        message = (f"torch._scaled_mm refused {key} ({reason}); this shape runs as dequantize+matmul in float32 "
                   "(counted in the log's 'fp8 gemm fallbacks')")
        logger.warning(message)
        if device.type == "cuda":  # a GPU running FP32 GEMMs where FP8 ones were meant: say so loudly
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.reasons.clear()


FALLBACKS = GemmFallbacks()
_refused: dict[tuple, str] = {}  # shapes refused once are not asked again (each call is still counted)


def _short(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "").replace("float8_", "")


def _describe(a, b, scale_a, out_dtype) -> str:
    kind = "rowwise" if scale_a.dim() == 2 else "tensorwise"
    return (f"{_short(a.dtype)}[{a.shape[0]}x{a.shape[1]}] @ {_short(b.dtype)}[{b.shape[0]}x{b.shape[1]}].T "
            f"{kind} -> {_short(out_dtype)} on {a.device.type}")


def _scale_b(b: Fp8Tensor) -> torch.Tensor:
    """``_scaled_mm`` wants the second operand's rowwise scales as a [1, N] row."""
    return b.scale_inv.reshape(1, -1) if b.rowwise else b.scale_inv


def _scaled_mm(a_data, b_data, scale_a, scale_b, out_dtype) -> torch.Tensor:
    if cpu_gemm.use_decode(a_data.device):  # CPU: decoded operands, float32 GEMM (exact products, fast)
        return cpu_gemm.scaled_mm(a_data, b_data, scale_a, scale_b, out_dtype)
    rules = gemm_rules.rules_for(a_data.device)
    gemm_rules.check_dtypes(a_data, b_data, rules)  # a refusal we can name: raised, never a fallback
    key = (tuple(a_data.shape), tuple(b_data.shape), a_data.dtype, b_data.dtype, scale_a.dim(), out_dtype,
           a_data.device.type, rules.name)
    reason = _refused.get(key)
    if reason is None:
        try:
            return gemm_rules.legal_call(a_data, b_data, scale_a, scale_b, out_dtype, rules)
        except (RuntimeError, ValueError, NotImplementedError) as err:
            if not is_refusal(err):
                raise
            reason = _refused[key] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    FALLBACKS.record(_describe(a_data, b_data, scale_a, out_dtype), reason, a_data.device)
    return cpu_gemm.scaled_mm(a_data, b_data, scale_a, scale_b, out_dtype)  # device-agnostic dequantize+mm


def fp8_gemm(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype = torch.float32, a_transposed: bool = False,
             b_transposed: bool = False) -> torch.Tensor:
    """``a @ b.T`` for a [M, K] and b [N, K], tensorwise or rowwise scaled (both the same kind).

    ``a_transposed``/``b_transposed``: the tensor given is the operand's transpose ([K, M] / [K, N]),
    tensorwise scaled. The CPU kernel reads it as it is stored (a transpose flag of its GEMM); elsewhere
    an FP8 transpose is made first.
    """
    if a.rowwise != b.rowwise:
        raise ValueError("fp8_gemm operands must both be tensorwise or both rowwise scaled")
    k_a, k_b = a.shape[0 if a_transposed else 1], b.shape[0 if b_transposed else 1]
    if k_a != k_b:
        raise ValueError(f"fp8_gemm: inner dimensions differ, {tuple(a.shape)}{'.T' if a_transposed else ''} @ "
                         f"{tuple(b.shape)}{'' if b_transposed else '.T'}")
    if (a_transposed or b_transposed) and cpu_gemm.use_decode(a.data.device):
        if a.rowwise:
            raise ValueError("fp8_gemm: a transposed operand must be tensorwise scaled")
        return cpu_gemm.scaled_mm(a.data, b.data, a.scale_inv, b.scale_inv, out_dtype, a_transposed, b_transposed)
    a, b = (a.t() if a_transposed else a), (b.t() if b_transposed else b)
    return _scaled_mm(a.data, b.data, a.scale_inv, _scale_b(b), out_dtype)


def blockwise_gemm(a: BlockwiseFp8Tensor, b: BlockwiseFp8Tensor,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``a @ b.T`` with per-tile scales, exact up to float32 summation order.

    Each 128-wide slice of K is one rowwise-scaled ``_scaled_mm`` (scale per row of a, per row of b,
    which is exactly the tile/block scale inside that slice); the K/128 partial products are summed in
    float32. This needs no GEMM with native block scaling, so it runs on any backend.
    """
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"blockwise_gemm: inner dimensions differ, {tuple(a.shape)} @ {tuple(b.shape)}.T")
    if cpu_gemm.use_decode(a.data.device):  # block scales applied while decoding: one GEMM over all of K
        return cpu_gemm.blockwise_mm(a, b, out_dtype)
    sa, sb = a.row_scales(), b.row_scales()
    out = None
    for kb, k0 in enumerate(range(0, a.shape[1], BLOCK)):
        k1 = min(k0 + BLOCK, a.shape[1])
        part = _scaled_mm(a.data[:, k0:k1].contiguous(), b.data[:, k0:k1].contiguous(),
                          sa[:, kb:kb + 1].contiguous(), sb[:, kb].reshape(1, -1).contiguous(), torch.float32)
        out = part if out is None else out + part
    return out.to(out_dtype)
