"""FP8 GEMM throughput on CPU against ``torch.mm`` in float32, at the GEMM shapes of a 110M-parameter GPT.

    python bench/cpu_gemm.py [--hidden 768 --ffn 3072 --tokens 256] [--rounds 7] [--isa native|avx2]

Shapes: the forward (x @ W.T), dgrad (g @ W) and wgrad (g.T @ x) GEMMs of the QKV, attention-output and
two MLP projections (12 layers x hidden 768, sequence 256 x micro-batch 1 = 256 tokens). Contenders, all
through :mod:`megatron_fp8.fp8.gemm` as the model calls them: the decoded CPU kernel with tensorwise,
rowwise and 128x128/1x128 block scales (:mod:`megatron_fp8.fp8.cpu_gemm`), with both operands row-major
in K and (tensorwise) with the operands stored as the FP8 linear stores them on CPU (dgrad: W as [K, N];
wgrad: g and x as [K, M], [K, N]) and the same with the per-block GEMM forced to float32 BLAS (the
other contenders run BF16 dot products where the CPU has them, ``MEGATRON_FP8_CPU_GEMM_DOT``), against
``torch.mm`` FP32 on the same values (the baseline, first in every interleaved round); also the previous decoded path (decode to fresh float32 tensors, ``torch.mm``,
scale), BF16 ``torch.mm`` (BF16 output, so not an exact FP8 GEMM: the rate a BF16 path could reach)
and, at one small shape only, ``torch._scaled_mm`` (its CPU kernel takes tens of seconds at the model's
shapes).

``--isa avx2`` emulates an AVX2-only machine: the script re-runs itself with ``ATEN_CPU_CAPABILITY=avx2``
(torch's own kernels), ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's sgemm) and ``ONEDNN_MAX_CPU_ISA=AVX2``
(oneDNN: BF16 GEMMs then run without AMX/AVX-512-BF16) and ``MEGATRON_FP8_CPU_GEMM_DOT=fp32`` (our
kernel's BF16 dot products). The csrc decode is built with -march=native and is not restricted by these.
Writes ``bench/results/cpu_gemm[_avx2].json``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from results_io import RESULTS_DIR, save_results

from megatron_fp8.fp8 import cpu_gemm, gemm, kernels
from megatron_fp8.fp8.blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from megatron_fp8.fp8.formats import E4M3
from megatron_fp8.fp8.tensor import Fp8Tensor

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MEGATRON_FP8_CPU_GEMM_DOT": "fp32"}
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
         "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict:
    have = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown") if os.path.exists("/proc/cpuinfo") else "unknown"
    return {"model": model, "flags": [f for f in FLAGS if f in have], "cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def shapes(hidden: int, ffn: int, tokens: int) -> dict:
    """name -> (M, K, N) of ``a[M, K] @ b[N, K].T``."""
    out = {}
    for layer, (k_in, n_out) in {"qkv": (hidden, 3 * hidden), "proj": (hidden, hidden), "fc1": (hidden, ffn),
                                 "fc2": (ffn, hidden)}.items():
        out[f"{layer}.fwd"] = (tokens, k_in, n_out)
        out[f"{layer}.dgrad"] = (tokens, n_out, k_in)
        out[f"{layer}.wgrad"] = (n_out, tokens, k_in)
    return out


def interleaved(fns: dict, rounds: int, warmup: int = 1):
    """Median seconds of each function over interleaved rounds, and the median per-round ratio to the first."""
    times = {name: [] for name in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    first = next(iter(fns))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = {name: statistics.median(t0 / t for t0, t in zip(times[first], ts)) for name, ts in times.items()}
    return med, ratio


_ONE = torch.ones(())


def previous_decoded(at: Fp8Tensor, bt: Fp8Tensor) -> torch.Tensor:
    """The decoded GEMM before the csrc kernel, as separate torch ops: decode both operands into fresh
    float32 tensors (the csrc cast kernel), ``torch.mm``, scale the result."""
    a32 = kernels.scale_cast_amax(at.data, _ONE, torch.float32)[0]
    b32 = kernels.scale_cast_amax(bt.data, _ONE, torch.float32)[0]
    return torch.mm(a32, b32.t()).mul_(at.scale_inv * bt.scale_inv)


def contenders(name: str, m: int, k: int, n: int, with_scaled_mm: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * 0.02
    at, bt = Fp8Tensor.quantize_current(a, E4M3), Fp8Tensor.quantize_current(b, E4M3)
    # How the FP8 linear stores the operands on CPU (fp8/linear.py): dgrad reads W [K, N], wgrad reads
    # g [K, M] and x [K, N], all as cast (no FP8 transposes), through the GEMM's transpose flags.
    a_t, b_t = name.endswith(".wgrad"), name.endswith((".dgrad", ".wgrad"))
    am = Fp8Tensor(at.data.t().contiguous(), at.scale_inv) if a_t else at
    bm = Fp8Tensor(bt.data.t().contiguous(), bt.scale_inv) if b_t else bt
    ar, br = Fp8Tensor.quantize_rowwise(a, E4M3), Fp8Tensor.quantize_rowwise(b, E4M3)
    ab, bb = BlockwiseFp8Tensor.quantize(a, TILE_1x128, E4M3), BlockwiseFp8Tensor.quantize(b, BLOCK_128x128, E4M3)
    a16, b16 = a.bfloat16(), b.bfloat16()
    fns = {"torch.mm fp32": lambda: torch.mm(a, b.t()),
           "fp8 tensorwise": lambda: gemm.fp8_gemm(at, bt),
           "fp8 tensorwise, model layout": lambda: gemm.fp8_gemm(am, bm, torch.float32, a_t, b_t),
           "fp8 tensorwise, model layout, float32 BLAS": lambda: kernels.fp8_gemm(
               am.data, bm.data, am.scale_inv, bm.scale_inv, "tensorwise", torch.float32, a_t, b_t, dot="fp32"),
           "previous: decode + torch.mm": lambda: previous_decoded(at, bt),
           "fp8 rowwise": lambda: gemm.fp8_gemm(ar, br),
           "fp8 block": lambda: gemm.blockwise_gemm(ab, bb),
           "torch.mm bf16 (bf16 out)": lambda: torch.mm(a16, b16.t())}
    if with_scaled_mm:
        one = torch.ones(())
        call = lambda: torch._scaled_mm(at.data, bt.data.t(), scale_a=one, scale_b=one,  # noqa: E731
                                        out_dtype=torch.float32)
        try:
            call()
            fns["torch._scaled_mm"] = call
        except RuntimeError as err:  # oneDNN under ONEDNN_MAX_CPU_ISA=AVX2 has no FP8 matmul
            print(f"torch._scaled_mm refused: {str(err).splitlines()[0]}")
    return fns


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("hidden", 768), ("ffn", 3072), ("tokens", 256), ("rounds", 7), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--isa", choices=("native", "avx2"), default="native")
    p.add_argument("--small-shape", default="64,192,64", help="M,K,N where torch._scaled_mm is timed too")
    a = p.parse_args(argv)
    if a.isa == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        env = dict(os.environ, **AVX2_ENV)
        sys.exit(subprocess.call([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env))
    os.environ[cpu_gemm.ENV] = "auto"
    torch.set_num_threads(a.threads)
    info = cpu_flags()
    print(f"CPU: {info['model']} | flags: {' '.join(info['flags'])} | torch {info['torch']} "
          f"capability {info['torch_capability']} | isa {a.isa} | {a.threads} threads | FP8 GEMM dot: "
          f"{'bf16' if kernels.bf16_dot_available() and cpu_gemm.dot_path() != 'fp32' else 'fp32'}")
    small = tuple(int(v) for v in a.small_shape.split(","))
    cases = dict(shapes(a.hidden, a.ffn, a.tokens), **{"small": small})
    results = {}
    print(f"{'shape':12s} {'M x K x N':>16s} " + " ".join(f"{c:>26s}" for c in ("GFLOP/s (x torch.mm fp32)",)))
    for name, (m, k, n) in cases.items():
        fns = contenders(name, m, k, n, with_scaled_mm=name == "small")
        med, ratio = interleaved(fns, a.rounds if name != "small" else 3)
        flops = 2 * m * k * n
        row = {c: {"s": med[c], "gflops": flops / med[c] / 1e9, "vs_torch_mm_fp32": ratio[c]} for c in fns}
        results[name] = {"mkn": [m, k, n], "contenders": row}
        cells = "  ".join(f"{c}: {r['gflops']:.1f} ({r['vs_torch_mm_fp32']:.2f}x)" for c, r in row.items())
        print(f"{name:12s} {m:5d}x{k:5d}x{n:5d}  {cells}")
    model = [r for nm, r in results.items() if nm != "small"]
    summary = {}
    for c in model[0]["contenders"]:
        total = sum(r["contenders"][c]["s"] for r in model)
        summary[c] = {"total_s": total,
                      "vs_torch_mm_fp32": sum(r["contenders"]["torch.mm fp32"]["s"] for r in model) / total,
                      "min_shape_ratio": min(r["contenders"][c]["vs_torch_mm_fp32"] for r in model)}
        print(f"all model shapes, {c}: {summary[c]['vs_torch_mm_fp32']:.2f}x torch.mm fp32 "
              f"(worst shape {summary[c]['min_shape_ratio']:.2f}x)")
    out = os.path.join(RESULTS_DIR, "cpu_gemm.json" if a.isa == "native" else "cpu_gemm_avx2.json")
    save_results(out, dict(vars(a), cpu=info, env={k: os.environ.get(k) for k in AVX2_ENV}),
                 {"shapes": results, "summary": summary})


if __name__ == "__main__":
    main()
