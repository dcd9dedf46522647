"""FP8 GEMMs on CPUs at the float32 rate: FP8 operands decoded to float32, a float32 GEMM, scales exact.

Every E4M3 and E5M2 value (normals, subnormals, zeros) is exactly a float32 (and a BF16) value, and the
product of two of them has at most 4 + 4 significant bits, so float32 products are exact and a float32
GEMM of the decoded operands differs from ``torch._scaled_mm`` only in float32 summation order. The
scales (powers of two, :func:`.scaling.compute_scale_tensor`) are applied exactly: tensorwise as the
GEMM's ``alpha`` (their product), rowwise to the result (a column times a row), block scales (1x128,
128x128) while decoding, so the whole K runs as one GEMM instead of one ``_scaled_mm`` per 128-wide
slice (each product ``(a * sa) * (b * sb)`` is still exact; a decoded value below float32's normal range,
|x| < 2^-126, would lose bits: real activations and weights never get there).

The kernel (csrc/cpu/gemm.cpp, :func:`.kernels.fp8_gemm`) does all of it in one OpenMP region: each thread
decodes its share of the operands into a workspace kept between calls (no fresh float32 temporaries,
so no page faults), runs torch's BLAS on its own block of the output on one thread, and applies the
epilogue (rowwise scales, BF16 rounding) while that block is in cache. An operand may be stored
transposed ([K, rows]): the BLAS call takes a transpose flag, so the FP8 linear layer needs no FP8
transposes on CPUs (:func:`.gemm.fp8_gemm`'s ``a_transposed``/``b_transposed``). Measured at the 110M
model's shapes on an AVX2-only machine: faster than ``torch.mm`` of the float32 operands (docs/RESULTS.md).

Not bit-exact: the order of the float32 sums (MKL blocks K differently from ``_scaled_mm``'s reference
loop), hence also the last bit of a BF16 output. A BF16 path (decode to BF16, AMX/AVX-512-BF16 dot
products) would keep the same exact products, but torch exposes no CPU GEMM with BF16 inputs and a
float32 output (``torch.mm`` rounds its result to BF16; ``aten::mm.dtype`` has no CPU kernel), so it is not
used: rounding the output to BF16 would no longer be "exact up to summation order".

Which path runs: ``torch._scaled_mm`` on CPU is a reference loop, 1000x slower than ``torch.mm`` at the
model's shapes and several times slower at a 64x192x64 one (bench/cpu_gemm.py, docs/RESULTS.md), and
oneDNN refuses it outright without AVX-512, so the rule is simply "decode on CPU" and no per-shape
measurement is spent (timing one ``_scaled_mm`` of the 110M model's shapes takes tens of seconds).
``MEGATRON_FP8_CPU_GEMM`` forces a path: ``auto`` (default), ``decode`` or ``scaled_mm``. When a test
forces CUDA's GEMM rules onto the CPU (:data:`.gemm_rules.FORCED`) the ``_scaled_mm`` path runs, since
that is what such a test exercises.
"""

import os

import torch

from . import gemm_rules, kernels
from .blockwise import BlockwiseFp8Tensor

ENV = "MEGATRON_FP8_CPU_GEMM"
PATHS = ("auto", "decode", "scaled_mm")
DOT_ENV = "MEGATRON_FP8_CPU_GEMM_DOT"
DOTS = ("auto", "fp32", "bf16")


def dot_path() -> str:
    """The decoded GEMM's arithmetic: ``auto`` (BF16 dot products where the CPU has them, else float32
    BLAS), ``fp32`` or ``bf16`` (``MEGATRON_FP8_CPU_GEMM_DOT``)."""
    value = os.environ.get(DOT_ENV, "auto").strip().lower() or "auto"
    if value not in DOTS:
        raise ValueError(f"{DOT_ENV}={os.environ[DOT_ENV]!r}: expected one of {', '.join(DOTS)}")
    return value


def forced_path() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in PATHS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(PATHS)}")
    return value


def use_decode(device: torch.device) -> bool:
    """True when this GEMM runs decoded (the csrc kernel) rather than on ``torch._scaled_mm``."""
    if device.type != "cpu" or gemm_rules.FORCED is not None:
        return False
    return forced_path() != "scaled_mm"


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype, a_transposed: bool = False, b_transposed: bool = False) -> torch.Tensor:
    """``(a @ b.T) * scale_a * scale_b`` for FP8 a [M, K], b [N, K] (stored [K, M] / [K, N] when transposed);
    scales 0-dim (tensorwise) or [M, 1] / [1, N] (rowwise)."""
    scaling = "rowwise" if scale_a.dim() == 2 or scale_b.dim() == 2 else "tensorwise"
    return kernels.fp8_gemm(a, b, scale_a, scale_b, scaling, out_dtype, a_transposed, b_transposed, dot_path())


def blockwise_mm(a: BlockwiseFp8Tensor, b: BlockwiseFp8Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``a @ b.T`` with the scale of each (row, 128-wide block of K) applied while decoding."""
    return kernels.fp8_gemm(a.data, b.data, a.row_scales(), b.row_scales(), "block", out_dtype, dot=dot_path())
