"""Peak resident memory while building a GPT (GPTModel only, single process), against the bytes the built
model stores: building an FP8 model must never hold the whole model in float32 (issue 13, item 2).
Each level runs in its own fresh process (peaks do not mix).

    python bench/init_memory.py --levels off,O2,O3 --layers 24 --hidden 1024 --vocab 32000

tests/model/test_init_memory.py runs the worker (``--worker``) on a smaller model.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MB = 1 << 20


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def worker(a) -> dict:
    from megatron_fp8.config import Config, ModelConfig, PrecisionConfig
    from megatron_fp8.layers.weights import param_info
    from megatron_fp8.model import GPTModel
    from megatron_fp8.parallel.state import single_process
    from megatron_fp8.process_memory import peak_rss_bytes

    cfg = Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.hidden // 64,
                                   seq_length=a.seq, vocab_size=a.vocab), precision=PrecisionConfig(fp8_level=a.level))
    pstate = single_process()
    before = _rss()
    model = GPTModel(cfg, pstate)
    peak = peak_rss_bytes()
    params = list(model.parameters())
    stored = sum(p.numel() * p.element_size() for p in params)
    # O3's FP16 initial masters, kept for the optimizer (issue 18): part of what construction holds
    masters = sum(t.numel() * t.element_size() for p in params for t in (param_info(p).initial_master or ())
                  if t is not None)
    return {"level": a.level, "before": before, "peak": peak, "stored": stored + masters, "initial_masters": masters,
            "fp32": 4 * sum(p.numel() for p in params), "largest_fp32": 4 * max(p.numel() for p in params)}


def run(level: str, a) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--worker", "--level", level,
            *(f"--{k}={getattr(a, k)}" for k in ("layers", "hidden", "vocab", "seq"))]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # glibc's default allocator, as users run it
    if a.fix_mmap_threshold:  # every large tensor mmapped and returned on free: RSS follows live tensors
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=a.timeout)
    if done.returncode:
        raise RuntimeError(f"{level} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 24), ("hidden", 1024), ("vocab", 32000), ("seq", 256)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--levels", default="off,O2,O3")
    p.add_argument("--level", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--fix-mmap-threshold", action="store_true",
                   help="MALLOC_MMAP_THRESHOLD_=65536: measure what construction holds, not what glibc keeps")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "init_memory.json"))
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    from results_io import save_results

    results = {}
    for level in a.levels.split(","):
        r = results[level] = run(level, a)
        print(f"{level:4s} construction peak +{(r['peak'] - r['before']) / MB:7.0f} MB | stored {r['stored'] / MB:7.0f} MB "
              f"(initial masters {r['initial_masters'] / MB:.0f}) | float32 model {r['fp32'] / MB:7.0f} MB | largest "
              f"float32 tensor {r['largest_fp32'] / MB:.0f} MB", flush=True)
    save_results(a.out, {k: v for k, v in vars(a).items() if k not in ("worker", "level")}, results)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
