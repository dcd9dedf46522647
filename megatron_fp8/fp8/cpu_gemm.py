"""FP8 GEMMs on CPUs at the float32 rate: decode the FP8 operands, multiply with ``torch.mm``, scale after.

Every E4M3 and E5M2 value (normals, subnormals, zeros) is exactly a float32 (and a BF16) value, and the
product of two of them has at most 4 + 4 significant bits, so float32 products are exact and
``torch.mm`` of the decoded operands differs from ``torch._scaled_mm`` only in float32 summation order.
The scales (powers of two, :func:`.scaling.compute_scale_tensor`) are applied to the float32 result
(tensorwise: one factor; rowwise: a column times a row), which is exact unless the result leaves the
float32 normal range. Block scales (1x128, 128x128) are applied while decoding, so the whole K runs as one
``torch.mm`` instead of one ``_scaled_mm`` per 128-wide slice: each product ``(a * sa) * (b * sb)`` is
still exact, so again only the summation order differs (and a decoded value that falls below float32's
normal range, |x| < 2^-126, would lose bits: real activations and weights never get there).

Not bit-exact: the order of the float32 sums (oneDNN/MKL block K differently from ``_scaled_mm``'s
reference loop), hence also the last bit of a BF16 output. A BF16 path (decode to BF16, AMX/AVX-512-BF16
dot products) would keep the same exact products, but torch exposes no CPU GEMM with BF16 inputs and a
float32 output (``torch.mm`` rounds its result to BF16; ``aten::mm.dtype`` has no CPU kernel), so it is not
used: rounding the output to BF16 would no longer be "exact up to summation order".

Which path runs: ``torch._scaled_mm`` on CPU is a reference loop, 1000x slower than ``torch.mm`` at every
shape measured (bench/cpu_gemm.py, docs/RESULTS.md), so the rule is simply "decode on CPU" and no per-shape
measurement is spent (timing one ``_scaled_mm`` of the 110M model's shapes takes tens of seconds).
``MEGATRON_FP8_CPU_GEMM`` forces a path: ``auto`` (default), ``decode`` or ``scaled_mm``. When a test
forces CUDA's GEMM rules onto the CPU (:data:`.gemm_rules.FORCED`) the ``_scaled_mm`` path runs, since
that is what such a test exercises.
"""

import os

import torch

from . import gemm_rules, kernels
from .blockwise import BLOCK, BlockwiseFp8Tensor

ENV = "MEGATRON_FP8_CPU_GEMM"
PATHS = ("auto", "decode", "scaled_mm")


def forced_path() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in PATHS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(PATHS)}")
    return value


def use_decode(device: torch.device) -> bool:
    """True when this GEMM runs decoded on ``torch.mm`` rather than on ``torch._scaled_mm``."""
    if device.type != "cpu" or gemm_rules.FORCED is not None:
        return False
    return forced_path() != "scaled_mm"


_ONE = torch.ones((), dtype=torch.float32)


def decode(data: torch.Tensor) -> torch.Tensor:
    """FP8 payload -> float32, exactly: the csrc cast kernel (vectorised, several times faster than torch's
    own FP8 ``.float()`` on CPU; its amax is not needed here). Other devices use torch's cast."""
    if data.device.type != "cpu":
        return data.float()
    return kernels.scale_cast_amax(data, _ONE, torch.float32)[0]


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
    """``(a @ b.T) * scale_a * scale_b`` for FP8 a [M, K], b [N, K]; scales 0-dim or [M, 1] / [1, N]."""
    out = torch.mm(decode(a), decode(b).t())
    if scale_b.dim() == 0:  # tensorwise: one pass with the product of two powers of two (exact)
        out.mul_(scale_a * scale_b)
    else:
        out.mul_(scale_a).mul_(scale_b.reshape(1, -1))
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def _decode_blocks(t: BlockwiseFp8Tensor, row_scales: torch.Tensor) -> torch.Tensor:
    """Decode ``t`` [R, K] with its scale per (row, 128-column block) applied: float32 [R, K]."""
    rows, k = t.shape
    blocks = row_scales.shape[1]
    if k == blocks * BLOCK:
        full = decode(t.data).view(rows, blocks, BLOCK)
        return full.mul_(row_scales.unsqueeze(2)).view(rows, k)
    return decode(t.data).mul_(row_scales.repeat_interleave(BLOCK, dim=1)[:, :k])


def blockwise_mm(a: BlockwiseFp8Tensor, b: BlockwiseFp8Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.mm(_decode_blocks(a, a.row_scales()), _decode_blocks(b, b.row_scales()).t())
    return out if out_dtype == torch.float32 else out.to(out_dtype)
