"""The decoded CPU FP8 GEMM (decode to float32, ``torch.mm``, scales after) against ``torch._scaled_mm``.

FP8 x FP8 products are exact in float32 and the scales are powers of two, so the two may differ only in
float32 summation order. Tolerance: two orders of the same K-term sum each lie within (K-1) u sum|terms|
of the exact sum (u = 2^-24), so they differ by at most 2 K u (|A| @ |B|^T) elementwise; a BF16 output
may then round one BF16 ulp apart (2^-8 relative). Where every partial sum is itself exact (small
integer values), the results must be bit-identical. Shapes are odd and small: ``_scaled_mm`` on CPU
is a slow reference loop.
"""

import pytest
import torch

from megatron_fp8.fp8 import cpu_gemm, gemm, gemm_rules
from megatron_fp8.fp8.blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3, E5M2
from megatron_fp8.fp8.tensor import Fp8Tensor

U = 2.0 ** -24


def quantized(m, k, dtype, rowwise, seed, scale=1.0):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * scale
    return Fp8Tensor.quantize_rowwise(x, dtype) if rowwise else Fp8Tensor.quantize_current(x, dtype)


def bound(a_deq, b_deq, k):
    return 2 * max(k, 1) * U * (a_deq.abs() @ b_deq.abs().t())


def run(path, monkeypatch, fn, *args):
    monkeypatch.setenv(cpu_gemm.ENV, path)
    return fn(*args)


@pytest.mark.parametrize("m,k,n", [(7, 33, 5), (1, 1, 1), (3, 130, 9)])
@pytest.mark.parametrize("a_dtype,b_dtype,rowwise", [(E4M3, E4M3, False), (E5M2, E4M3, False),
                                                     (E5M2, E5M2, True), (E4M3, E5M2, True)])
def test_decoded_matches_scaled_mm_up_to_summation_order(monkeypatch, m, k, n, a_dtype, b_dtype, rowwise):
    a = quantized(m, k, a_dtype, rowwise, seed=1, scale=3.0)
    b = quantized(n, k, b_dtype, rowwise, seed=2, scale=0.02)
    for out_dtype in (torch.float32, torch.bfloat16):
        ref = run("scaled_mm", monkeypatch, gemm.fp8_gemm, a, b, out_dtype)
        out = run("decode", monkeypatch, gemm.fp8_gemm, a, b, out_dtype)
        assert out.dtype == ref.dtype == out_dtype and out.shape == (m, n)
        tol = bound(a.dequantize(), b.dequantize(), k)
        if out_dtype == torch.bfloat16:
            tol = tol + 2.0 ** -8 * ref.float().abs()
        assert ((out.float() - ref.float()).abs() <= tol).all(), (out, ref)


def test_empty_m(monkeypatch):
    a, b = quantized(0, 8, E4M3, False, 1), quantized(4, 8, E5M2, False, 2)
    ref = run("scaled_mm", monkeypatch, gemm.fp8_gemm, a, b)
    out = run("decode", monkeypatch, gemm.fp8_gemm, a, b)
    assert out.shape == ref.shape == (0, 4)


@pytest.mark.parametrize("rowwise", [False, True])
def test_exact_sums_are_bit_identical(monkeypatch, rowwise):
    """Small integers times power-of-two scales: every partial sum is exact, so any order gives the same bits."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-4, 5, (9, 37), generator=gen).float()
    b = torch.randint(-4, 5, (6, 37), generator=gen).float() * 0.25
    qa = Fp8Tensor.quantize_rowwise(a, E4M3) if rowwise else Fp8Tensor.quantize_current(a, E4M3)
    qb = Fp8Tensor.quantize_rowwise(b, E5M2) if rowwise else Fp8Tensor.quantize_current(b, E5M2)
    assert torch.equal(qa.dequantize(), a) and torch.equal(qb.dequantize(), b)  # the operands are exact
    ref = run("scaled_mm", monkeypatch, gemm.fp8_gemm, qa, qb)
    out = run("decode", monkeypatch, gemm.fp8_gemm, qa, qb)
    assert torch.equal(out, ref) and torch.equal(out, a @ b.t())


@pytest.mark.parametrize("m,k,n", [(5, 300, 3), (2, 128, 130)])
def test_blockwise_decoded_matches_chunked_scaled_mm(monkeypatch, m, k, n):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, k)  # outliers: the tile scales differ
    w = torch.randn(n, k, generator=gen) * 0.02
    a = BlockwiseFp8Tensor.quantize(x, TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(w, BLOCK_128x128, E4M3)
    ref = run("scaled_mm", monkeypatch, gemm.blockwise_gemm, a, b)
    out = run("decode", monkeypatch, gemm.blockwise_gemm, a, b)
    assert ((out - ref).abs() <= bound(a.dequantize(), b.dequantize(), k)).all()


def test_path_choice_and_env_var(monkeypatch):
    calls = []
    real = torch._scaled_mm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    a, b = quantized(4, 16, E4M3, False, 5), quantized(3, 16, E4M3, False, 6)
    for path, expected in (("auto", 0), ("decode", 0), ("scaled_mm", 1)):
        calls.clear()
        run(path, monkeypatch, gemm.fp8_gemm, a, b)
        assert len(calls) == expected, path
    monkeypatch.setenv(cpu_gemm.ENV, "auto")
    monkeypatch.setattr(gemm_rules, "FORCED", gemm_rules.CUBLASLT)  # CUDA's rules emulated: _scaled_mm runs
    assert not cpu_gemm.use_decode(torch.device("cpu"))
    monkeypatch.setattr(gemm_rules, "FORCED", None)
    assert cpu_gemm.use_decode(torch.device("cpu")) and not cpu_gemm.use_decode(torch.device("meta"))
    monkeypatch.setenv(cpu_gemm.ENV, "bf16-please")
    with pytest.raises(ValueError, match=cpu_gemm.ENV):
        gemm.fp8_gemm(a, b)


# Shapes large enough for the kernel's multi-threaded path (>= 2^20 multiply-adds), odd in every
# dimension, splitting N (n >= m) and M (m > n); K crosses several 128-blocks with a ragged last one.
THREADED = [(67, 301, 131), (203, 263, 59)]


def _tensorwise_kernel(a, b, out_dtype, a_t, b_t):
    """The kernel with operands stored as given (transposed storage when asked)."""
    a_data = a.data.t().contiguous() if a_t else a.data
    b_data = b.data.t().contiguous() if b_t else b.data
    return gemm.fp8_gemm(Fp8Tensor(a_data, a.scale_inv), Fp8Tensor(b_data, b.scale_inv), out_dtype, a_t, b_t)


@pytest.mark.parametrize("m,k,n", THREADED)
@pytest.mark.parametrize("a_t,b_t", [(False, False), (False, True), (True, True), (True, False)])
def test_transposed_storage_matches_scaled_mm(monkeypatch, m, k, n, a_t, b_t):
    """Operands stored [K, rows] (the FP8 linear's dgrad and wgrad on CPU) read through the GEMM's flags."""
    a = quantized(m, k, E5M2, False, seed=7, scale=3.0)
    b = quantized(n, k, E4M3, False, seed=8, scale=0.02)
    ref = run("scaled_mm", monkeypatch, gemm.fp8_gemm, a, b)
    monkeypatch.setenv(cpu_gemm.ENV, "decode")
    tol = bound(a.dequantize(), b.dequantize(), k)
    for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = _tensorwise_kernel(a, b, out_dtype, a_t, b_t)
        assert out.dtype == out_dtype and out.shape == (m, n)
        # BF16/FP16 outputs: the float32 results differ within tol, then each rounds (half an ulp each way).
        rel = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[out_dtype]
        assert ((out.float() - ref).abs() <= tol + rel * ref.abs()).all()
    if a_t or b_t:  # elsewhere (or with CUDA's rules forced) the transpose is made first: same result
        monkeypatch.setattr(gemm_rules, "FORCED", gemm_rules.CUBLASLT)
        assert not cpu_gemm.use_decode(torch.device("cpu"))


@pytest.mark.parametrize("m,k,n", THREADED)
def test_threaded_rowwise_and_tensorwise_match_scaled_mm(monkeypatch, m, k, n):
    for rowwise in (False, True):
        a = quantized(m, k, E4M3, rowwise, seed=9, scale=5.0)
        b = quantized(n, k, E5M2, rowwise, seed=10, scale=0.01)
        ref = run("scaled_mm", monkeypatch, gemm.fp8_gemm, a, b)
        out = run("decode", monkeypatch, gemm.fp8_gemm, a, b)
        assert ((out - ref).abs() <= bound(a.dequantize(), b.dequantize(), k)).all()


@pytest.mark.parametrize("m,k,n", THREADED)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_threaded_blockwise_matches_chunked_scaled_mm(monkeypatch, m, k, n, out_dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-3, 3, k)
    w = torch.randn(n, k, generator=gen) * torch.logspace(1, -2, k) * 0.02
    a = BlockwiseFp8Tensor.quantize(x, TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(w, BLOCK_128x128, E4M3)
    ref = run("scaled_mm", monkeypatch, gemm.blockwise_gemm, a, b, out_dtype)
    out = run("decode", monkeypatch, gemm.blockwise_gemm, a, b, out_dtype)
    tol = bound(a.dequantize(), b.dequantize(), k)
    if out_dtype == torch.bfloat16:
        tol = tol + 2.0 ** -8 * ref.float().abs()
    assert out.dtype == out_dtype and ((out.float() - ref.float()).abs() <= tol).all()


def test_kernel_matches_reference_and_propagates_nan_scales():
    """The csrc kernel against its pure-torch reference, including an overflow marked by a NaN scale_inv
    (what ``_scaled_mm`` and the previous decoded path give: NaN everywhere) and an empty K (zeros)."""
    from megatron_fp8.fp8 import kernels, reference

    a = quantized(130, 257, E4M3, False, seed=12)
    b = quantized(70, 257, E4M3, False, seed=13)
    for scaling, sa, sb in (("tensorwise", a.scale_inv, b.scale_inv),
                            ("rowwise", torch.rand(130, 1) + 0.5, torch.rand(1, 70) + 0.5)):
        got = kernels.fp8_gemm(a.data, b.data, sa, sb, scaling, torch.float32)
        want = reference.fp8_gemm(a.data, b.data, sa, sb, scaling, torch.float32)
        assert ((got - want).abs() <= bound(a.data.float(), b.data.float(), 257) * sa.max() * sb.max()).all()
    nan = torch.tensor(float("nan"))
    assert kernels.fp8_gemm(a.data, b.data, nan, b.scale_inv, "tensorwise", torch.float32).isnan().all()
    empty = kernels.fp8_gemm(a.data[:, :0], b.data[:, :0], a.scale_inv, b.scale_inv, "tensorwise", torch.bfloat16)
    assert empty.dtype == torch.bfloat16 and empty.shape == (130, 70) and (empty == 0).all()
    with pytest.raises(RuntimeError, match="inner dimensions"):
        kernels.fp8_gemm(a.data, b.data[:, :5], a.scale_inv, b.scale_inv, "tensorwise", torch.float32)


def test_workspace_reuse_and_concurrent_callers():
    """The decoded operands live in a workspace kept per calling thread: a smaller GEMM after a larger
    one, and GEMMs from two Python threads at once, give the results of each GEMM alone."""
    import threading

    from megatron_fp8.fp8 import kernels

    pairs = [(quantized(m, k, E4M3, False, seed=20 + m), quantized(n, k, E4M3, False, seed=30 + n))
             for m, k, n in ((300, 280, 200), (40, 96, 33), (90, 400, 250))]

    def gemm_of(pair):
        a, b = pair
        return kernels.fp8_gemm(a.data, b.data, a.scale_inv, b.scale_inv, "tensorwise", torch.float32)

    alone = [gemm_of(p) for p in pairs]
    assert all(torch.equal(gemm_of(p), want) for p, want in zip(pairs, alone))  # same order: same bits
    results, errors = {}, []

    def worker(tid):
        try:
            for rep in range(4):
                for i, p in enumerate(pairs):
                    results[(tid, rep, i)] = gemm_of(p)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (_, _, i), got in results.items():
        assert torch.equal(got, alone[i])


# The per-block GEMM's arithmetic: torch's float32 BLAS, or BF16 dot-product units (csrc/cpu/gemm_bf16.cpp,
# AVX-512-BF16). Both form exact products of the decoded values and sum them in float32, so each lies
# within the summation-order bound of the reference. Shapes cross the BF16 kernel's edges: K odd (a zero
# pad in the last pair), K below and above its 32-wide packing step, M not a multiple of its 8-row tile,
# N not a multiple of its 32-column tile, and both storage orders of each operand.
def _dots():
    from megatron_fp8.fp8 import kernels

    bf16 = pytest.param("bf16", marks=pytest.mark.skipif(
        not kernels.bf16_dot_available(), reason="no AVX-512-BF16 on this CPU (or the extension not built for it)"))
    return ["fp32", bf16]


@pytest.mark.parametrize("dot", _dots())
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (9, 3, 33), (17, 31, 65), (8, 64, 32), (67, 301, 131), (203, 263, 59)])
@pytest.mark.parametrize("a_t,b_t", [(False, False), (False, True), (True, True), (True, False)])
def test_each_dot_path_matches_the_reference(dot, m, k, n, a_t, b_t):
    from megatron_fp8.fp8 import kernels, reference

    a = quantized(m, k, E5M2, False, seed=40, scale=3.0)
    b = quantized(n, k, E4M3, False, seed=41, scale=0.02)
    a_data = a.data.t().contiguous() if a_t else a.data
    b_data = b.data.t().contiguous() if b_t else b.data
    tol = bound(a.dequantize(), b.dequantize(), k)
    rs_a, rs_b = torch.rand(m, 1) + 0.5, torch.rand(1, n) + 0.5
    for scaling, sa, sb, t in (("tensorwise", a.scale_inv, b.scale_inv, tol),
                               ("rowwise", a.scale_inv * rs_a, b.scale_inv * rs_b, tol * rs_a * rs_b)):
        got = kernels.fp8_gemm(a_data, b_data, sa, sb, scaling, torch.float32, a_t, b_t, dot=dot)
        want = reference.fp8_gemm(a_data, b_data, sa, sb, scaling, torch.float32, a_t, b_t)
        assert got.shape == (m, n) and ((got - want).abs() <= t * 1.0001).all(), (scaling, (got - want).abs().max())


@pytest.mark.parametrize("dot", _dots())
def test_each_dot_path_blockwise_and_exact_sums(dot):
    """Block scales applied while decoding give BF16-exact values too; where every partial sum is exact
    (small integers) both paths give the reference bit for bit; a NaN operand gives NaN in its row."""
    from megatron_fp8.fp8 import kernels, reference

    m, k, n = 37, 300, 45
    gen = torch.Generator().manual_seed(42)
    a = BlockwiseFp8Tensor.quantize(torch.randn(m, k, generator=gen) * torch.logspace(-2, 2, k), TILE_1x128, E4M3)
    b = BlockwiseFp8Tensor.quantize(torch.randn(n, k, generator=gen) * 0.02, BLOCK_128x128, E4M3)
    got = kernels.fp8_gemm(a.data, b.data, a.row_scales(), b.row_scales(), "block", torch.float32, dot=dot)
    want = reference.fp8_gemm(a.data, b.data, a.row_scales(), b.row_scales(), "block", torch.float32)
    assert ((got - want).abs() <= bound(a.dequantize(), b.dequantize(), k)).all()

    ints_a = torch.randint(-4, 5, (m, k), generator=gen).float().to(torch.float8_e4m3fn)
    ints_b = torch.randint(-4, 5, (n, k), generator=gen).float().to(torch.float8_e4m3fn)
    one = torch.ones(1)
    got = kernels.fp8_gemm(ints_a, ints_b, one, one, "tensorwise", torch.float32, dot=dot)
    assert torch.equal(got, ints_a.float() @ ints_b.float().t())

    ints_a[5, 7] = float("nan")
    got = kernels.fp8_gemm(ints_a, ints_b, one, one, "tensorwise", torch.float32, dot=dot)
    assert got[5].isnan().all() and not got[torch.arange(m) != 5].isnan().any()


def test_dot_choice_is_validated(monkeypatch):
    from megatron_fp8.fp8 import kernels

    a, b = quantized(4, 8, E4M3, False, 1), quantized(3, 8, E4M3, False, 2)
    with pytest.raises(RuntimeError, match="dot must be"):
        kernels.fp8_gemm(a.data, b.data, a.scale_inv, b.scale_inv, "tensorwise", torch.float32, dot="int8")
    monkeypatch.setenv(cpu_gemm.DOT_ENV, "fp16")
    with pytest.raises(ValueError, match=cpu_gemm.DOT_ENV):
        gemm.fp8_gemm(a, b)
    for value in ("fp32", "auto"):
        monkeypatch.setenv(cpu_gemm.DOT_ENV, value)
        assert cpu_gemm.dot_path() == value and gemm.fp8_gemm(a, b).shape == (4, 3)
    if not kernels.bf16_dot_available():
        with pytest.raises(RuntimeError, match="AVX-512-BF16"):
            kernels.fp8_gemm(a.data, b.data, a.scale_inv, b.scale_inv, "tensorwise", torch.float32, dot="bf16")
