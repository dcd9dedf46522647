"""What ``torch._scaled_mm`` accepts on each device, and operands reshaped to fit before it is asked.

On CUDA ``_scaled_mm`` runs cuBLASLt (or CUTLASS for some rowwise cases), whose rules torch checks before
launching anything (aten/src/ATen/native/cuda/Blas.cpp, later ScaledBlas.cpp, torch 2.4 to 2.11):

- ``mat1`` row-major and ``mat2`` column-major: our "NT" form (both operands stored row-major, the
  second passed as ``b.t()``) is exactly that;
- K (``mat1.shape[1]``) and both dimensions of ``mat2`` (K and N) multiples of 16; M is free;
- scales float32: tensorwise one element each; rowwise ``scale_a`` [M, 1] and ``scale_b`` [1, N],
  contiguous, and BF16 output (some torch releases accept no other output type for rowwise scaling);
- E5M2 x E5M2 is refused (cuBLASLt has no such kernel); E4M3 x E5M2 and E5M2 x E4M3 work;
- compute capability 8.9 or 9.0+ (older GPUs are refused outright: that is the one case left to the
  counted fallback in :mod:`.gemm`).

:func:`legal_call` makes every GEMM the model issues legal under those rules, exactly: K is padded with
zeros (adds nothing to any dot product), N is padded with zero rows of ``b`` (and unit scales) and the
padding columns are sliced off, and a rowwise GEMM that wants another output than BF16 runs as a
unit-scale tensorwise GEMM in float32 followed by the row and column scales (powers of two, so the
epilogue is exact). The only refusal left is E5M2 x E5M2, which raises here, naming the rule, instead of
degrading silently. On CPU torch accepts every shape and dtype pair, so nothing is changed there.
"""

from dataclasses import dataclass

import torch

E5M2 = torch.float8_e5m2


@dataclass(frozen=True)
class GemmRules:
    name: str
    multiple: int  # K and N must be multiples of this
    rowwise_out: tuple | None  # output dtypes a rowwise GEMM may ask for (None: any)
    e5m2_pair: bool  # E5M2 x E5M2 accepted


CUBLASLT = GemmRules("cuBLASLt", 16, (torch.bfloat16,), False)
PERMISSIVE = GemmRules("permissive", 1, None, True)

# Tests set this to CUBLASLT to run the CUDA code path's padding on CPU (``_scaled_mm`` on CPU accepts
# the padded operands too, so the results must not change).
FORCED: GemmRules | None = None


def rules_for(device: torch.device) -> GemmRules:
    if FORCED is not None:
        return FORCED
    return CUBLASLT if device.type == "cuda" else PERMISSIVE


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def _zero_pad(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``t`` (2-D, FP8) in the top-left corner of a zero [rows, cols] tensor. Works on raw bytes (zero bytes
    are +0.0 in both FP8 formats), since not every torch build pads or fills FP8 tensors."""
    if tuple(t.shape) == (rows, cols):
        return t.contiguous()
    out = torch.zeros((rows, cols), dtype=torch.uint8, device=t.device)
    out[: t.shape[0], : t.shape[1]] = t.contiguous().view(torch.uint8)
    return out.view(t.dtype)


def check_dtypes(a: torch.Tensor, b: torch.Tensor, rules: GemmRules) -> None:
    if not rules.e5m2_pair and a.dtype == E5M2 and b.dtype == E5M2:
        raise ValueError(f"FP8 GEMM of two E5M2 operands {tuple(a.shape)} x {tuple(b.shape)}: {rules.name} has no "
                         "E5M2 x E5M2 kernel; quantize one operand as E4M3 (--fp8-format hybrid keeps only "
                         "gradients in E5M2, so the model never asks for this)")


def legal_call(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
               out_dtype: torch.dtype, rules: GemmRules) -> torch.Tensor:
    """``a @ b.T`` for row-major FP8 a [M, K], b [N, K] through ``torch._scaled_mm``, legal under ``rules``.

    ``scale_a``/``scale_b``: 0-dim (tensorwise) or [M, 1] / [1, N] (rowwise) float32 scale_invs.
    """
    check_dtypes(a, b, rules)
    rowwise = scale_a.dim() == 2
    if rowwise and rules.rowwise_out is not None and out_dtype not in rules.rowwise_out:
        one = torch.ones((), dtype=torch.float32, device=a.device)
        out = legal_call(a, b, one, one, torch.float32, rules)
        return (out * scale_a * scale_b.reshape(1, -1)).to(out_dtype)
    (m, k), n = a.shape, b.shape[0]
    k_pad, n_pad = _round_up(k, rules.multiple), _round_up(n, rules.multiple)
    a = _zero_pad(a, m, k_pad)
    b = _zero_pad(b, n_pad, k_pad)
    if rowwise:
        scale_a = scale_a.contiguous()
        scale_b = scale_b.reshape(1, -1)
        if n_pad != n:
            scale_b = torch.cat([scale_b, scale_b.new_ones(1, n_pad - n)], dim=1)
        scale_b = scale_b.contiguous()
    out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return out[:, :n].contiguous() if n_pad != n else out
