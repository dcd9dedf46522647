"""GPU benchmark: time per step and peak memory (``torch.cuda.max_memory_allocated``) of each precision
level on a GPT of a few hundred million parameters, with BF16 compute (``off --bf16`` is Megatron's BF16
baseline, the ratios are against it), then FP8 vs BF16 GEMM TFLOP/s at that model's shapes, and what raw
``torch._scaled_mm`` accepts on the device. Writes JSON to ``$OUT/gpu.json`` when OUT is set, else
bench/results/gpu.json, after every level (a run cut short keeps what it measured).

    python bench/gpu.py                       # CUDA: 24 layers, hidden 1024, seq 1024, ~340M parameters
    python bench/gpu.py --device cpu --tiny   # the same code path on CPU in seconds (CI smoke test)

Part of scripts/gpu_check.sh. Levels that fail are recorded with their error and the run goes on;
``--budget-s`` skips the levels that would start after that many seconds.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_gemm import gemm_throughput, model_gemm_shapes, scaled_mm_rules  # noqa: E402
from gpu_tables import BASELINE, tables  # noqa: E402
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig  # noqa: E402
from megatron_fp8.fp8 import gemm, kernels  # noqa: E402
from megatron_fp8.training import Trainer  # noqa: E402

LEVELS = ["off", "gemm", "O1", "O2", "O3"]
FULL = dict(layers=24, hidden=1024, heads=16, seq=1024, vocab=32768, batch=8, steps=5, warmup=2, gemm_iters=20)
TINY = dict(layers=1, hidden=32, heads=2, seq=16, vocab=128, batch=2, steps=1, warmup=0, gemm_iters=1)


def default_out() -> str:
    out = os.environ.get("OUT")
    return os.path.join(out, "gpu.json") if out else os.path.join(ROOT, "bench", "results", "gpu.json")


def write_json(path: str, payload: dict) -> None:
    """Replace ``path`` atomically: a run killed mid-write keeps the previous complete file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    try:
        env.update(kernels=kernels.BACKEND, kernels_location=kernels.LOCATION or kernels.FALLBACK_MESSAGE)
    except ImportError as err:  # MEGATRON_FP8_REQUIRE_KERNELS=1 without kernels: the levels will say so too
        env.update(kernels="unavailable", kernels_location=str(err))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30)
    return env


def build_config(a, level: str) -> Config:
    model = ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads, seq_length=a.seq,
                        vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0)
    return Config(model=model, precision=PrecisionConfig(fp8_level=level, bf16=True),
                  training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_level(a, level: str, device: torch.device) -> dict:
    gemm.FALLBACKS.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(build_config(a, level), device=device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=gen).to(device)
    batch = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
             "loss_mask": torch.ones(a.batch, a.seq, device=device),
             "position_ids": torch.arange(a.seq, device=device).expand(a.batch, a.seq)}
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        _sync(device)
        start = time.perf_counter()
        result = trainer.train_step([batch], 1e-4)
        _sync(device)
        if i >= a.warmup:
            times.append(time.perf_counter() - start)
        losses.append(result.loss)
    step = statistics.median(times)
    mem = trainer.memory()
    out = {"step_time_s": step, "tokens_per_sec": a.batch * a.seq / step, "losses": losses,
           "params": sum(p.numel() for p in trainer.params), "mem": mem,
           "model_state_bytes": sum(v for k, v in mem.items() if k != "activations_peak"),
           "gemm_fallbacks": gemm.FALLBACKS.snapshot()}
    if device.type == "cuda":
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a 1-layer model and one step per level (smoke test)")
    for name, default in FULL.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                       help=f"default {default} ({TINY[name]} with --tiny)")
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--budget-s", type=float, default=240.0, help="start no level after this many seconds")
    p.add_argument("--out", default=default_out())
    a = p.parse_args(argv)
    for name, default in (TINY if a.tiny else FULL).items():
        if getattr(a, name) is None:
            setattr(a, name, default)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    started = time.perf_counter()
    payload = {"config": vars(a), "env": environment(device), "results": {"levels": {}, "gemm": [],
                                                                          "scaled_mm_rules": {}}}
    results = payload["results"]
    write_json(a.out, payload)  # the environment first: a run cut short still says what it ran on
    results["scaled_mm_rules"] = scaled_mm_rules(device)
    write_json(a.out, payload)
    # GEMMs take seconds on a GPU: before the levels, so a run cut short has them
    try:
        shapes = model_gemm_shapes(a.hidden, 4 * a.hidden, a.batch * a.seq)
        results["gemm"] = gemm_throughput(shapes, device, a.gemm_iters)
    except Exception as err:  # noqa: BLE001 - recorded; the levels still run
        results["gemm_error"] = f"{type(err).__name__}: {str(err).strip()[:500]}"
        print(f"GEMM throughput: FAILED {results['gemm_error']}", flush=True)
    write_json(a.out, payload)
    for level in a.levels.split(","):
        if time.perf_counter() - started > a.budget_s:
            results["levels"][level] = {"skipped": f"over the --budget-s {a.budget_s:g} s"}
            continue
        try:
            r = results["levels"][level] = bench_level(a, level, device)
            peak = r.get("max_memory_allocated")
            print(f"{level}: {r['step_time_s']:.3f} s/step" + (f", peak {peak / 2**30:.2f} GiB" if peak else ""),
                  flush=True)
        except Exception as err:  # noqa: BLE001 - one level failing (even out of memory) must not lose the others
            results["levels"][level] = {"error": f"{type(err).__name__}: {str(err).strip()[:500]}"}
            print(f"{level}: FAILED {results['levels'][level]['error']}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_json(a.out, payload)
    base = results["levels"].get(BASELINE, {})
    for r in results["levels"].values():
        if "step_time_s" in r and "step_time_s" in base:
            r["step_time_vs_off_bf16"] = r["step_time_s"] / base["step_time_s"]
            if "max_memory_allocated" in r:
                r["peak_memory_vs_off_bf16"] = r["max_memory_allocated"] / base["max_memory_allocated"]
    write_json(a.out, payload)
    print("\n" + tables(results))
    print(f"wrote {a.out}")
    failed = [level for level, r in results["levels"].items() if "error" in r]
    return 1 if failed or "gemm_error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
