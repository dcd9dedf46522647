"""Kernel entry points: the compiled csrc extension when available, else the pure-torch reference.

Loading happens once, on first use (a kernel call or reading ``BACKEND``/``LOCATION``), never at import:
``megatron_fp8._C`` (built in place by ``pip install --no-build-isolation -e .``) if it was compiled from
the current ``csrc/`` sources; else a JIT build with ``torch.utils.cpp_extension.load`` (sources and flags
from :mod:`kernel_build`, cached under ``$MEGATRON_FP8_BUILD_DIR`` or ``~/.cache/megatron_fp8/
torch_extensions``, one folder per source/flag/torch hash); else the reference, with one warning.
``MEGATRON_FP8_REQUIRE_KERNELS=1`` turns that fallback into an ImportError (raised by the first use), and
``MEGATRON_FP8_KERNELS=reference`` selects the reference on purpose (no warning).

Every function has the reference's signature and results (bit for bit, see reference.py). A call
runs in the extension when its tensors are on a device the extension was built for, in dtypes it
supports; anything else (float64 inputs, a CUDA tensor with a CPU-only build, a non-contiguous state
updated in place) goes to the reference. There are no size heuristics: small inputs use the extension
too. ``python -m megatron_fp8.fp8.kernels --check`` compares every kernel with the reference.
"""

import os
import sys
import threading
import warnings

import torch

from . import kernel_build, reference
from .reference import AdamWHyper, AdamWTensors  # noqa: F401 - re-exported

__all__ = ["BACKEND", "LOCATION", "AdamWHyper", "AdamWTensors", "scale_cast_amax", "cast_transpose_amax",
           "fp8_accumulate", "sum_shards", "adamw_step", "fp8_gemm", "amax"]

REQUIRE_ENV = "MEGATRON_FP8_REQUIRE_KERNELS"
SELECT_ENV = "MEGATRON_FP8_KERNELS"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def _load_installed():
    """(module, where) for megatron_fp8._C, or (None, why not)."""
    try:
        from megatron_fp8 import _C
    except ImportError as err:
        return None, f"megatron_fp8._C is not importable ({err})"
    expected = kernel_build.source_hash(kernel_build.repo_root())
    if expected is not None and getattr(_C, "source_hash", None) != expected:
        return None, f"{_C.__file__} was built from older csrc sources (rebuild with pip install -e .)"
    return _C, _C.__file__


def _load_jit():
    """(module, where) from a cached or fresh JIT build, or (None, why not)."""
    root = kernel_build.repo_root()
    if kernel_build.source_hash(root) is None:
        return None, f"no csrc sources under {root} to JIT-build"
    try:
        from torch.utils import cpp_extension

        build_dir = kernel_build.jit_build_dir(root)
        os.makedirs(build_dir, exist_ok=True)
        verbose = os.environ.get("MEGATRON_FP8_VERBOSE") == "1"
        module = cpp_extension.load(build_directory=build_dir, verbose=verbose, **kernel_build.jit_kwargs(root))
    except Exception as err:  # noqa: BLE001 - compiler missing, compile error, ninja missing...
        tail = " | ".join(str(err).strip().splitlines()[-6:])
        return None, f"JIT build failed ({type(err).__name__}: {tail})"
    return module, module.__file__


def _load():
    """(extension or None, where it came from, reasons the earlier options failed)."""
    if os.environ.get(SELECT_ENV, "").strip().lower() == "reference":
        return None, None, [f"{SELECT_ENV}=reference"]
    reasons = []
    for loader in (_load_installed, _load_jit):
        module, info = loader()
        if module is not None:
            return module, info, reasons
        reasons.append(info)
    return None, None, reasons


class _Loaded:
    """The outcome of loading, computed once on first use (importing this module builds nothing)."""

    def __init__(self):
        self.ext, self.location, reasons = _load()
        self.backend = "reference" if self.ext is None else ("csrc-cuda" if self.ext.with_cuda else "csrc-cpu")
        self.devices = set() if self.ext is None else ({"cpu", "cuda"} if self.ext.with_cuda else {"cpu"})
        self.on_purpose = self.ext is None and reasons[0].startswith(SELECT_ENV)
        self.fallback_message = None
        if self.ext is None:
            self.fallback_message = ("megatron_fp8: compiled FP8 kernels unavailable (" + "; ".join(reasons)
                                     + "); using the pure-torch reference (same results, slower)")


_LOADED: _Loaded | None = None
_LOCK = threading.Lock()
_WARNED = False


def _state() -> _Loaded:
    """Load on first use; the fallback warns once, or raises under MEGATRON_FP8_REQUIRE_KERNELS=1."""
    global _LOADED, _WARNED
    if _LOADED is None:
        with _LOCK:
            if _LOADED is None:
                _LOADED = _Loaded()
    loaded = _LOADED
    if loaded.ext is None:
        if _required():
            raise ImportError(loaded.fallback_message + f" and {REQUIRE_ENV}=1")
        if not _WARNED and not loaded.on_purpose:
            _WARNED = True
            warnings.warn(loaded.fallback_message, RuntimeWarning, stacklevel=3)
    return loaded


def loaded_status():
    """(backend, location or fallback message) if the kernels were loaded already, else None; never loads."""
    if _LOADED is None:
        return None
    return _LOADED.backend, _LOADED.location or _LOADED.fallback_message


def __getattr__(name):
    """BACKEND, LOCATION, FALLBACK_MESSAGE and _EXT, resolved (and the kernels loaded) on first access."""
    if name in _LAZY:
        return getattr(_state(), _LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LAZY = {"BACKEND": "backend", "LOCATION": "location", "FALLBACK_MESSAGE": "fallback_message", "_EXT": "ext"}

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
_SCALED = (torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)
# AdamWHyper.constants() keys in the order of mfp8::AdamWConsts.
_CONSTS = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2_sqrt", "step_size", "decay", "eps",
           "grad_scale")


def _data_ok(device: torch.device, *tensors) -> bool:
    """The extension runs on ``device`` and every tensor there has a supported dtype."""
    return device.type in _state().devices and all(
        isinstance(t, torch.Tensor) and t.device == device and t.dtype in _DTYPES for t in tensors)


def _scalar_ok(t, device: torch.device) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == 1 and t.device == device


def scale_cast_amax(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype):
    """Fused cast: ``(store(x, scale, out_dtype), amax(x))`` (reference.scale_cast_amax)."""
    if _data_ok(x.device, x) and out_dtype in _DTYPES and _scalar_ok(scale, x.device):
        return _state().ext.scale_cast_amax(x.contiguous(), scale, out_dtype)
    return reference.scale_cast_amax(x, scale, out_dtype)


def amax(x: torch.Tensor) -> torch.Tensor:
    """NaN-propagating max |x| as a 0-dim float32 tensor, one read-only pass (reference.amax). The
    extension runs it on CPU tensors (torch's aminmax on FP16 weights measured ~10x slower on AVX2)."""
    if x.device.type == "cpu" and _data_ok(x.device, x):
        return _state().ext.amax(x.detach().contiguous())
    return reference.amax(x)


def cast_transpose_amax(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype):
    """``(out, out.t().contiguous(), amax)`` for a 2-D x (reference.cast_transpose_amax)."""
    if x.dim() == 2 and _data_ok(x.device, x) and out_dtype in _DTYPES and _scalar_ok(scale, x.device):
        return _state().ext.cast_transpose_amax(x.contiguous(), scale, out_dtype)
    return reference.cast_transpose_amax(x, scale, out_dtype)


def fp8_accumulate(acc: torch.Tensor, acc_scale_inv: torch.Tensor, grad: torch.Tensor, margin: int = 0):
    """``acc += grad`` requantized with a fresh scale, in place; returns the amax (reference.fp8_accumulate)."""
    if (_data_ok(acc.device, acc, grad) and acc.is_contiguous() and grad.numel() == acc.numel()
            and _scalar_ok(acc_scale_inv, acc.device)):
        return _state().ext.fp8_accumulate(acc, acc_scale_inv, grad.contiguous(), int(margin))
    return reference.fp8_accumulate(acc, acc_scale_inv, grad, margin)


def sum_shards(shards: torch.Tensor, scale_invs: torch.Tensor, out_dtype: torch.dtype,
               factor: float = 1.0, margin: int = 0, prev_scale_inv=None):
    """``(out, out_scale_inv, amax)`` of the float32 sum of N scaled shards (reference.sum_shards)."""
    device = shards.device
    if (shards.dim() >= 1 and _data_ok(device, shards) and out_dtype in _DTYPES
            and isinstance(scale_invs, torch.Tensor) and scale_invs.dtype == torch.float32
            and scale_invs.device == device and scale_invs.numel() == shards.shape[0]
            and (prev_scale_inv is None or _scalar_ok(prev_scale_inv, device))):
        return _state().ext.sum_shards(shards.contiguous(), scale_invs.contiguous(), out_dtype, float(factor),
                                       int(margin), prev_scale_inv)
    return reference.sum_shards(shards, scale_invs, out_dtype, factor, margin, prev_scale_inv)


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, scaling: str,
             out_dtype: torch.dtype, a_transposed: bool = False, b_transposed: bool = False,
             dot: str = "auto") -> torch.Tensor:
    """FP8 GEMM ``a @ b.T`` with float32 accumulation (reference.fp8_gemm: equal up to summation order).
    The extension runs it on CPUs (csrc/cpu/gemm.cpp); other devices get the reference. ``dot``: the
    extension's per-block GEMM, ``fp32`` (torch's BLAS), ``bf16`` (BF16 dot-product units, an error
    where there are none) or ``auto`` (bf16 where :func:`bf16_dot_available`)."""
    device = a.device
    if (device.type == "cpu" and "cpu" in _state().devices and a.dtype in _FP8 and b.dtype in _FP8
            and a.dim() == b.dim() == 2 and b.device == device and out_dtype in _DTYPES[:3]
            and all(isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.device == device
                    for s in (scale_a, scale_b))):
        return _state().ext.fp8_gemm(a.contiguous(), b.contiguous(), scale_a.contiguous(), scale_b.contiguous(),
                                     scaling, out_dtype, a_transposed, b_transposed, dot=dot)
    return reference.fp8_gemm(a, b, scale_a, scale_b, scaling, out_dtype, a_transposed, b_transposed)


def bf16_dot_available() -> bool:
    """Whether the CPU FP8 GEMM can run on BF16 dot-product units (the extension built for and running on
    an AVX-512-BF16 CPU)."""
    return "cpu" in _state().devices and bool(_state().ext.bf16_dot_available())


def _adamw_fields(t: AdamWTensors):
    """The binding's 10-field list for ``t``, or None when the extension cannot update it in place."""
    device = t.master.device
    stored = [t.master, t.grad, t.exp_avg, t.exp_avg_sq] + ([] if t.weight is None else [t.weight])
    if not _data_ok(device, *stored) or any(s.numel() != t.master.numel() for s in stored):
        return None
    if not all(s.is_contiguous() for s in stored if s is not t.grad):
        return None
    pairs = [(t.master, t.master_sinv), (t.grad, t.grad_sinv), (t.exp_avg, t.exp_avg_sinv),
             (t.exp_avg_sq, t.exp_avg_sq_sinv), (t.weight, t.weight_sinv)]
    if not all(_scalar_ok(sinv, device) for s, sinv in pairs if s is not None and s.dtype in _SCALED):
        return None
    return [t.master, t.grad.contiguous(), t.exp_avg, t.exp_avg_sq, t.master_sinv, t.grad_sinv,
            t.exp_avg_sinv, t.exp_avg_sq_sinv, t.weight, t.weight_sinv]


def adamw_step(tensors: list[AdamWTensors], hyper: AdamWHyper) -> None:
    """One AdamW step over many tensors, in place (reference.adamw_step): one kernel call per device."""
    ext = _state().ext
    groups, rest = {}, []
    for t in tensors:
        fields = _adamw_fields(t) if ext is not None else None
        if fields is None:
            rest.append(t)
        else:
            seed = -1 if t.master_sr_seed is None else int(t.master_sr_seed)
            groups.setdefault(t.master.device, []).append((fields, seed))
    if groups:
        c = hyper.constants()
        consts = [c[k] for k in _CONSTS]
        for group in groups.values():
            fields, seeds = zip(*group)
            ext.adamw_step(list(fields), consts, int(hyper.margin), list(seeds) if max(seeds) >= 0 else [])
    if rest:
        reference.adamw_step(rest, hyper)


# ---- self-check: python -m megatron_fp8.fp8.kernels --check ------------------------------------------

def _ulp_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between a and b in units of their last place (NaN equals NaN); -1 if their
    dtypes or shapes differ."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return -1
    if a.numel() == 0:
        return 0
    width = a.element_size() * 8
    view = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[width]

    def ordered(t):
        bits = t.contiguous().view(view).to(torch.int64) & ((1 << width) - 1)
        mag = bits & ((1 << (width - 1)) - 1)
        return torch.where(bits >> (width - 1) == 1, -mag, mag)

    nan_a, nan_b = a.float().isnan(), b.float().isnan()
    diff = (ordered(a) - ordered(b)).abs()
    diff = torch.where(nan_a & nan_b, 0, torch.where(nan_a ^ nan_b, 1 << 40, diff))
    return int(diff.max())


def _check_data(n: int, seed: int) -> torch.Tensor:
    """Random float32 values over a wide exponent range, starting with special values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-24, 18, (n,), generator=gen).float())
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -3e-40, 448.0, 464.0,
                            -480.0, 57344.0, 61440.0, 65504.0, -65520.0, 3e38, 2 ** -9, 2 ** -10, 2 ** -17])
    k = min(n, special.numel())
    x[:k] = special[:k]
    return x


def _check_cases(device: torch.device):
    """(kernel name, list of zero-argument callables returning (extension outputs, reference outputs))."""
    scalar = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731

    def data(n, seed, dtype=torch.float32):
        x = _check_data(n, seed).to(device)
        return (x.clamp(-448, 448) if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else x).to(dtype)

    e4, e5, f16, bf16, f32 = torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16, torch.float32
    cases = {name: [] for name in ("scale_cast_amax", "amax", "cast_transpose_amax", "fp8_accumulate",
                                   "sum_shards", "adamw_step")}
    for i, (di, do) in enumerate((a, b) for a in _DTYPES for b in _DTYPES):
        for s in (1.0, 2.0 ** -4, 2.0 ** 7, 0.3):
            x = data(4099, i, di)
            cases["scale_cast_amax"].append(lambda x=x, s=s, do=do: (
                scale_cast_amax(x, scalar(s), do), reference.scale_cast_amax(x, scalar(s), do)))
    for i, di in enumerate(_DTYPES):
        for n in (0, 1, 4099, 70001):
            x = data(n, 40 + i, di)
            cases["amax"].append(lambda x=x: ((amax(x),), (reference.amax(x),)))
    for shape in ((1, 1), (37, 61), (130, 67)):
        for di, do in ((f32, e4), (bf16, e5), (f32, f16), (f16, bf16)):
            x = data(shape[0] * shape[1], 7, di).reshape(shape)
            cases["cast_transpose_amax"].append(lambda x=x, do=do: (
                cast_transpose_amax(x, scalar(2.0), do), reference.cast_transpose_amax(x, scalar(2.0), do)))
    for acc_dtype in _DTYPES:
        for grad_dtype, seed, margin in ((f32, 1, 0), (bf16, 2, 1), (f16, 3, 0), (f32, 4, 2)):
            acc = (torch.randn(1025, device=device) * 8).to(acc_dtype)
            grad = data(1025, seed, grad_dtype) if seed != 4 else torch.randn(1025, device=device).to(grad_dtype)

            def run(acc=acc, grad=grad, margin=margin):
                a1, s1, a2, s2 = acc.clone(), scalar(0.125), acc.clone(), scalar(0.125)
                got = fp8_accumulate(a1, s1, grad, margin)
                want = reference.fp8_accumulate(a2, s2, grad, margin)
                return (a1, s1, got), (a2, s2, want)
            cases["fp8_accumulate"].append(run)
    for sd in (e4, e5, f16, f32):
        for od in _DTYPES:
            for factor, prev in ((1.0, None), (1 / 3, 0.5)):
                shards = torch.stack([data(5 * 77, 10 + k, sd) for k in range(3)]).reshape(3, 5, 77)
                sinv = torch.tensor([0.5, 4.0, 2.0 ** -6], device=device)
                args = (shards, sinv, od, factor, 1, None if prev is None else scalar(prev))
                cases["sum_shards"].append(lambda args=args: (sum_shards(*args), reference.sum_shards(*args)))
    for combo in ((f16, e4, e4, f16, e4), (f32, f32, f32, f32, None), (f16, e5, f32, f32, e4),
                  (f32, bf16, bf16, bf16, bf16), (f16, f32, f16, f16, None)):
        cases["adamw_step"].append(lambda combo=combo: _adamw_case(device, combo))
    for combo in ((f16, e4, e4, f16, e4), (f16, f32, f32, f32, None), (bf16, bf16, f32, f32, e5)):
        cases["adamw_step"].append(lambda combo=combo: _adamw_case(device, combo, stochastic=True))
    return list(cases.items())


def _adamw_case(device, combo, stochastic=False):
    """Three AdamW steps on two parameters with states in ``combo`` dtypes: (extension, reference) states;
    ``stochastic``: the masters stored with stochastic rounding (a new seed per tensor and step)."""
    master, grad, m, v, w = combo

    def state(n, seed):
        gen = torch.Generator().manual_seed(seed)
        t = {"master": torch.randn(n, generator=gen), "exp_avg": torch.randn(n, generator=gen) * 1e-3,
             "exp_avg_sq": torch.rand(n, generator=gen) * 1e-5}
        dtypes = {"master": master, "exp_avg": m, "exp_avg_sq": v}
        out = AdamWTensors(master=None, grad=None, exp_avg=None, exp_avg_sq=None)
        for name, values in t.items():
            setattr(out, name, values.to(device).to(dtypes[name]))
            setattr(out, name + "_sinv", torch.ones((), device=device))
        if w is not None:
            out.weight, out.weight_sinv = torch.zeros(n, device=device).to(w), torch.ones((), device=device)
        return out

    def clone(t):
        return AdamWTensors(**{k: (None if val is None else val.clone()) for k, val in vars(t).items()})

    ours = [state(1000, 1), state(333, 2)]
    theirs = [clone(t) for t in ours]
    for step in range(1, 4):
        hyper = AdamWHyper(lr=1e-3, weight_decay=0.1, step=step, grad_scale=0.5)
        for a, b, seed in zip(ours, theirs, (step, step + 10)):
            g = (_check_data(a.master.numel(), seed) * 1e-2).clamp(-448, 448).to(device).to(grad)
            a.grad = b.grad = g
            a.grad_sinv = b.grad_sinv = torch.full((), 0.25, device=device)
            a.master_sr_seed = b.master_sr_seed = (0xC0FFEE00 + seed) if stochastic else None
        adamw_step(ours, hyper)
        reference.adamw_step(theirs, hyper)
    flat = lambda ts: tuple(x for t in ts for x in vars(t).values() if isinstance(x, torch.Tensor))  # noqa: E731
    return flat(ours), flat(theirs)


def _run_checks() -> bool:
    """One line per kernel and device: PASS/FAIL with the largest mismatch in ulps (0 = bit-identical)."""
    devices = ["cpu"] + (["cuda"] if "cuda" in _state().devices and torch.cuda.is_available() else [])
    all_ok = True
    for device in devices:
        for name, cases in _check_cases(torch.device(device)):
            worst, layout_ok = 0, True
            for case in cases:
                got, want = (r if isinstance(r, tuple) else (r,) for r in case())
                diffs = [_ulp_diff(g, w) for g, w in zip(got, want)]
                layout_ok &= len(got) == len(want) and -1 not in diffs
                worst = max([worst] + diffs)
            ok = layout_ok and worst == 0
            all_ok &= ok
            detail = f"max mismatch {worst} ulp" + ("" if layout_ok else ", dtype/shape mismatch")
            print(f"{'PASS' if ok else 'FAIL'}  {name:<20} {device:<5} {len(cases):4d} cases  {detail}")
    return all_ok


def _main(argv) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m megatron_fp8.fp8.kernels",
                                     description="Build, load and check the megatron_fp8 FP8 kernels.")
    parser.add_argument("--check", action="store_true", help="compare every kernel with the reference")
    parser.add_argument("--build", action="store_true", help="build or load the extension and say where")
    args = parser.parse_args(argv)
    try:
        loaded = _state()
    except ImportError as err:  # MEGATRON_FP8_REQUIRE_KERNELS=1 and no compiled kernels
        print(f"backend: reference ({err})")
        print(f"error: no compiled kernels and {REQUIRE_ENV}=1")
        return 1
    print(f"backend: {loaded.backend}" + f" ({loaded.location or loaded.fallback_message})")
    if loaded.ext is None:
        if args.check:
            for name in __all__[4:]:
                print(f"SKIP  {name:<20} (no compiled kernels to compare with the reference)")
        if args.build:
            print("error: no compiled kernels")
            return 1
        return 0
    if args.check:
        return 0 if _run_checks() else 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
