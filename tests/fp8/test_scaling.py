"""The power-of-two scale rule and the delayed/current scaling state."""

import math

import pytest
import torch

from megatron_fp8.fp8.formats import E4M3, E5M2, dtype_max
from megatron_fp8.fp8.scaling import Fp8Recipe, ScalingMeta, compute_scale, compute_scale_tensor


@pytest.mark.parametrize("fmax", [448.0, 57344.0, 65504.0])
@pytest.mark.parametrize("margin", [0, 1, 3])
def test_scale_is_largest_power_of_two_that_fits(fmax, margin):
    for amax in [1e-30, 3.7e-5, 0.01, 0.5, 1.0, 3.0, 447.0, 448.0, 449.0, 1e4, 3e38]:
        scale = compute_scale(amax, fmax, margin)
        exp = math.log2(scale)
        assert exp == int(exp), "scale must be a power of two"
        expected = math.floor(math.log2(fmax / amax)) - margin
        assert exp == max(-126, min(126, expected))
        if -126 < exp < 126:
            assert amax * scale <= fmax / 2**margin < amax * scale * 2


def test_unusable_amax_keeps_previous_scale():
    for bad in [0.0, float("inf"), float("-inf"), float("nan")]:
        assert compute_scale(bad, 448.0, 0, previous=8.0) == 8.0
        t = compute_scale_tensor(torch.tensor(bad), 448.0, 0, torch.tensor(8.0))
        assert t.item() == 8.0


def test_tensor_form_matches_scalar_form():
    amaxes = torch.tensor([1e-40, 1e-20, 2.0**-7, 0.3, 1.0, 448.0, 449.0, 6e4, 1e30, 0.0, float("nan")])
    got = compute_scale_tensor(amaxes, 448.0, 1, torch.full_like(amaxes, 4.0))
    want = [compute_scale(float(a), 448.0, 1, 4.0) for a in amaxes]
    assert got.tolist() == want


def test_delayed_history_max_and_most_recent():
    meta = ScalingMeta(dtype_max(E4M3), "delayed", history_len=3, compute_algo="max")
    recent = ScalingMeta(dtype_max(E4M3), "delayed", history_len=3, compute_algo="most_recent")
    for amax in [4.0, 100.0, 2.0]:
        meta.record_amax(torch.tensor(amax))
        recent.record_amax(torch.tensor(amax))
    assert meta.amax_history.tolist() == [2.0, 100.0, 4.0]
    assert meta.scale.item() == compute_scale(100.0, 448.0)
    assert recent.scale.item() == compute_scale(2.0, 448.0)
    meta.record_amax(torch.tensor(1.0))  # the 4.0 falls out of a history of length 3
    assert meta.amax_history.tolist() == [1.0, 2.0, 100.0]
    assert meta.scale_inv.item() * meta.scale.item() == 1.0


def test_bad_amax_is_counted_not_propagated():
    meta = ScalingMeta(dtype_max(E5M2), "delayed", history_len=4)
    meta.record_amax(torch.tensor(10.0))
    before = meta.scale.item()
    for bad in [float("nan"), float("inf"), 0.0]:
        meta.record_amax(torch.tensor(bad))
    assert meta.scale.item() == before
    assert torch.isfinite(meta.amax_history).all()
    assert meta.skipped_amax.item() == 3


def test_state_dict_round_trip_and_mismatch():
    meta = ScalingMeta(448.0, "delayed", history_len=4)
    meta.record_amax(torch.tensor(3.0))
    other = ScalingMeta(448.0, "delayed", history_len=4)
    other.load_state_dict(meta.state_dict())
    assert torch.equal(other.amax_history, meta.amax_history) and other.scale.item() == meta.scale.item()
    with pytest.raises(ValueError, match="amax-history-len"):
        ScalingMeta(448.0, "delayed", history_len=8).load_state_dict(meta.state_dict())


@pytest.mark.parametrize("kwargs,flag", [({"format": "e5m2"}, "--fp8-format"), ({"recipe": "x"}, "--fp8-recipe"),
                                         ({"amax_history_len": 0}, "--fp8-amax-history-len"),
                                         ({"amax_compute_algo": "mean"}, "--fp8-amax-compute-algo"),
                                         ({"margin": -1}, "--fp8-margin")])
def test_recipe_validation_names_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        Fp8Recipe(**kwargs)
