"""FP8 GEMMs on ``torch._scaled_mm``: ``out = a @ b.T`` with both operands stored row-major.

Keeping both operands row-major ("NT" form) means the second operand reaches ``_scaled_mm`` as a
column-major view, the layout cuBLASLt requires on GPUs; the CPU kernel accepts it too, so one code path
serves both. Products are accumulated in float32 and scaled by ``scale_inv_a * scale_inv_b``.

Where ``_scaled_mm`` refuses (e.g. dimensions that are not multiples of 16 on CUDA), the GEMM falls back
to dequantize-and-matmul in float32 and says so once per shape.
"""

import logging

import torch

from .blockwise import BLOCK, BlockwiseFp8Tensor
from .tensor import Fp8Tensor

logger = logging.getLogger(__name__)
_refused: set = set()


def _scale_b(b: Fp8Tensor) -> torch.Tensor:
    """``_scaled_mm`` wants the second operand's rowwise scales as a [1, N] row."""
    return b.scale_inv.reshape(1, -1) if b.rowwise else b.scale_inv


def _scaled_mm(a_data, b_data, scale_a, scale_b, out_dtype) -> torch.Tensor:
    key = (a_data.shape, b_data.shape, a_data.dtype, b_data.dtype, scale_a.dim(), out_dtype, a_data.device.type)
    if key not in _refused:
        try:
            return torch._scaled_mm(a_data, b_data.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
        except RuntimeError as err:
            _refused.add(key)
            logger.warning("torch._scaled_mm refused %s x %s (%s); using dequantize+matmul for this shape",
                           tuple(a_data.shape), tuple(b_data.shape), str(err).splitlines()[0])
    a = a_data.float() * scale_a
    b = b_data.float() * scale_b.reshape(-1, 1) if scale_b.dim() else b_data.float() * scale_b
    return (a @ b.t()).to(out_dtype)


def fp8_gemm(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``a @ b.T`` for a [M, K] and b [N, K], tensorwise or rowwise scaled (both the same kind)."""
    if a.rowwise != b.rowwise:
        raise ValueError("fp8_gemm operands must both be tensorwise or both rowwise scaled")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_gemm: inner dimensions differ, {tuple(a.shape)} @ {tuple(b.shape)}.T")
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
    sa, sb = a.row_scales(), b.row_scales()
    out = None
    for kb, k0 in enumerate(range(0, a.shape[1], BLOCK)):
        k1 = min(k0 + BLOCK, a.shape[1])
        part = _scaled_mm(a.data[:, k0:k1].contiguous(), b.data[:, k0:k1].contiguous(),
                          sa[:, kb:kb + 1].contiguous(), sb[:, kb].reshape(1, -1).contiguous(), torch.float32)
        out = part if out is None else out + part
    return out.to(out_dtype)
