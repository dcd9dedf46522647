"""The hand-written conversions of csrc/include/mfp8/numerics.h, bit for bit against torch's own casts.

Every conversion is exercised through ``kernels.scale_cast_amax`` (scale 1 and powers of two), whose
stored result must equal ``(x * scale).clamp(-fmax, fmax).to(dtype)``: every FP8/FP16 value, the
midpoints between neighbours (ties) and one float32 ulp either side, subnormals, signed zeros, infinities
(saturated by the clamp), NaN, and ~1M random floats over a wide exponent range. Decoding (narrow ->
float32) is checked on every code. BF16 (plain storage, no clamp) must match except NaN payloads.
"""

import os

import pytest
import torch

from megatron_fp8.fp8 import kernels
from megatron_fp8.fp8.formats import dtype_max

E4M3, E5M2, F16, BF16, F32 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16, torch.float32
SCALED = (E4M3, E5M2, F16)
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(BITS[t.element_size()])


def all_codes(dtype) -> torch.Tensor:
    """Every bit pattern of a 1- or 2-byte dtype, as that dtype."""
    width = torch.empty((), dtype=dtype).element_size()
    if width == 1:
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def finite_sorted_values(dtype) -> torch.Tensor:
    """All finite non-negative values of ``dtype`` as sorted float64 (exact)."""
    v = all_codes(dtype).to(torch.float64)
    return torch.unique(v[torch.isfinite(v) & (v >= 0)])


def next_after(x: torch.Tensor, direction: float) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, direction))


def tie_inputs(dtype) -> torch.Tensor:
    """Midpoints between adjacent representable values (exact in float32) and one ulp either side, both
    signs, plus the midpoint just above the largest value (saturates)."""
    v = finite_sorted_values(dtype)
    mids = ((v[1:] + v[:-1]) / 2).float()
    top = torch.tensor([float(v[-1]) * 1.0625], dtype=torch.float32)  # beyond fmax: clamped
    pos = torch.cat([mids, next_after(mids, float("inf")), next_after(mids, 0.0), top])
    return torch.cat([pos, -pos])


def special_inputs() -> torch.Tensor:
    tiny = torch.tensor([1, 2, 3, 0x7FFFF, 0x400000, 0x7FFFFF], dtype=torch.int32).view(torch.float32)
    values = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"), 1e-30,
                           2 ** -9, 2 ** -10, 2 ** -16, 2 ** -17, 2 ** -24, 2 ** -25, 2 ** -6, 2 ** -14,
                           448.0, 464.0, 480.0, 57344.0, 61440.0, 65504.0, 65520.0, 3.4e38])
    return torch.cat([values, -values, tiny, -tiny])


def random_inputs(n: int, seed: int) -> torch.Tensor:
    """Random signs, mantissas and exponents in [-40, 20): every rounding case, subnormal and saturating."""
    gen = torch.Generator().manual_seed(seed)
    mant = torch.randint(0, 1 << 23, (n,), generator=gen, dtype=torch.int32)
    exp = torch.randint(127 - 40, 127 + 20, (n,), generator=gen, dtype=torch.int32)
    sign = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int32) << 31
    return (sign | (exp << 23) | mant).view(torch.float32)


def expected_store(x: torch.Tensor, scale: float, dtype) -> torch.Tensor:
    if dtype in SCALED:
        fmax = dtype_max(dtype)
        return (x * torch.tensor(scale)).clamp(-fmax, fmax).to(dtype)
    return x.to(dtype)


# The NaN each scaled format stores (the input's sign bit is or-ed in).
CANONICAL_NAN = {E4M3: 0x7F, E5M2: 0x7F, F16: 0x7E00}


def assert_same_bits(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor):
    """Equal bits, except NaN: torch keeps float32 NaN payloads in some casts (its vectorised FP16 path),
    the kernels store the format's canonical NaN with the input's sign (BF16: any NaN)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = bits(got), bits(want)
    g_nan, w_nan = got.float().isnan(), want.float().isnan()
    assert torch.equal(g_nan, w_nan), "NaN positions differ"
    if got.dtype in CANONICAL_NAN and g_nan.any():
        sign = (bits(x.float()[g_nan]) < 0).to(torch.int32) << (8 * got.element_size() - 1)
        canonical = (sign | CANONICAL_NAN[got.dtype]).to(g.dtype)
        assert torch.equal(g[g_nan], canonical), "not the canonical NaN with the input's sign"
    g, w, x = g[~g_nan], w[~w_nan], x[~g_nan]
    bad = (g != w).nonzero().flatten()
    if bad.numel():
        i = bad[:5]
        raise AssertionError(f"{bad.numel()} mismatches, e.g. inputs {x[i].tolist()} "
                             f"(bits {[hex(b) for b in bits(x[i]).tolist()]}): got {g[i].tolist()}, "
                             f"want {w[i].tolist()}")


def check_cast(x: torch.Tensor, dtype, scale: float):
    out, amax = kernels.scale_cast_amax(x, torch.tensor(scale), dtype)
    assert_same_bits(out, expected_store(x, scale, dtype), x)
    want_amax = x.abs().max() if x.numel() else torch.zeros(())
    assert torch.equal(amax.isnan(), want_amax.isnan())
    if not want_amax.isnan():
        assert amax.item() == want_amax.item()


def test_backend_is_compiled_when_required():
    if os.environ.get("MEGATRON_FP8_REQUIRE_KERNELS") == "1":
        assert kernels.BACKEND != "reference"


@pytest.mark.parametrize("dtype", [E4M3, E5M2, F16])
@pytest.mark.parametrize("scale", [1.0, 2.0 ** -3, 2.0 ** 5])
def test_every_value_and_tie(dtype, scale):
    """Every representable value maps to itself; ties round to even; one ulp off a tie rounds away."""
    values = finite_sorted_values(dtype).float()
    x = torch.cat([values, -values, tie_inputs(dtype), special_inputs()]) / scale
    check_cast(x, dtype, scale)


@pytest.mark.parametrize("dtype", [E4M3, E5M2, F16, BF16])
def test_ties_of_other_formats(dtype):
    """Ties of every other format's grid are ordinary (or tie) inputs for this one."""
    x = torch.cat([tie_inputs(other) for other in (E4M3, E5M2, F16) if other != dtype] + [special_inputs()])
    check_cast(x, dtype, 1.0)


def test_bf16_ties_and_specials():
    v = finite_sorted_values(BF16)
    v = v[v < 3.0e38]  # keep midpoints finite in float32
    mids = ((v[1:] + v[:-1]) / 2).float()
    x = torch.cat([mids, next_after(mids, float("inf")), next_after(mids, 0.0), special_inputs()])
    check_cast(torch.cat([x, -x]), BF16, 1.0)


@pytest.mark.parametrize("dtype", [E4M3, E5M2, F16, BF16])
@pytest.mark.parametrize("scale", [1.0, 2.0 ** -7, 2.0 ** 9])
def test_random_wide_range(dtype, scale):
    """~1M random float32 values over 2^-40..2^20 (a quarter of that per extra scale), odd lengths."""
    seed = [E4M3, E5M2, F16, BF16].index(dtype) * 100 + int(torch.tensor(scale).log2()) + 50
    check_cast(random_inputs((1 << 20 if scale == 1.0 else 1 << 18) + 3, seed=seed), dtype, scale)


def test_float32_subnormal_inputs():
    x = torch.arange(1, 1 << 16, 7, dtype=torch.int32).view(torch.float32)  # float32 subnormals
    x = torch.cat([x, -x])
    for dtype in (E4M3, E5M2, F16, BF16):
        for scale in (1.0, 2.0 ** 100, 2.0 ** 126):  # scaled up into the formats' subnormal/normal range
            check_cast(x, dtype, scale)


@pytest.mark.parametrize("src", [E4M3, E5M2, F16, BF16])
def test_decode_every_code(src):
    """narrow -> float32 is exact for every bit pattern (NaN: any NaN)."""
    x = all_codes(src)
    out, amax = kernels.scale_cast_amax(x, torch.tensor(1.0), F32)
    assert_same_bits(out, x.float(), x.float())
    assert amax.isnan() == x.float().isnan().any()


@pytest.mark.parametrize("src", [E4M3, E5M2, F16, BF16])
@pytest.mark.parametrize("dst", [E4M3, E5M2, F16, BF16])
def test_narrow_to_narrow(src, dst):
    """Decode + scale + encode in one kernel, every source code."""
    x = all_codes(src)
    for scale in (1.0, 2.0 ** -4, 2.0 ** 4):
        out, _ = kernels.scale_cast_amax(x, torch.tensor(scale), dst)
        assert_same_bits(out, expected_store(x.float(), scale, dst), x.float())


def test_non_power_of_two_scale():
    """The kernel multiplies by whatever float32 scale it is given, exactly as the reference does."""
    x = random_inputs(100_003, seed=5)
    for dtype in (E4M3, E5M2, F16):
        check_cast(x, dtype, 0.3)
        check_cast(x, dtype, 3.0e-5)
