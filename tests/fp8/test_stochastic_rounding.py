"""Stochastic rounding of the master's store (reference.store_stochastic, numerics.h f32_to_f16_sr /
f32_to_bf16_sr): every result is one of the two representable neighbours, values already representable
stay exact, the expected stored value is the input (an update far below half a step survives on
average), and saturation/NaN follow the round-to-nearest store."""

import pytest
import torch

from megatron_fp8.fp8 import reference

ONE = torch.ones(())


def neighbours(x: torch.Tensor, dtype: torch.dtype):
    """The representable values of ``dtype`` just below and just above |x| (with x's sign), as float64."""
    near = x.to(dtype)
    toward_zero = torch.nextafter(near, torch.zeros_like(near)).double()
    away = torch.nextafter(near, (torch.sign(x) * float("inf")).to(dtype)).double()
    n, ax = near.double(), x.double().abs()
    return torch.where(n.abs() <= ax, n, toward_zero), torch.where(n.abs() >= ax, n, away)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spread", ["normal", "subnormal"])
def test_result_is_a_neighbour_and_exact_values_stay(dtype, spread):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20_000, generator=gen)
    if spread == "subnormal":
        x = x * (2.0 ** -20 if dtype == torch.float16 else 2.0 ** -128)
    got = reference.store_stochastic(x, ONE, dtype, seed=11).double()
    lower, upper = neighbours(x, dtype)
    assert bool(((got == lower) | (got == upper)).all())
    assert bool((got == lower).any()) and bool((got == upper).any() & (lower != upper).any())
    exact = x.to(dtype).float()
    assert torch.equal(reference.store_stochastic(exact, ONE, dtype, seed=5).float(), exact)


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 1.0), (torch.float16, 2.0 ** -18), (torch.bfloat16, 1.0)])
@pytest.mark.parametrize("fraction", [0.3, 1 / 64])
def test_expected_value_is_the_input(dtype, scale, fraction):
    """A value ``fraction`` of a step above a representable one: the mean over 2^16 elements (different
    element indices, hence independent bits) lands on it within 5 standard errors plus the 13/16-bit
    resolution of the probability; round to nearest would give ``fraction`` = 0 for every element."""
    base = torch.tensor(1.0 + 2.0 ** -7) * scale  # with scale 2^-18 the FP16 store is subnormal
    base = base.to(dtype).float()
    step = (torch.nextafter(base.to(dtype), torch.tensor(2.0).to(dtype)).float() - base)
    n = 1 << 16
    x = torch.full((n,), float(base + fraction * step))
    got = reference.store_stochastic(x, ONE, dtype, seed=12345).double()
    p_up = float(((got - float(base)) / float(step)).mean())
    resolution = 2.0 ** (-13 if dtype == torch.float16 else -16)
    assert abs(p_up - fraction) < 5 * (fraction * (1 - fraction) / n) ** 0.5 + resolution, p_up
    assert float(x.to(dtype).double().mean()) == float(base)  # nearest rounding loses it entirely


def test_saturation_sign_and_nan():
    x = torch.tensor([1e6, -1e6, 65504.0, -65519.0, float("inf"), float("nan"), -0.0, 0.0, -3.3e-8])
    got = reference.store_stochastic(x, ONE, torch.float16, seed=1)
    assert got[:5].tolist() == [65504.0, -65504.0, 65504.0, -65504.0, 65504.0]
    assert got[5].isnan()
    assert torch.equal(got[6:8].view(torch.int16), torch.tensor([-0x8000, 0], dtype=torch.int16))
    assert float(got[8]) in (0.0, -2.0 ** -24) and str(float(got[8]))[0] == "-"  # sign kept at the smallest step
    b = reference.store_stochastic(torch.tensor([float("inf"), -float("inf"), float("nan")]), ONE,
                                   torch.bfloat16, seed=1)
    assert b[0] == float("inf") and b[1] == -float("inf") and b[2].isnan()


def test_scale_applies_before_rounding():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(8)) * 1e-3
    scale = torch.tensor(2.0 ** 14)
    got = reference.store_stochastic(x, scale, torch.float16, seed=9)
    assert torch.equal(got, reference.store_stochastic(x * scale, ONE, torch.float16, seed=9))
    assert (got.float() / scale - x).abs().max() <= (x.abs() * 2.0 ** -10).max()


def test_bits_depend_on_seed_and_index():
    a, b = reference.sr_bits(1, 4096), reference.sr_bits(2, 4096)
    assert int((a >= 0).all() & (a < 2 ** 32).all()) == 1
    assert len(set(a.tolist())) == 4096 and int((a != b).sum()) > 4000
    low = (a & 0x1FFF).double() / 2 ** 13  # the bits FP16 uses: roughly uniform
    assert abs(float(low.mean()) - 0.5) < 0.02
    # seed + index * golden: element i of seed s has the bits of element 0 of seed s + i * 0x9E3779B9
    assert reference.sr_bits(0, 3).tolist() == [int(reference.sr_bits(s, 1)) for s in (0, 0x9E3779B9, 0x3C6EF372)]
