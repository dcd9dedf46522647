"""FP8 statistics on constructed tensors: exactly the underflow, saturation and error they were built with."""

import math

import pytest
import torch

from megatron_fp8.fp8 import stats
from megatron_fp8.fp8.blockwise import TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3, E5M2
from megatron_fp8.fp8.tensor import Fp8Tensor


def _figures(x, scale_exp, dtype=E4M3):
    scale = torch.tensor(2.0 ** scale_exp)
    return stats.summarize(stats.measure(torch.tensor(x, dtype=torch.float32), scale, dtype))


def test_saturation_only():
    # 896 clamps to 448 at scale 1: error 448 of a norm of 896; the zeros count in numel, not nonzero
    f = _figures([896.0, 0.0, 0.0, 0.0], 0)
    assert f == {"amax": 896.0, "scale_exp": 0, "underflow": 0.0, "saturation": 0.25, "rel_error": 0.5}


def test_underflow_only():
    # E4M3's smallest subnormal is 2^-9: 2^-11 rounds to 0 (three of them), 2^-9 is exact
    f = _figures([2.0 ** -11] * 3 + [2.0 ** -9, 0.0], 0)
    assert f["underflow"] == 0.75 and f["saturation"] == 0.0
    lost, kept = 3 * 2.0 ** -22, 2.0 ** -18
    assert f["rel_error"] == pytest.approx(math.sqrt(lost / (lost + kept)), rel=1e-12)
    assert f["amax"] == 2.0 ** -9


def test_rounding_error_and_scale_exponent():
    # at scale 2^3, 1.0625 becomes 8.5, which E4M3 (3 mantissa bits) rounds to even: 8, i.e. 1.0
    f = _figures([1.0625], 3)
    assert f["scale_exp"] == 3 and f["underflow"] == 0.0 and f["saturation"] == 0.0
    assert f["rel_error"] == pytest.approx(0.0625 / 1.0625, rel=1e-12)
    # the same value at a scale that makes it overflow E4M3: 1.0625 * 2^9 = 544 > 448
    g = _figures([1.0625], 9)
    assert g["saturation"] == 1.0 and g["rel_error"] == pytest.approx((544 - 448) / 544, rel=1e-12)


def test_e5m2_range():
    # E5M2: max 57344, smallest subnormal 2^-16
    f = _figures([60000.0, 2.0 ** -18, 1.0, -1.0], 0, E5M2)
    assert f["saturation"] == 0.25 and f["underflow"] == 0.25


def test_exact_values_have_no_error_and_empty_or_zero_tensors_report_zero():
    assert _figures([1.0, -2.0, 0.5, 448.0], 0)["rel_error"] == 0.0
    assert _figures([0.0, 0.0], 0) == {"amax": 0.0, "scale_exp": 0, "underflow": 0.0, "saturation": 0.0,
                                       "rel_error": 0.0}


def test_counts_match_the_kernel_cast():
    """The error measured is the error of the cast the kernels really make."""
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 3
    x[0, :8] = 1e-6  # some underflow
    q = Fp8Tensor.quantize_current(x, E4M3, margin=2)
    scale = 1.0 / q.scale_inv
    counts = dict(zip(stats.FIELDS, stats.measure(x, scale, E4M3).tolist()))
    dq = q.dequantize()
    assert counts["err_sq"] == pytest.approx(float(((x - dq).double() ** 2).sum()), rel=1e-12)
    assert counts["underflow"] == float(((x != 0) & (dq == 0)).sum())
    assert counts["saturated"] == 0.0  # current scaling with a margin never clamps


def test_merge_of_parts_equals_the_whole():
    x = torch.randn(100, generator=torch.Generator().manual_seed(1)) * 100
    x[:10] = 1e-7
    scale = torch.tensor(2.0)
    whole = stats.measure(x, scale, E4M3)
    parts = stats.merge(stats.measure(x[:37], scale, E4M3), stats.measure(x[37:], scale, E4M3))
    assert torch.allclose(parts, whole, rtol=1e-12, atol=0)
    assert stats.merge_lists(stats.measure(x[:37], scale, E4M3).tolist(),
                             stats.measure(x[37:], scale, E4M3).tolist()) == pytest.approx(whole.tolist(), rel=1e-12)


def test_recorder_is_off_until_started():
    rec = stats.StatsRecorder()
    assert not rec.active and rec.stop() == {}
    rec.start()
    rec.record("a.input", torch.tensor([896.0, 1.0]), torch.tensor(1.0), E4M3)
    rec.record("a.input", torch.tensor([1.0, 1.0]), torch.tensor(1.0), E4M3)  # a second micro-batch
    table = rec.stop()
    assert not rec.active and list(table) == ["a.input"]
    assert stats.summarize(table["a.input"])["saturation"] == 0.25
    assert stats.role_of("decoder.layers.0.mlp.linear_fc1.weight.exp_avg") == "exp_avg"


def test_blockwise_tiles_each_get_their_own_scale():
    # two 1x128 tiles: 2^-20 beside 1.0 underflows (tile scale 2^8), alone in its tile it is exact (2^28)
    x = torch.zeros(1, 256)
    x[0, 0], x[0, 1], x[0, 128] = 1.0, 2.0 ** -20, 2.0 ** -20
    q = BlockwiseFp8Tensor.quantize(x, TILE_1x128, E4M3)
    f = stats.summarize(stats.measure(x, 1.0 / q.element_scale_inv(), E4M3))
    assert f["underflow"] == pytest.approx(1 / 3, rel=1e-12) and f["saturation"] == 0.0
    assert f["scale_exp"] == 8 and f["amax"] == 1.0
    assert f["rel_error"] == pytest.approx(2.0 ** -20 / math.sqrt(1 + 2 * 2.0 ** -40), rel=1e-12)
    assert torch.equal(q.dequantize()[0, 128], x[0, 128]) and q.dequantize()[0, 1] == 0
