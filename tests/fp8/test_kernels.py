"""Every csrc kernel against megatron_fp8/fp8/reference.py, bit for bit.

The kernels are compiled without FMA contraction and follow the reference's float32 operation order, so
there is no tolerance anywhere: outputs, scale_invs and amaxes must have identical bits (NaN: identical
NaN-ness; payloads are not part of the contract). Sizes cover empty tensors, single elements, vector
tails (127, 1025) and the multi-threaded path (>= 2^15 elements).
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch

from megatron_fp8.fp8 import kernels, reference
from megatron_fp8.fp8.kernels import AdamWHyper, AdamWTensors

E4M3, E5M2, F16, BF16, F32 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16, torch.float32
ALL = (F32, F16, BF16, E4M3, E5M2)
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _not_compiled() -> str | None:
    """Why the compiled kernels cannot be compared with the reference here (None: they can)."""
    try:
        return None if kernels.BACKEND != "reference" else kernels.FALLBACK_MESSAGE
    except ImportError as err:  # MEGATRON_FP8_REQUIRE_KERNELS=1 without kernels: test_backend fails
        return str(err)


NOT_COMPILED = _not_compiled()
CUDA_KERNELS = NOT_COMPILED is None and kernels.BACKEND == "csrc-cuda"
# Comparing the reference with itself proves nothing: without the extension these tests skip, saying why
# (and tests/conftest.py adds a line to the summary).
compiled = pytest.mark.skipif(NOT_COMPILED is not None, reason=f"compiled kernels not checked: {NOT_COMPILED}")


def assert_bitwise(got, want, what=""):
    """Same dtype, shape and bits (NaN-ness only for NaN)."""
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want)):
            assert_bitwise(g, w, f"{what}[{i}]")
        return
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{tuple(got.shape)} vs " \
                                                                f"{want.dtype}{tuple(want.shape)}"
    g, w = got.contiguous().view(BITS[got.element_size()]), want.contiguous().view(BITS[want.element_size()])
    if torch.equal(g, w):
        return
    g_nan, w_nan = got.float().isnan(), want.float().isnan()
    assert torch.equal(g_nan, w_nan), f"{what}: NaN positions differ"
    g, w = g[~g_nan], w[~w_nan]
    bad = (g != w).nonzero().flatten()
    assert bad.numel() == 0, f"{what}: {bad.numel()} of {g.numel()} differ, e.g. {g[bad[:4]].tolist()} vs " \
                             f"{w[bad[:4]].tolist()}"


def values(n, seed, device="cpu", specials=True, spread=12):
    """Normal values times 2^U(-spread, spread), optionally starting with inf/NaN/zeros/subnormals."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-spread, spread, (n,), generator=gen).float())
    if specials:
        sp = torch.tensor([0.0, -0.0, 1e-40, -2.0 ** -10, 448.0, -500.0, 6e4, 7e4, float("inf"),
                           -float("inf"), float("nan")])
        k = min(n, sp.numel())
        x[:k] = sp[:k]
    return x.to(device)


def stored(x, dtype):
    """x in ``dtype`` storage, clamped into range for FP8 (torch's CPU cast would give NaN above 480)."""
    return (x.clamp(-448, 448) if dtype in (E4M3, E5M2) else x).to(dtype)


def scalar(v, device="cpu"):
    return torch.tensor(v, dtype=torch.float32, device=device)


def test_backend():
    if os.environ.get("MEGATRON_FP8_REQUIRE_KERNELS") == "1":
        assert kernels.BACKEND != "reference", kernels.FALLBACK_MESSAGE
    assert kernels.BACKEND in ("csrc-cpu", "csrc-cuda", "reference")


# ---- scale_cast_amax / cast_transpose_amax ----------------------------------------------------------

# Sizes: empty, one element, vector tails; BIG takes the multi-threaded path (>= 2^15 elements).
SMALL, BIG = [0, 1, 127, 1025], 33_001
THREADED_PAIRS = [(F32, E4M3), (BF16, E5M2), (F16, F16), (E4M3, F32), (F32, BF16)]


@compiled
@pytest.mark.parametrize("n", SMALL)
@pytest.mark.parametrize("src,dst", list(itertools.product(ALL, ALL)))
def test_scale_cast_amax(src, dst, n):
    x = stored(values(n, seed=n), src)
    for s in (1.0, 2.0 ** -5, 0.75):
        assert_bitwise(kernels.scale_cast_amax(x, scalar(s), dst), reference.scale_cast_amax(x, scalar(s), dst))


@compiled
@pytest.mark.parametrize("src,dst", THREADED_PAIRS)
def test_scale_cast_amax_threaded(src, dst):
    test_scale_cast_amax(src, dst, BIG)


def test_scale_cast_amax_nan_inf_amax():
    x = torch.tensor([1.0, -float("inf"), 3.0])
    assert kernels.scale_cast_amax(x, scalar(1.0), E4M3)[1].item() == float("inf")
    x[0] = float("nan")
    assert kernels.scale_cast_amax(x, scalar(1.0), E4M3)[1].isnan()
    assert kernels.scale_cast_amax(torch.empty(0), scalar(1.0), E4M3)[1].item() == 0.0


@compiled
@pytest.mark.parametrize("n", SMALL + [BIG])
@pytest.mark.parametrize("src", ALL)
def test_amax(src, n):
    """The read-only amax (a weight's, before its cast) against reference.amax: finite values, and with
    inf/NaN among them (NaN propagates, compared as NaN)."""
    for specials in (False, True):
        x = stored(values(n, seed=n + 1, specials=specials), src)
        assert_bitwise(kernels.amax(x), reference.amax(x))
    x = stored(values(max(n, 1), seed=2, specials=False), src).reshape(-1, 1)[:, 0]  # shaped views work too
    assert_bitwise(kernels.amax(x), reference.amax(x))


@compiled
def test_scale_cast_amax_strided_and_shaped():
    x = values(6 * 50, seed=3).reshape(6, 50)[:, ::3]  # non-contiguous: copied, same values
    got = kernels.scale_cast_amax(x, scalar(4.0), E5M2)
    assert_bitwise(got, reference.scale_cast_amax(x.contiguous(), scalar(4.0), E5M2))


@compiled
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (37, 61), (64, 64), (65, 130), (130, 67), (0, 5),
                                   (300, 257)])
@pytest.mark.parametrize("src,dst", [(F32, E4M3), (F32, E5M2), (BF16, E4M3), (F16, F16), (F32, BF16),
                                     (BF16, F32), (E4M3, E5M2)])
def test_cast_transpose_amax(shape, src, dst):
    x = stored(values(shape[0] * shape[1], seed=shape[0]), src).reshape(shape)
    got = kernels.cast_transpose_amax(x, scalar(2.0), dst)
    assert_bitwise(got, reference.cast_transpose_amax(x, scalar(2.0), dst))
    assert got[1].is_contiguous() and got[1].shape == (shape[1], shape[0])


def test_cast_transpose_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        kernels.cast_transpose_amax(torch.ones(2, 3, 4), scalar(1.0), E4M3)


# ---- fp8_accumulate -----------------------------------------------------------------------------------

@compiled
@pytest.mark.parametrize("n", SMALL)
@pytest.mark.parametrize("acc_dtype", ALL)
@pytest.mark.parametrize("grad_dtype", [F32, BF16, F16, E5M2])
def test_fp8_accumulate(acc_dtype, grad_dtype, n):
    acc0 = stored(values(n, seed=1, specials=False), acc_dtype)
    ours, ours_sinv = acc0.clone(), scalar(0.5)
    ref, ref_sinv = acc0.clone(), scalar(0.5)
    for step, margin in enumerate((0, 1, 0, 2)):
        grad = stored(values(n, seed=10 + step, specials=False), grad_dtype)
        got = kernels.fp8_accumulate(ours, ours_sinv, grad, margin)
        want = reference.fp8_accumulate(ref, ref_sinv, grad, margin)
        assert_bitwise((ours, ours_sinv, got), (ref, ref_sinv, want), f"step {step}")


@compiled
@pytest.mark.parametrize("acc_dtype,grad_dtype", [(E4M3, BF16), (F16, F32), (F32, F32), (BF16, E5M2)])
def test_fp8_accumulate_threaded(acc_dtype, grad_dtype):
    test_fp8_accumulate(acc_dtype, grad_dtype, BIG)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_fp8_accumulate_keeps_scale_on_overflow(bad):
    acc = stored(values(1025, seed=2, specials=False), E4M3)
    sinv = scalar(0.25)
    grad = values(1025, seed=3, specials=False)
    grad[700] = bad
    ref_acc, ref_sinv = acc.clone(), sinv.clone()
    amax = kernels.fp8_accumulate(acc, sinv, grad)
    want = reference.fp8_accumulate(ref_acc, ref_sinv, grad)
    assert_bitwise((acc, sinv, amax), (ref_acc, ref_sinv, want))
    assert sinv.item() == 0.25  # previous scale kept
    assert amax.isnan() if bad != bad else amax.item() == float("inf")


@compiled
def test_fp8_accumulate_scale_extremes():
    """amax far below / above the format range: the exponent clamps at +-126, tiny amax -> ratio inf."""
    for magnitude in (1e-42, 1e-30, 1e30, 3e38):
        grad = torch.full((33,), magnitude)
        for dtype in (E4M3, F16, F32):
            acc, sinv = torch.zeros(33, dtype=dtype), scalar(1.0)
            ref_acc, ref_sinv = acc.clone(), sinv.clone()
            got = kernels.fp8_accumulate(acc, sinv, grad, 3)
            want = reference.fp8_accumulate(ref_acc, ref_sinv, grad, 3)
            assert_bitwise((acc, sinv, got), (ref_acc, ref_sinv, want))


# ---- sum_shards ---------------------------------------------------------------------------------------

@compiled
@pytest.mark.parametrize("shape", [(1, 0), (1, 1), (3, 127), (5, 1025), (2, 3, 7), (2, 17_000)])
@pytest.mark.parametrize("src", [E4M3, E5M2, F16, F32, BF16])
@pytest.mark.parametrize("dst", ALL)
def test_sum_shards(shape, src, dst):
    shards = stored(values(shape[0] * int(torch.tensor(shape[1:]).prod()), seed=4), src).reshape(shape)
    sinv = torch.exp2(torch.arange(shape[0], dtype=torch.float32) - 2)
    for factor, margin, prev in ((1.0, 0, None), (1 / 3, 1, scalar(0.125)), (0.5, 0, scalar(4.0))):
        args = (shards, sinv, dst, factor, margin, prev)
        assert_bitwise(kernels.sum_shards(*args), reference.sum_shards(*args))


def test_sum_shards_overflow_keeps_previous_scale():
    shards = torch.full((2, 9), 448.0).to(E4M3)
    sinv = torch.tensor([2.0 ** 126, 2.0 ** 126])  # the float32 sum overflows to inf
    out, out_sinv, amax = kernels.sum_shards(shards, sinv, E4M3, 1.0, 0, scalar(0.5))
    assert amax.item() == float("inf") and out_sinv.item() == 0.5
    assert_bitwise((out, out_sinv, amax), reference.sum_shards(shards, sinv, E4M3, 1.0, 0, scalar(0.5)))


# ---- adamw_step ---------------------------------------------------------------------------------------

MASTER, GRAD, EXP_AVG, EXP_AVG_SQ, WEIGHT = (F32, F16), (F32, BF16, E4M3, E5M2), (F32, F16, BF16, E4M3), \
    (F32, F16, BF16), (None, E4M3, BF16)


def adamw_params(combo, sizes, device="cpu", seed=0):
    master, _, m, v, w = combo
    out = []
    for k, n in enumerate(sizes):
        gen = torch.Generator().manual_seed(seed + k)
        t = AdamWTensors(master=stored(torch.randn(n, generator=gen), master).to(device),
                         grad=None, exp_avg=stored(torch.randn(n, generator=gen) * 1e-3, m).to(device),
                         exp_avg_sq=stored(torch.rand(n, generator=gen) * 1e-6, v).to(device),
                         master_sinv=scalar(1.0, device), exp_avg_sinv=scalar(1.0, device),
                         exp_avg_sq_sinv=scalar(1.0, device))
        if w is not None:
            t.weight, t.weight_sinv = torch.zeros(n, dtype=w, device=device), scalar(1.0, device)
        out.append(t)
    return out


def clone_params(params):
    return [AdamWTensors(**{k: None if v is None else v.clone() for k, v in vars(t).items()}) for t in params]


def set_grads(a, b, dtype, step):
    for k, (x, y) in enumerate(zip(a, b)):
        g = values(x.master.numel(), seed=100 * step + k, specials=False, spread=4) * 1e-2
        x.grad = y.grad = stored(g, dtype).to(x.master.device)
        x.grad_sinv = y.grad_sinv = scalar(0.5 if dtype in (E4M3, E5M2) else 1.0, x.master.device)


def run_adamw(combo, sizes, steps=3, device="cpu", stochastic=False):
    ours = adamw_params(combo, sizes, device)
    theirs = clone_params(ours)
    for step in range(1, steps + 1):
        set_grads(ours, theirs, combo[1], step)
        for k, (a, b) in enumerate(zip(ours, theirs)):
            a.master_sr_seed = b.master_sr_seed = (0xFFFFFFF0 + 7 * step + k) % 2 ** 32 if stochastic else None
        hyper = AdamWHyper(lr=1e-3, weight_decay=0.1, step=step, grad_scale=0.75, margin=step % 2)
        kernels.adamw_step(ours, hyper)
        reference.adamw_step(theirs, hyper)
        for k, (a, b) in enumerate(zip(ours, theirs)):
            for field, value in vars(a).items():
                if isinstance(value, torch.Tensor):
                    assert_bitwise(value, getattr(b, field), f"step {step} param {k} {field}")


@compiled
@pytest.mark.parametrize("combo", list(itertools.product(MASTER, GRAD, EXP_AVG, EXP_AVG_SQ, WEIGHT)),
                         ids=lambda c: "-".join("none" if d is None else str(d).split(".")[1] for d in c))
def test_adamw_every_combination(combo):
    """Every storage combination, several steps, weight decay and grad scaling on; bitwise."""
    run_adamw(combo, sizes=(127, 0, 1))


@compiled
@pytest.mark.parametrize("combo", [(F16, E4M3, E4M3, F16, E4M3), (F32, F32, F32, F32, None),
                                   (F16, E5M2, F32, F32, BF16), (F32, BF16, BF16, BF16, BF16)])
def test_adamw_threaded_sizes(combo):
    """Sizes on the multi-threaded path with odd tails, several tensors in one call."""
    run_adamw(combo, sizes=(BIG, 1025), steps=2)


@compiled
@pytest.mark.parametrize("combo", [(F16, E4M3, E4M3, F16, E4M3), (F16, F32, F32, F32, None),
                                   (BF16, BF16, F32, F32, E5M2), (F16, E5M2, BF16, BF16, BF16)])
@pytest.mark.parametrize("sizes", [(127, 0, 1), (BIG, 1025)])
def test_adamw_stochastic_master_bitwise(combo, sizes):
    """Stochastic rounding of FP16/BF16 masters: the kernel's random bits and roundings equal the
    reference's, on the serial and the multi-threaded path (element indices, not thread chunks, pick
    the bits), with seeds near 2^32 (wrap-around)."""
    run_adamw(combo, sizes=sizes, stochastic=True)


@compiled
def test_adamw_stochastic_rounding_needs_a_narrow_master():
    t = adamw_params((F32, F32, F32, F32, None), (8,))[0]
    t.grad, t.master_sr_seed = torch.zeros(8), 1
    with pytest.raises(RuntimeError, match="stochastic rounding needs a float16 or bfloat16 master"):
        kernels.adamw_step([t], AdamWHyper(lr=1e-3))


@compiled
def test_adamw_mixed_list_falls_back_per_tensor():
    """A non-contiguous state goes to the reference, the rest to the extension, in one call."""
    combo = (F16, E4M3, E4M3, F16, E4M3)
    ours = adamw_params(combo, (64, 129))
    big = torch.zeros(129, 2, dtype=F16)
    big[:, 0] = ours[1].master
    ours[1].master = big[:, 0]  # strided view, updated in place by the reference
    theirs = clone_params(ours)
    theirs[1].master = ours[1].master.clone()
    set_grads(ours, theirs, E4M3, 1)
    hyper = AdamWHyper(lr=1e-2, weight_decay=0.1)
    kernels.adamw_step(ours, hyper)
    reference.adamw_step(theirs, hyper)
    assert_bitwise(big[:, 0].contiguous(), theirs[1].master)
    for a, b in zip(ours, theirs):
        assert_bitwise(a.exp_avg, b.exp_avg)
        assert_bitwise(a.master_sinv, b.master_sinv)


# ---- the binding's own validation -----------------------------------------------------------------------

@compiled
def test_binding_rejects_bad_input():
    ext = kernels._EXT
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.fp8_accumulate(torch.zeros(4, 4, dtype=E4M3).t(), scalar(1.0), torch.zeros(16), 0)
    with pytest.raises(RuntimeError, match="elements"):
        ext.fp8_accumulate(torch.zeros(4, dtype=E4M3), scalar(1.0), torch.zeros(5), 0)
    with pytest.raises(RuntimeError, match="float32"):
        ext.scale_cast_amax(torch.zeros(4), torch.tensor(1.0, dtype=torch.float64), E4M3)
    with pytest.raises(RuntimeError, match="dtype"):
        ext.scale_cast_amax(torch.zeros(4, dtype=torch.float64), scalar(1.0), E4M3)
    with pytest.raises(RuntimeError, match="scale_inv"):
        t = adamw_params((F16, F32, F32, F32, None), (8,))[0]
        ext.adamw_step([[t.master, torch.zeros(8), t.exp_avg, t.exp_avg_sq, None, None, None, None, None, None]],
                       [0.9, 0.1, 0.95, 0.05, 1.0, 1e-3, 1.0, 1e-8, 1.0], 0)


def test_loader_environment_switches():
    """Importing loads nothing; MEGATRON_FP8_KERNELS=reference selects the reference (no warning); with
    MEGATRON_FP8_REQUIRE_KERNELS=1 as well, the first use is an ImportError that says why."""
    script = ("import sys, warnings; warnings.simplefilter('error')\n"
              "import megatron_fp8.training\n"
              "from megatron_fp8.fp8 import kernels\n"
              "assert kernels.loaded_status() is None and 'megatron_fp8._C' not in sys.modules\n"
              "assert kernels.BACKEND == 'reference' and kernels.loaded_status()[0] == 'reference'\n"
              "import os, torch; os.environ['MEGATRON_FP8_REQUIRE_KERNELS'] = '1'\n"
              "try:\n    kernels.scale_cast_amax(torch.ones(3), torch.tensor(1.0), torch.float8_e4m3fn)\n"
              "except ImportError as err:\n    print('raised:', err)\n")
    env = dict(os.environ, MEGATRON_FP8_KERNELS="reference")
    env.pop("MEGATRON_FP8_REQUIRE_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "raised:" in done.stdout and "MEGATRON_FP8_REQUIRE_KERNELS=1" in done.stdout


def test_fallback_warns_once_on_first_use(tmp_path):
    """No compiled module and no sources to JIT-build: the first kernel call warns once and runs the
    reference; importing the package did not try to build anything."""
    script = ("import warnings, torch\n"
              "import megatron_fp8.fp8.kernel_build as kb\n"
              "kb.repo_root = lambda: %r\n"
              "from megatron_fp8.fp8 import kernels\n"
              "kernels._load_installed = lambda: (None, 'no installed module (test)')\n"
              "with warnings.catch_warnings(record=True) as seen:\n"
              "    warnings.simplefilter('always')\n"
              "    for _ in range(3):\n"
              "        kernels.scale_cast_amax(torch.ones(3), torch.tensor(1.0), torch.float8_e4m3fn)\n"
              "print(len(seen), kernels.BACKEND, seen[0].message)\n") % str(tmp_path)
    env = dict(os.environ)
    env.pop("MEGATRON_FP8_REQUIRE_KERNELS", None)
    env.pop("MEGATRON_FP8_KERNELS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, backend, message = done.stdout.split(" ", 2)
    assert (count, backend) == ("1", "reference"), done.stdout
    assert "no csrc sources" in message and "no installed module (test)" in message


@compiled
def test_unsupported_dtype_uses_reference():
    x = torch.randn(10, dtype=torch.float64)
    assert_bitwise(kernels.scale_cast_amax(x, scalar(1.0), E4M3), reference.scale_cast_amax(x, scalar(1.0), E4M3))


# ---- CUDA (only where a GPU is present) ---------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_KERNELS, reason=f"extension built without CUDA ({NOT_COMPILED or 'CPU-only build'})")
def test_cuda_matches_reference():
    for src, dst in ((F32, E4M3), (BF16, E5M2), (F32, F16)):
        x = stored(values(100_003, seed=7), src).cuda()
        assert_bitwise(kernels.scale_cast_amax(x, scalar(2.0, "cuda"), dst),
                       reference.scale_cast_amax(x, scalar(2.0, "cuda"), dst))
        y = x[:300 * 333].reshape(300, 333)
        assert_bitwise(kernels.cast_transpose_amax(y, scalar(2.0, "cuda"), dst),
                       reference.cast_transpose_amax(y, scalar(2.0, "cuda"), dst))
    acc, sinv = stored(values(5000, seed=8, specials=False), E4M3).cuda(), scalar(0.5, "cuda")
    ref_acc, ref_sinv = acc.clone(), sinv.clone()
    grad = values(5000, seed=9, specials=False).cuda()
    assert_bitwise((kernels.fp8_accumulate(acc, sinv, grad), acc, sinv),
                   (reference.fp8_accumulate(ref_acc, ref_sinv, grad), ref_acc, ref_sinv))
    shards = stored(values(3 * 777, seed=10), E4M3).reshape(3, 777).cuda()
    sinvs = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    assert_bitwise(kernels.sum_shards(shards, sinvs, E4M3, 1 / 3, 0, scalar(1.0, "cuda")),
                   reference.sum_shards(shards, sinvs, E4M3, 1 / 3, 0, scalar(1.0, "cuda")))
    for combo in ((F16, E4M3, E4M3, F16, E4M3), (F32, F32, F32, F32, None), (F32, BF16, BF16, BF16, BF16)):
        run_adamw(combo, sizes=(100_001, 17) + (5,) * 20, device="cuda")  # > one group of 16 descriptors
