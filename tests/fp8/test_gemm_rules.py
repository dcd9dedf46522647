"""The FP8 GEMM under cuBLASLt's rules, run on CPU: every ``_scaled_mm`` call obeys the rules (checked by
a spy in front of the real op), results equal the unpadded GEMM, E5M2 x E5M2 is refused by name, and the
dequantize fallback takes only ``_scaled_mm``'s own refusals, counted per shape and shown in the log.

Tolerances: FP8 products are exact in float32, and zero padding adds exact zeros, so padded and unpadded
GEMMs differ only in float32 summation order (relative 1e-5, as in test_tensor_gemm.py); BF16 outputs
may then round one BF16 ulp apart (2^-8 relative).
"""

import json

import pytest
import torch

from megatron_fp8.fp8 import gemm, gemm_rules
from megatron_fp8.fp8.blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3, E5M2
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.metrics import MetricsLogger

REAL_SCALED_MM = torch._scaled_mm
# (M, K, N): aligned, every dimension odd, K below 16, the model's wgrad with K = tokens (seq 24 x 3), empty M
SHAPES = [(32, 64, 48), (5, 10, 7), (3, 1, 1), (33, 72, 17), (72, 72, 288), (0, 16, 16)]


def legal_under_cublaslt(a, b, scale_a=None, scale_b=None, out_dtype=None, **kw):
    """The spy: assert cuBLASLt's rules for this call, then run the real op."""
    assert a.is_contiguous() and b.t().is_contiguous(), "mat1 row-major, mat2 column-major"
    assert a.shape[1] % 16 == 0 and b.shape[0] % 16 == 0 and b.shape[1] % 16 == 0, (a.shape, b.shape)
    assert scale_a.dtype == scale_b.dtype == torch.float32
    assert not (a.dtype == E5M2 and b.dtype == E5M2)
    if scale_a.numel() == 1 and scale_b.numel() == 1:
        assert scale_a.numel() == scale_b.numel() == 1
    else:
        assert scale_a.shape == (a.shape[0], 1) and scale_b.shape == (1, b.shape[1]), (scale_a.shape, scale_b.shape)
        assert scale_a.is_contiguous() and scale_b.is_contiguous() and out_dtype == torch.bfloat16
    return REAL_SCALED_MM(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype, **kw)


@pytest.fixture
def fresh_fallbacks():
    gemm.FALLBACKS.reset()
    gemm._refused.clear()
    yield gemm.FALLBACKS
    gemm.FALLBACKS.reset()
    gemm._refused.clear()


@pytest.fixture
def cublaslt(monkeypatch, fresh_fallbacks):
    """CUDA's rules on CPU, with every ``_scaled_mm`` call checked against them."""
    monkeypatch.setattr(gemm_rules, "FORCED", gemm_rules.CUBLASLT)
    monkeypatch.setattr(torch, "_scaled_mm", legal_under_cublaslt)
    return fresh_fallbacks


def operands(m, k, n, a_dtype, b_dtype, rowwise, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    a_hp = (torch.randn(m, k, generator=gen) * 3).to(device)
    b_hp = (torch.randn(n, k, generator=gen) * 0.02).to(device)
    if rowwise:
        return Fp8Tensor.quantize_rowwise(a_hp, a_dtype), Fp8Tensor.quantize_rowwise(b_hp, b_dtype)
    return Fp8Tensor.quantize_current(a_hp, a_dtype), Fp8Tensor.quantize_current(b_hp, b_dtype)


def gemm_rtol(out_dtype, device) -> float:
    """CPU: float32 summation order only (module docstring). CUDA: Hopper's FP8 tensor cores keep about 14
    bits of a partial sum before cuBLASLt promotes it to float32 (DeepSeek-V3 report, section 3.3.2), so
    2^-10 relative; BF16 outputs one BF16 ulp (2^-8) on top."""
    exact = 1e-5 if torch.device(device).type == "cpu" else 2.0 ** -10
    return exact if out_dtype == torch.float32 else 2.0 ** -8 + exact


def assert_matches_dequantized(out, a, b, out_dtype):
    """``out`` against the float32 matmul of the dequantized operands, to :func:`gemm_rtol`."""
    want = a.dequantize() @ b.dequantize().t()
    assert out.shape == want.shape and out.dtype == out_dtype
    if want.numel():
        rtol = gemm_rtol(out_dtype, out.device)
        torch.testing.assert_close(out.float(), want, rtol=rtol, atol=rtol * want.abs().max().item())


# rowwise scaling of an empty operand is not defined (Fp8Tensor.quantize_rowwise needs a row)
GEMM_CASES = [(shape, rowwise, out_dtype) for shape in SHAPES
              for rowwise, out_dtype in ((False, torch.float32), (False, torch.bfloat16), (True, torch.bfloat16),
                                         (True, torch.float32)) if shape[0] or not rowwise]


@pytest.mark.parametrize("shape,rowwise,out_dtype", GEMM_CASES)
@pytest.mark.parametrize("a_dtype,b_dtype", [(E4M3, E4M3), (E5M2, E4M3), (E4M3, E5M2)])
def test_padded_gemm_equals_unpadded(cublaslt, shape, rowwise, out_dtype, a_dtype, b_dtype):
    a, b = operands(*shape, a_dtype, b_dtype, rowwise)
    out = gemm.fp8_gemm(a, b, out_dtype)
    assert out.is_contiguous()
    assert_matches_dequantized(out, a, b, out_dtype)
    assert cublaslt.total() == 0


@pytest.mark.parametrize("m,k,n", [(40, 200, 24), (7, 130, 9), (129, 256, 130)])
def test_blockwise_gemm_under_cublaslt_rules(cublaslt, m, k, n):
    """Blockwise GEMMs are rowwise GEMMs per 128-wide K slice with a float32 output: the epilogue route."""
    a = BlockwiseFp8Tensor.quantize(torch.randn(m, k) * 2, TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(torch.randn(n, k) * 0.1, BLOCK_128x128, E4M3)
    out = gemm.blockwise_gemm(a, b)
    want = a.dequantize() @ b.dequantize().t()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert cublaslt.total() == 0


def test_e5m2_pair_is_refused_by_name(cublaslt):
    a, b = operands(16, 32, 16, E5M2, E5M2, rowwise=False)
    with pytest.raises(ValueError, match="E5M2 x E5M2"):
        gemm.fp8_gemm(a, b)
    assert cublaslt.total() == 0  # refused loudly, not sent to the fallback


def test_cpu_rules_leave_operands_alone(monkeypatch, fresh_fallbacks):
    """On CPU ``_scaled_mm`` takes any shape, so nothing is padded (the op sees the caller's tensors)."""
    seen = []

    def spy(a, b, **kw):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return REAL_SCALED_MM(a, b, **kw)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    a, b = operands(5, 10, 7, E5M2, E5M2, rowwise=True)
    assert_matches_dequantized(gemm.fp8_gemm(a, b), a, b, torch.float32)
    assert seen == [((5, 10), (10, 7))]


def refusing(message, exc=RuntimeError):
    def op(*args, **kwargs):
        raise exc(message)
    return op


@pytest.mark.parametrize("message", [
    "Expected trailing dimension of mat1 to be divisible by 16 but got mat1 shape: (5x10).",
    "torch._scaled_mm is only supported on CUDA devices with compute capability >= 9.0 or 8.9, or ROCm MI300+",
    "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasLtMatmul( ltHandle, computeDesc.descriptor(), ...`",
    "Only bf16 high precision output types are supported for row-wise scaling."])
def test_refusals_fall_back_counted_per_shape(monkeypatch, fresh_fallbacks, message):
    monkeypatch.setattr(torch, "_scaled_mm", refusing(message))
    a, b = operands(5, 10, 7, E4M3, E4M3, rowwise=False)
    c, d = operands(3, 10, 2, E4M3, E5M2, rowwise=False)
    for _ in range(3):
        assert_matches_dequantized(gemm.fp8_gemm(a, b), a, b, torch.float32)
    assert_matches_dequantized(gemm.fp8_gemm(c, d), c, d, torch.float32)
    counts = fresh_fallbacks.snapshot()
    assert counts == {"e4m3fn[5x10] @ e4m3fn[7x10].T tensorwise -> float32 on cpu": 3,
                      "e4m3fn[3x10] @ e5m2[2x10].T tensorwise -> float32 on cpu": 1}
    assert all(reason == message.splitlines()[0] for reason in fresh_fallbacks.reasons.values())


@pytest.mark.parametrize("error", [
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)("CUDA out of memory. Tried to allocate 2 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasLtMatmul(...)`"),
    KeyError("not a refusal at all")])
def test_other_errors_propagate(monkeypatch, fresh_fallbacks, error):
    def op(*args, **kwargs):
        raise error
    monkeypatch.setattr(torch, "_scaled_mm", op)
    a, b = operands(16, 16, 16, E4M3, E4M3, rowwise=False)
    with pytest.raises(type(error)):
        gemm.fp8_gemm(a, b)
    assert fresh_fallbacks.total() == 0


def test_cuda_fallback_is_a_warning_cpu_fallback_is_logged(fresh_fallbacks, recwarn, caplog):
    with caplog.at_level("WARNING"):
        fresh_fallbacks.record("e4m3fn[5x10] @ e4m3fn[7x10].T tensorwise -> float32 on cpu", "why",
                               torch.device("cpu"))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert any("refused e4m3fn[5x10]" in r.message for r in caplog.records)
    with pytest.warns(RuntimeWarning, match="refused e4m3fn"):
        fresh_fallbacks.record("e4m3fn[5x10] @ e4m3fn[7x10].T tensorwise -> float32 on cuda", "why",
                               torch.device("cuda"))
    fresh_fallbacks.record("e4m3fn[5x10] @ e4m3fn[7x10].T tensorwise -> float32 on cuda", "why", torch.device("cuda"))
    assert fresh_fallbacks.total() == 3 and len(fresh_fallbacks.snapshot()) == 2


def log_record():
    return {"iteration": 5, "consumed_samples": 40, "step_time_s": 0.1, "tflops": 0.0, "tokens_per_sec": 1.0,
            "lr": 1e-3, "global_batch_size": 8, "lm_loss": 4.0, "grad_norm": 1.0, "skipped_iterations": 0,
            "nan_iterations": 0, "mem": {"weights": 1024}, "comm": {}}


def test_log_line_and_json_report_fallbacks(monkeypatch, fresh_fallbacks, tmp_path):
    lines = []
    log = MetricsLogger(10, log_json=str(tmp_path / "log.jsonl"), printer=lines.append)
    log.log_iteration(log_record())
    assert "fp8 gemm fallbacks" not in lines[-1]
    monkeypatch.setattr(torch, "_scaled_mm", refusing("mat2 shape (10x7) must be divisible by 16"))
    a, b = operands(5, 10, 7, E4M3, E4M3, rowwise=False)
    gemm.fp8_gemm(a, b)
    gemm.fp8_gemm(a, b)
    log.log_iteration(log_record())
    log.close()
    assert lines[-1].endswith(" fp8 gemm fallbacks: 2 |")
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "gemm_fallbacks" not in records[0]
    assert records[1]["gemm_fallbacks"] == {"e4m3fn[5x10] @ e4m3fn[7x10].T tensorwise -> float32 on cpu": 2}
