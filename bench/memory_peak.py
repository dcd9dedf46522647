"""Peak process memory (RSS high-water mark) per precision level, with and without recomputation, each
configuration in its own fresh subprocess so peaks do not mix; beside it the log's categories, and where
the rest goes: RSS and VmHWM after start-up, after building the trainer and after each step.
Writes bench/results/memory_peak.json.

    python bench/memory_peak.py                      # the issue's 110M GPT: 12 x 768, vocab 32000, seq 256
    python bench/memory_peak.py --levels off,O2 --recompute none,full --steps 3 [--malloc-arena-max 2]

Not a CI test: run it on purpose, on a quiet machine (it needs ~3 GB per configuration, one at a time).
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MB = 2 ** 20
RECOMPUTE = {"none": {}, "full": dict(recompute_granularity="full", recompute_method="uniform",
                                      recompute_num_layers=1),
             "selective": dict(recompute_granularity="selective")}


def _status() -> dict:
    """VmRSS and VmHWM (bytes) from /proc/self/status."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split()[:2]
                out[key[2:-1].lower()] = int(value) * 1024
    return out


def worker(a) -> dict:
    """One configuration in this (fresh) process; returns its figures."""
    stages = {"start": _status()}
    import torch

    from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig
    from megatron_fp8.memory import plan_memory
    from megatron_fp8.process_memory import fix_mmap_threshold
    from megatron_fp8.training import Trainer

    if a.fix_mmap_threshold:
        fix_mmap_threshold("cpu")  # as pretrain() does at start-up
    torch.manual_seed(0)
    stages["imported"] = _status()
    cfg = Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                                   seq_length=a.seq, vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0),
                 precision=PrecisionConfig(fp8_level=a.level),
                 training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch, **RECOMPUTE[a.recompute]))
    trainer = Trainer(cfg)
    stages["built"] = _status()
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    batch = {"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(tokens.shape),
             "position_ids": torch.arange(a.seq).expand_as(tokens)}
    losses, times = [], []
    libc = ctypes.CDLL("libc.so.6") if a.malloc_trim else None
    for step in range(a.steps):
        t0 = time.perf_counter()
        losses.append(trainer.train_step([batch], 1e-4).loss)
        times.append(time.perf_counter() - t0)
        if libc is not None:
            libc.malloc_trim(0)
        stages[f"step{step + 1}"] = _status()
    measured = trainer.memory()
    plan = plan_memory(cfg, 1, device="cpu", fixed_mmap_threshold=a.fix_mmap_threshold,
                       import_rss=stages["imported"]["rss"])
    return {"stages": stages, "peak_rss": stages[f"step{a.steps}"]["hwm"], "categories": measured,
            "categories_total": sum(measured.values()), "planned": plan.bytes, "planned_total": plan.total,
            "planned_process": plan.process, "planned_peak": plan.process_peak, "params": plan.params_total,
            "losses": losses, "step_s": times}


def run_one(level: str, recompute: str, a) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--level", level, "--recompute", recompute,
            "--steps", str(a.steps), *(f"--{k}={getattr(a, k)}" for k in ("layers", "hidden", "heads", "vocab",
                                                                           "seq", "batch"))]
    if a.malloc_trim:
        args.append("--malloc-trim")
    if a.fix_mmap_threshold:
        args.append("--fix-mmap-threshold")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if a.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(a.malloc_arena_max)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=a.timeout)
    if done.returncode:
        raise RuntimeError(f"{level}/{recompute} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 12), ("hidden", 768), ("heads", 12), ("vocab", 32000), ("seq", 256),
                          ("batch", 1), ("steps", 3)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--levels", default="off,O2,O3")
    p.add_argument("--recompute", default="none,full")
    p.add_argument("--level", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--malloc-arena-max", type=int, default=None, help="MALLOC_ARENA_MAX for the workers")
    p.add_argument("--malloc-trim", action="store_true", help="malloc_trim(0) after every step")
    p.add_argument("--fix-mmap-threshold", action="store_true",
                   help="fix glibc's mmap threshold at start-up, as pretrain_gpt.py does on CPU")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    p.add_argument("--jobs", type=int, default=1, help="configurations run at once (each in its own process)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "memory_peak.json"))
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from results_io import save_results

    runs = [(level, recompute) for recompute in a.recompute.split(",") for level in a.levels.split(",")]
    with ThreadPoolExecutor(a.jobs) as pool:  # separate processes: their peaks never mix
        futures = {run: pool.submit(run_one, *run, a) for run in runs}
        results = {f"{level}/{recompute}": futures[(level, recompute)].result() for level, recompute in runs}
    for key, r in results.items():
        level, recompute = key.split("/")
        base = results.get(f"off/{recompute}", r)["peak_rss"]
        s = r["stages"]
        print(f"{level:4s} recompute={recompute:9s} peak RSS {r['peak_rss'] / MB:8.1f} MB ({r['peak_rss'] / base:.2f}x "
              f"off) | categories {r['categories_total'] / MB:7.1f} MB | after import {s['imported']['rss'] / MB:6.1f}"
              f" | built {s['built']['rss'] / MB:7.1f} (HWM {s['built']['hwm'] / MB:7.1f}) | activations "
              f"{r['categories']['activations_peak'] / MB:6.1f} MB | planned peak {r['planned_peak'] / MB:7.1f} MB "
              f"({r['planned_peak'] / r['peak_rss']:.3f}x measured) | loss {r['losses'][-1]:.4f}", flush=True)
    save_results(a.out, {k: v for k, v in vars(a).items() if k not in ("worker", "level")}, results)


if __name__ == "__main__":
    main()
