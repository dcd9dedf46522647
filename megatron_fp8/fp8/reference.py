"""Pure-torch reference of every csrc kernel: the oracle in tests and the fallback without the extension.

Each function spells out the exact float32 operation order the C++/CUDA kernels follow, so results are
bit-identical (the kernels are compiled without FMA contraction). Conventions shared by all kernels:

- a *scaled* value is stored as ``cast(clamp(x * scale, -fmax, fmax))`` and read as ``stored * scale_inv``;
  FP8 and FP16 storage is scaled, FP32 and BF16 storage is plain (scale 1, no clamp);
- ``amax`` is ``max(|x|)`` over the values before scaling and propagates NaN;
- new scales come from :func:`megatron_fp8.fp8.scaling.compute_scale_tensor` (power of two, previous
  scale kept for an amax of 0, inf or NaN), and only ``scale_inv`` is kept beside the payload.
"""

from dataclasses import dataclass

import torch

from .formats import dtype_max, is_scaled
from .scaling import compute_scale_tensor


def _f32(value: float) -> float:
    """Round a Python float to the float32 the kernels receive."""
    return float(torch.tensor(value, dtype=torch.float32))


def amax(x: torch.Tensor) -> torch.Tensor:
    """NaN-propagating max |x| as a 0-dim float32 tensor (0 for an empty tensor)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if x.dtype in _MINMAX_DTYPES:  # one read-only pass, no float32 copy: 2.5-5x faster on CPU, same value
        lo, hi = torch.aminmax(x.detach())
        return torch.maximum(-lo, hi).abs().float()  # abs: -0.0 -> 0.0; NaN and inf propagate
    return x.detach().float().abs().amax()


_MINMAX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def store(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Write float32 ``values`` into ``dtype`` storage: scaled and saturated for FP8/FP16, plain otherwise."""
    if not is_scaled(dtype):
        return values.to(dtype)
    fmax = dtype_max(dtype)
    return (values * scale).clamp(-fmax, fmax).to(dtype)


_U32 = 0xFFFFFFFF


def _mul_u32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in [0, 2^32): two partial products below 2^48, so no int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _U32


def sr_bits(seed: int, n: int, device=None) -> torch.Tensor:
    """numerics.h sr_bits for element indices 0..n-1: lowbias32(seed + index * 0x9E3779B9), as int64."""
    x = (_mul_u32(torch.arange(n, dtype=torch.int64, device=device) & _U32, 0x9E3779B9) + seed) & _U32
    x ^= x >> 16
    x = _mul_u32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul_u32(x, 0x846CA68B)
    return x ^ (x >> 16)


def store_stochastic(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``store`` with stochastic rounding (numerics.h f32_to_f16_sr / f32_to_bf16_sr): the magnitude rounds
    up with probability equal to its distance from the representable value below, in 13 (FP16) or 16
    (BF16) random bits ``sr_bits(seed, index)``."""
    flat = values.reshape(-1)
    r = sr_bits(seed, flat.numel(), flat.device)
    if dtype == torch.bfloat16:
        u = flat.view(torch.int32).to(torch.int64) & _U32
        v = torch.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 0x40, ((u + (r & 0xFFFF)) & _U32) >> 16)
        return v.to(torch.int32).to(torch.int16).view(torch.bfloat16).reshape(values.shape)
    if dtype != torch.float16:
        raise ValueError(f"stochastic rounding stores float16 or bfloat16, not {dtype}")
    y = flat * scale
    u = y.view(torch.int32).to(torch.int64) & _U32
    sign = (u >> 16) & 0x8000
    a = torch.clamp((u & 0x7FFFFFFF), max=0x477FE000)
    noise = r & 0x1FFF
    normal = ((a + noise) >> 13) - (112 << 10)
    small = torch.clamp(a, max=0x38800000).to(torch.int32).view(torch.float32)
    units = small * 16777216.0 + noise.to(torch.float32) * 2.0 ** -13
    sub = units.to(torch.int32).to(torch.int64)
    v = torch.where(a < 0x38800000, sub, normal)
    v = torch.where((u & 0x7FFFFFFF) > 0x7F800000, torch.full_like(v, 0x7E00), v)
    return (v | sign).to(torch.int32).to(torch.int16).view(torch.float16).reshape(values.shape)


def load(stored: torch.Tensor, scale_inv) -> torch.Tensor:
    """Read storage back as float32 values (exact: scale_inv is a power of two; None means unscaled)."""
    values = stored.float()
    return values * scale_inv if scale_inv is not None and is_scaled(stored.dtype) else values


def scale_cast_amax(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype):
    """Fused cast: ``(store(x, scale, out_dtype), amax(x))``."""
    return store(x.float(), scale, out_dtype), amax(x)


def cast_transpose_amax(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype):
    """Cast a 2-D tensor and its transpose in one pass: ``(out, out.t().contiguous(), amax)``."""
    if x.dim() != 2:
        raise ValueError(f"cast_transpose expects a 2-D tensor, got shape {tuple(x.shape)}")
    out, x_amax = scale_cast_amax(x, scale, out_dtype)
    return out, out.t().contiguous(), x_amax


def fp8_accumulate(acc: torch.Tensor, acc_scale_inv: torch.Tensor, grad: torch.Tensor, margin: int = 0):
    """``acc += grad`` for a scaled accumulator, requantized with a fresh scale; returns the new amax.

    In place on ``acc`` and ``acc_scale_inv``. ``sum = load(acc) + float(grad)``; the new scale is the
    current-scaling scale of ``amax(sum)``. A non-finite amax keeps the previous scale and is returned, so
    the caller sees the overflow (the stored values saturate).
    """
    total = load(acc, acc_scale_inv) + grad.float().reshape(acc.shape)
    total_amax = amax(total)
    scale = compute_scale_tensor(total_amax, dtype_max(acc.dtype), margin, 1.0 / acc_scale_inv)
    acc.copy_(store(total, scale, acc.dtype))
    acc_scale_inv.copy_(1.0 / scale)
    return total_amax


def sum_shards(shards: torch.Tensor, scale_invs: torch.Tensor, out_dtype: torch.dtype,
               factor: float = 1.0, margin: int = 0, prev_scale_inv=None):
    """Sum N scaled shards (``shards[i] * scale_invs[i]``, i = 0..N-1 in order) in float32, times ``factor``.

    Returns ``(out, out_scale_inv, amax)``; ``out`` is stored in ``out_dtype`` with a fresh scale (the
    FP8 reduce-scatter of docs/design.md §3). ``prev_scale_inv`` is kept when the amax is unusable (default 1).
    """
    total = torch.zeros(shards.shape[1:], dtype=torch.float32, device=shards.device)
    for i in range(shards.shape[0]):
        total = total + load(shards[i], scale_invs[i])
    total = total * _f32(factor)
    total_amax = amax(total)
    previous = torch.ones((), device=shards.device) if prev_scale_inv is None else 1.0 / prev_scale_inv
    scale = compute_scale_tensor(total_amax, dtype_max(out_dtype), margin, previous) \
        if is_scaled(out_dtype) else torch.ones((), device=shards.device)
    return store(total, scale, out_dtype), 1.0 / scale, total_amax


GEMM_SCALINGS = ("tensorwise", "rowwise", "block")
GEMM_BLOCK = 128


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, scaling: str,
             out_dtype: torch.dtype, a_transposed: bool = False, b_transposed: bool = False) -> torch.Tensor:
    """FP8 GEMM ``a @ b.T`` scaled, float32 accumulation; equal to the kernel up to float32 summation order.

    ``a`` is [M, K] (stored [K, M] when ``a_transposed``), ``b`` is [N, K] (stored [K, N] when
    ``b_transposed``). ``scaling``: ``tensorwise`` (one scale_inv each, applied to the result as their
    product), ``rowwise`` ([M] and [N] scale_invs, applied to the result as ``out * sa[m] * sb[n]``) or
    ``block`` (scale_inv per row and 128-wide block of K, [M, ceil(K/128)] and [N, ceil(K/128)], applied to
    the decoded operands, which must then be stored [rows, K]).
    """
    if scaling not in GEMM_SCALINGS:
        raise ValueError(f"fp8_gemm: unknown scaling {scaling!r}")
    if scaling == "block" and (a_transposed or b_transposed):
        raise ValueError("fp8_gemm: block scales need operands stored [rows, K]")
    a32, b32 = a.float(), b.float()
    if scaling == "block":
        a32 = a32 * scale_a.repeat_interleave(GEMM_BLOCK, dim=1)[:, :a32.shape[1]]
        b32 = b32 * scale_b.repeat_interleave(GEMM_BLOCK, dim=1)[:, :b32.shape[1]]
    out = torch.mm(a32.t() if a_transposed else a32, b32 if b_transposed else b32.t())
    if scaling == "tensorwise":
        out.mul_(scale_a.reshape(()) * scale_b.reshape(()))
    elif scaling == "rowwise":
        out.mul_(scale_a.reshape(-1, 1)).mul_(scale_b.reshape(1, -1))
    return out.to(out_dtype)


@dataclass
class AdamWHyper:
    """Hyper-parameters of one AdamW step; ``grad_scale`` multiplies every gradient (e.g. the clip factor)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    step: int = 1
    grad_scale: float = 1.0
    margin: int = 0

    def constants(self) -> dict:
        """The float32 constants both implementations use, derived in double precision once per step."""
        bc1 = 1.0 - self.beta1 ** self.step
        bc2 = 1.0 - self.beta2 ** self.step
        return {
            "beta1": _f32(self.beta1), "one_minus_beta1": _f32(1.0 - self.beta1),
            "beta2": _f32(self.beta2), "one_minus_beta2": _f32(1.0 - self.beta2),
            "bc2_sqrt": _f32(bc2 ** 0.5), "step_size": _f32(self.lr / bc1),
            "decay": _f32(1.0 - self.lr * self.weight_decay), "eps": _f32(self.eps),
            "grad_scale": _f32(self.grad_scale),
        }


@dataclass
class AdamWTensors:
    """One parameter's state for :func:`adamw_step`. Each ``*_sinv`` is a 0-dim float32 scale_inv,
    required for scaled storage (FP8/FP16) and ignored otherwise. ``weight`` is an optional extra copy of
    the updated parameter (the FP8 model weight at O1-O3, BF16 at ``--bf16``) written with a fresh scale.
    ``master_sr_seed`` (float16/bfloat16 masters) stores the master with stochastic rounding
    (:func:`store_stochastic`); None rounds to nearest even."""

    master: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    master_sinv: torch.Tensor | None = None
    grad_sinv: torch.Tensor | None = None
    exp_avg_sinv: torch.Tensor | None = None
    exp_avg_sq_sinv: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    weight_sinv: torch.Tensor | None = None
    master_sr_seed: int | None = None  # stochastic rounding of the master's store with this seed


def adamw_math(t: AdamWTensors, c: dict):
    """The element-wise AdamW update in float32, in the kernels' operation order: ``(master, m, v)``."""
    g = load(t.grad, t.grad_sinv) * c["grad_scale"]
    m = load(t.exp_avg, t.exp_avg_sinv) * c["beta1"] + g * c["one_minus_beta1"]
    v = load(t.exp_avg_sq, t.exp_avg_sq_sinv) * c["beta2"] + (g * g) * c["one_minus_beta2"]
    # IEEE sqrt and division, as the kernels compute them: torch.sqrt(float32) on CPU is off by one ulp
    # for ~16% of inputs (the float64 sqrt rounded to float32 is the correctly rounded float32 sqrt),
    # and CUDA divides by a Python scalar through its reciprocal (a tensor divisor is a true division).
    bc2_sqrt = torch.tensor(c["bc2_sqrt"], dtype=torch.float32, device=v.device)
    denom = torch.sqrt(v.double()).float() / bc2_sqrt + c["eps"]
    p = load(t.master, t.master_sinv) * c["decay"] - (m / denom) * c["step_size"]
    return p, m, v


def _restore(stored: torch.Tensor, sinv, values: torch.Tensor, margin: int, sr_seed: int | None = None) -> None:
    """Write ``values`` back into ``stored`` in place, with a fresh scale for scaled storage (and stochastic
    rounding when ``sr_seed`` is given)."""
    if is_scaled(stored.dtype):
        scale = compute_scale_tensor(amax(values), dtype_max(stored.dtype), margin, 1.0 / sinv)
        if sr_seed is None:
            stored.copy_(store(values, scale, stored.dtype))
        else:
            stored.copy_(store_stochastic(values, scale, stored.dtype, sr_seed))
        sinv.copy_(1.0 / scale)
    elif sr_seed is not None:
        stored.copy_(store_stochastic(values, torch.ones(()), stored.dtype, sr_seed))
    else:
        stored.copy_(values.to(stored.dtype))


def adamw_step(tensors: list[AdamWTensors], hyper: AdamWHyper) -> None:
    """One decoupled-weight-decay Adam step over many tensors, in place (the multi-tensor kernel)."""
    c = hyper.constants()
    for t in tensors:
        p, m, v = adamw_math(t, c)
        _restore(t.exp_avg, t.exp_avg_sinv, m, hyper.margin)
        _restore(t.exp_avg_sq, t.exp_avg_sq_sinv, v, hyper.margin)
        _restore(t.master, t.master_sinv, p, hyper.margin, t.master_sr_seed)
        if t.weight is not None:
            _restore(t.weight, t.weight_sinv, p, hyper.margin)
