"""FP8 GEMMs through ``torch._scaled_mm`` on the GPU under cuBLASLt's real rules: every shape the model can
produce (dimensions that are not multiples of 16, empty M, K below 16), both FP8 pairs cuBLASLt has,
tensorwise and rowwise scaling, BF16 and FP32 outputs, and blockwise tiles, all without a single
dequantize fallback; E5M2 x E5M2 is refused by name. Tolerances: tests/fp8/test_gemm_rules.py's
``gemm_rtol`` (FP8 products are exact; Hopper's tensor cores accumulate partial sums in reduced precision
before cuBLASLt promotes them to float32)."""

import pytest
import torch

from megatron_fp8.fp8 import gemm
from megatron_fp8.fp8.blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3, E5M2

from ..fp8.test_gemm_rules import GEMM_CASES, assert_matches_dequantized, gemm_rtol, operands

pytestmark = pytest.mark.gpu


@pytest.fixture
def no_fallback():
    gemm.FALLBACKS.reset()
    gemm._refused.clear()
    yield
    assert gemm.FALLBACKS.total() == 0, f"fell back to dequantize+matmul: {gemm.FALLBACKS.reasons}"


@pytest.mark.parametrize("shape,rowwise,out_dtype", GEMM_CASES + [((4096, 1024, 3072), False, torch.bfloat16),
                                                                  ((1000, 1000, 1000), True, torch.bfloat16)])
@pytest.mark.parametrize("a_dtype,b_dtype", [(E4M3, E4M3), (E5M2, E4M3), (E4M3, E5M2)])
def test_fp8_gemm_on_cuda(no_fallback, shape, rowwise, out_dtype, a_dtype, b_dtype):
    a, b = operands(*shape, a_dtype, b_dtype, rowwise, device="cuda")
    out = gemm.fp8_gemm(a, b, out_dtype)
    assert out.device.type == "cuda"
    assert_matches_dequantized(out, a, b, out_dtype)


@pytest.mark.parametrize("m,k,n", [(40, 200, 24), (7, 130, 9), (129, 256, 130), (512, 1024, 768)])
def test_blockwise_gemm_on_cuda(no_fallback, m, k, n):
    a = BlockwiseFp8Tensor.quantize(torch.randn(m, k, device="cuda") * 2, TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(torch.randn(n, k, device="cuda") * 0.1, BLOCK_128x128, E4M3)
    out = gemm.blockwise_gemm(a, b)
    want = a.dequantize() @ b.dequantize().t()
    rtol = gemm_rtol(torch.float32, "cuda")
    torch.testing.assert_close(out, want, rtol=rtol, atol=rtol * want.abs().max().item())


def test_e5m2_pair_refused_by_name_on_cuda(no_fallback):
    a, b = operands(32, 32, 32, E5M2, E5M2, rowwise=False, device="cuda")
    with pytest.raises(ValueError, match="E5M2 x E5M2"):
        gemm.fp8_gemm(a, b)


def test_fp8_gemm_uses_fp8_tensor_cores_not_a_dequantized_copy(no_fallback):
    """The GEMM allocates no float32 copy of its operands (the fallback would: 4 bytes per element)."""
    a, b = operands(4096, 4096, 4096, E4M3, E4M3, rowwise=False, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = gemm.fp8_gemm(a, b, torch.bfloat16)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    # output 32 MiB + cuBLASLt workspace; the fallback would hold two float32 copies per operand (256 MiB)
    assert extra < 128 * 2**20, f"{extra} bytes beyond the inputs: a dequantized copy was made"
    del out
