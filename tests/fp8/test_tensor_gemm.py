"""Fp8Tensor, blockwise scaling and the FP8 GEMMs.

The GEMMs are checked against float32 matmuls of the *dequantized* operands: FP8 values times
power-of-two scales are exact in float32, so the only difference allowed is float32 summation order
(relative 1e-5 on K <= 512 is ~100x the unit roundoff 6e-8 times sqrt(K)).
"""

import pytest
import torch

from megatron_fp8.fp8.blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3, E5M2
from megatron_fp8.fp8.gemm import blockwise_gemm, fp8_gemm
from megatron_fp8.fp8.tensor import Fp8Tensor

GEMM_RTOL = 1e-5


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_dequantize_within_half_ulp():
    x = torch.randn(1000) * 5
    q = Fp8Tensor.quantize_current(x, E4M3)
    assert q.data.dtype == E4M3 and q.scale_inv.dim() == 0
    # E4M3 keeps 3 mantissa bits: round-to-nearest error <= 2^-4 of the value (normal range).
    err = (q.dequantize() - x).abs()
    normal = x.abs() * (1.0 / q.scale_inv) >= 2.0 ** -6
    assert (err[normal] <= x.abs()[normal] * 2.0 ** -4 + 1e-12).all()
    assert q.amax.item() == x.abs().max().item()


def test_uint8_view_round_trip_and_transpose():
    x = torch.randn(7, 13)
    q = Fp8Tensor.quantize_current(x, E5M2)
    raw = q.as_uint8()
    assert raw.dtype == torch.uint8 and raw.data_ptr() == q.data.data_ptr()
    back = Fp8Tensor.from_uint8(raw.clone(), E5M2, q.scale_inv)
    assert torch.equal(back.dequantize(), q.dequantize())
    assert torch.equal(q.t().dequantize(), q.dequantize().t())
    assert q.t().data.is_contiguous()


@pytest.mark.parametrize("m,k,n", [(16, 32, 48), (37, 200, 19), (64, 512, 128)])
@pytest.mark.parametrize("a_dtype", [E4M3, E5M2])
def test_tensorwise_gemm_matches_dequantized_matmul(m, k, n, a_dtype):
    a = Fp8Tensor.quantize_current(torch.randn(m, k) * 3, a_dtype)
    b = Fp8Tensor.quantize_current(torch.randn(n, k) * 0.02, E4M3)
    out = fp8_gemm(a, b)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert rel(out, a.dequantize() @ b.dequantize().t()) < GEMM_RTOL


def test_rowwise_gemm_matches_dequantized_matmul():
    a_hp = torch.randn(40, 96) * torch.logspace(-3, 3, 40)[:, None]  # rows of very different magnitude
    b_hp = torch.randn(24, 96)
    a, b = Fp8Tensor.quantize_rowwise(a_hp, E4M3), Fp8Tensor.quantize_rowwise(b_hp, E4M3)
    assert a.scale_inv.shape == (40, 1)
    assert rel(fp8_gemm(a, b), a.dequantize() @ b.dequantize().t()) < GEMM_RTOL
    # rowwise keeps every row well resolved; tensorwise flushes the small rows towards zero
    ta, tb = Fp8Tensor.quantize_current(a_hp, E4M3), Fp8Tensor.quantize_current(b_hp, E4M3)
    exact = a_hp @ b_hp.t()
    assert rel(fp8_gemm(a, b)[:5], exact[:5]) < rel(fp8_gemm(ta, tb)[:5], exact[:5])


def test_bf16_output():
    a = Fp8Tensor.quantize_current(torch.randn(16, 32), E4M3)
    b = Fp8Tensor.quantize_current(torch.randn(16, 32), E4M3)
    out = fp8_gemm(a, b, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert rel(out, a.dequantize() @ b.dequantize().t()) < 2.0 ** -8  # one bf16 rounding


def test_mismatched_operands_raise():
    a = Fp8Tensor.quantize_current(torch.randn(4, 8), E4M3)
    with pytest.raises(ValueError, match="inner dimensions"):
        fp8_gemm(a, Fp8Tensor.quantize_current(torch.randn(4, 9), E4M3))
    with pytest.raises(ValueError, match="rowwise"):
        fp8_gemm(a, Fp8Tensor.quantize_rowwise(torch.randn(4, 8), E4M3))


@pytest.mark.parametrize("shape", [(3, 128), (130, 300), (256, 256)])
@pytest.mark.parametrize("block", [TILE_1x128, BLOCK_128x128])
def test_blockwise_round_trip_per_tile_scales(shape, block):
    x = torch.randn(shape)
    q = BlockwiseFp8Tensor.quantize(x, block, E4M3)
    rows_b, cols_b = -(-shape[0] // block[0]), -(-shape[1] // block[1])
    assert q.scale_inv.shape == (rows_b, cols_b) and q.data.shape == shape
    err = (q.dequantize() - x).abs()
    assert (err <= x.abs() * 2.0 ** -4 + 2.0 ** -9 * q.scale_inv.max()).all()


def test_blockwise_error_lower_than_tensorwise_with_outliers():
    torch.manual_seed(0)
    x = torch.randn(256, 512) * 0.003
    x[3, 7] = 300.0  # one outlier: a tensorwise scale must cover it and pushes the rest into denormals
    x[200, 400] = -150.0
    tensorwise = rel(Fp8Tensor.quantize_current(x, E4M3).dequantize(), x)
    for block in (TILE_1x128, BLOCK_128x128):
        blockwise = rel(BlockwiseFp8Tensor.quantize(x, block, E4M3).dequantize(), x)
        assert blockwise < tensorwise
    # on the entries away from the outliers the gap is large
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[3, :128] = mask[200, 384:] = False  # the two 1x128 tiles holding an outlier
    t_err = (Fp8Tensor.quantize_current(x, E4M3).dequantize() - x)[mask].norm() / x[mask].norm()
    b_err = (BlockwiseFp8Tensor.quantize(x, TILE_1x128, E4M3).dequantize() - x)[mask].norm() / x[mask].norm()
    assert b_err < t_err / 4


@pytest.mark.parametrize("m,k,n", [(8, 128, 16), (33, 300, 70), (64, 512, 256)])
def test_blockwise_gemm_matches_dequantized_matmul(m, k, n):
    a = BlockwiseFp8Tensor.quantize(torch.randn(m, k), TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(torch.randn(n, k) * 0.05, BLOCK_128x128, E4M3)
    assert rel(blockwise_gemm(a, b), a.dequantize() @ b.dequantize().t()) < GEMM_RTOL
    b_tiles = BlockwiseFp8Tensor.quantize(torch.randn(n, k), TILE_1x128, E5M2)
    assert rel(blockwise_gemm(a, b_tiles), a.dequantize() @ b_tiles.dequantize().t()) < GEMM_RTOL


def test_fallback_when_scaled_mm_refuses(monkeypatch, caplog):
    from megatron_fp8.fp8 import cpu_gemm, gemm

    monkeypatch.setenv(cpu_gemm.ENV, "scaled_mm")  # the CPU's own decoded path would never ask _scaled_mm

    def refuse(*args, **kwargs):
        raise RuntimeError("shape not supported")

    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    monkeypatch.setattr(gemm, "_refused", {})
    a = Fp8Tensor.quantize_current(torch.randn(5, 7), E4M3)
    b = Fp8Tensor.quantize_current(torch.randn(3, 7), E4M3)
    with caplog.at_level("WARNING"):
        out = fp8_gemm(a, b)
        fp8_gemm(a, b)
    assert rel(out, a.dequantize() @ b.dequantize().t()) < GEMM_RTOL
    assert sum("refused" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("shape", [(0, 16), (5, 0), (0, 0)])
def test_rowwise_quantization_of_empty_tensors(shape):
    """An empty shard (e.g. a TP rank's zero rows) quantizes to an empty payload with amax 0, as the
    tensorwise path does, instead of failing in the amax reduction."""
    t = Fp8Tensor.quantize_rowwise(torch.zeros(shape), torch.float8_e4m3fn)
    assert t.data.shape == shape and t.data.dtype == torch.float8_e4m3fn
    assert t.scale_inv.shape == (shape[0], 1) and float(t.amax) == 0.0
