"""FP8 vs BF16 GEMM throughput at a GPT's shapes, and what ``torch._scaled_mm`` accepts on this device.

Used by bench/gpu.py. Throughput: ``fp8_gemm`` (the path the model takes: cuBLASLt padding rules, then
``torch._scaled_mm``) against ``torch.mm`` in BF16 on the same [M, K] x [K, N], timed with CUDA events on
a GPU and the wall clock on CPU, TFLOP/s = 2 M N K / time.
"""

import time

import torch

from megatron_fp8.fp8.formats import E4M3, E5M2
from megatron_fp8.fp8.gemm import fp8_gemm
from megatron_fp8.fp8.tensor import Fp8Tensor


def model_gemm_shapes(hidden: int, ffn: int, tokens: int) -> list[tuple[str, int, int, int, torch.dtype]]:
    """(name, M, K, N, dtype of the first operand) of one layer's FP8 GEMMs: the four forward GEMMs and the
    fc1 backward pair (dgrad E5M2 x E4M3, wgrad with K = tokens)."""
    return [("qkv fwd", tokens, hidden, 3 * hidden, E4M3), ("proj fwd", tokens, hidden, hidden, E4M3),
            ("fc1 fwd", tokens, hidden, ffn, E4M3), ("fc2 fwd", tokens, ffn, hidden, E4M3),
            ("fc1 dgrad", tokens, ffn, hidden, E5M2), ("fc1 wgrad", ffn, tokens, hidden, E5M2)]


def _time(fn, device: torch.device, iters: int) -> float:
    """Seconds per call, after warm-up."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def _gemm_row(name: str, m: int, k: int, n: int, a_dtype: torch.dtype, device: torch.device, iters: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    a_hp, b_hp = torch.randn(m, k, generator=gen).to(device), torch.randn(n, k, generator=gen).to(device)
    a, b = Fp8Tensor.quantize_current(a_hp, a_dtype), Fp8Tensor.quantize_current(b_hp, E4M3)
    a16, b16 = a_hp.bfloat16(), b_hp.bfloat16()
    flops = 2.0 * m * n * k
    fp8 = _time(lambda: fp8_gemm(a, b, torch.bfloat16), device, iters)
    bf16 = _time(lambda: torch.mm(a16, b16.t()), device, iters)
    return {"gemm": name, "M": m, "K": k, "N": n, "a": str(a_dtype).replace("torch.float8_", "").replace("fn", ""),
            "fp8_tflops": flops / fp8 / 1e12, "bf16_tflops": flops / bf16 / 1e12, "fp8_vs_bf16": bf16 / fp8}


def gemm_throughput(shapes, device: torch.device, iters: int) -> list[dict]:
    return [_gemm_row(*shape, device, iters) for shape in shapes]


def _probe(device, m, k, n, a_dtype, b_dtype, rowwise, out_dtype) -> str:
    a = torch.zeros(m, k, device=device).to(a_dtype)
    b = torch.zeros(n, k, device=device).to(b_dtype)
    one = torch.ones((), device=device)
    sa, sb = (torch.ones(m, 1, device=device), torch.ones(1, n, device=device)) if rowwise else (one, one)
    try:
        torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype)
        return "accepted"
    except Exception as err:  # noqa: BLE001 - the point is to record what this torch/device refuses
        return f"refused: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"


def scaled_mm_rules(device: torch.device) -> dict:
    """What raw ``torch._scaled_mm`` does with each case gemm_rules.py pads or avoids (the facts the
    padding is built on, checked on the real device)."""
    bf16, f32 = torch.bfloat16, torch.float32
    cases = {
        "aligned e4m3 x e4m3 tensorwise -> bf16": (32, 32, 32, E4M3, E4M3, False, bf16),
        "aligned e4m3 x e4m3 tensorwise -> fp32": (32, 32, 32, E4M3, E4M3, False, f32),
        "K=24 (not a multiple of 16)": (32, 24, 32, E4M3, E4M3, False, bf16),
        "N=24 (not a multiple of 16)": (32, 32, 24, E4M3, E4M3, False, bf16),
        "M=24 (free)": (24, 32, 32, E4M3, E4M3, False, bf16),
        "e5m2 x e4m3": (32, 32, 32, E5M2, E4M3, False, bf16),
        "e4m3 x e5m2": (32, 32, 32, E4M3, E5M2, False, bf16),
        "e5m2 x e5m2": (32, 32, 32, E5M2, E5M2, False, bf16),
        "rowwise -> bf16": (32, 32, 32, E4M3, E4M3, True, bf16),
        "rowwise -> fp32": (32, 32, 32, E4M3, E4M3, True, f32),
    }
    return {name: _probe(device, *case) for name, case in cases.items()}
