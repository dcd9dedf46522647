"""Loss parity: the same model from the same initialisation on the default corpus at every precision level
(`off` is the FP32 reference), long enough for the loss to flatten. Writes bench/results/parity.json and,
with matplotlib installed, bench/results/parity.png.

    python bench/parity.py [--train-iters 1000] [--levels off,gemm,O1,O2,O3] [--hidden 256 --layers 4 --seq 128]
"""

import argparse
import json
import os


from megatron_fp8.arguments import parse_config
from megatron_fp8.training import pretrain

from results_io import plot_curves

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run_level(level: str, a) -> dict:
    log = os.path.join(RESULTS, f"parity_{level}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    flags = ["--fp8-level", level, "--num-layers", str(a.layers), "--hidden-size", str(a.hidden),
             "--num-attention-heads", str(a.heads), "--seq-length", str(a.seq), "--micro-batch-size", str(a.batch),
             "--train-iters", str(a.train_iters), "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "50",
             "--log-interval", str(a.log_interval), "--eval-interval", str(a.train_iters), "--eval-iters",
             str(a.eval_iters), "--hidden-dropout", "0", "--attention-dropout", "0", "--log-json", log]
    summary = pretrain(parse_config(flags), printer=lambda *x, **k: None)
    records = [json.loads(line) for line in open(log)]
    curve = [(r["iteration"], r["lm_loss"]) for r in records if "lm_loss" in r]
    return {"curve": curve, "final_valid_loss": summary["valid_loss"], "skipped": summary["skipped"]}


def plot(results: dict, path: str) -> bool:
    return plot_curves(results, path, "training lm loss", "megatron_fp8: loss by precision level (default corpus, "
                       "same init)", log_scale=True)


def summarize() -> dict:
    """Combine every level measured so far (runs of different levels may go in separate processes)."""
    path = os.path.join(RESULTS, "parity.json")
    saved = json.load(open(path)) if os.path.exists(path) else {"config": {}, "results": {}}
    for name in sorted(os.listdir(RESULTS)):
        if name.startswith("parity_level_") and name.endswith(".json"):
            one = json.load(open(os.path.join(RESULTS, name)))
            saved["config"] = one["config"]
            saved["results"][one["level"]] = one["result"]
    results = saved["results"]
    if "off" in results:
        ref = results["off"]["final_valid_loss"]
        for level, r in results.items():
            r["valid_vs_off"] = (r["final_valid_loss"] - ref) / ref
            print(f"{level:5s} final validation loss {r['final_valid_loss']:.5f} ({100 * r['valid_vs_off']:+.3f}% vs off)")
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    if plot(results, os.path.join(RESULTS, "parity.png")):
        print("wrote bench/results/parity.png")
    return saved


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="off,gemm,O1,O2,O3")
    p.add_argument("--summarize-only", action="store_true", help="combine the levels measured so far")
    for name, default in [("train_iters", 1000), ("layers", 4), ("hidden", 256), ("heads", 4), ("seq", 128),
                          ("batch", 8), ("eval_iters", 20), ("log_interval", 10)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    a = p.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    for level in [] if a.summarize_only else a.levels.split(","):
        result = run_level(level, a)
        with open(os.path.join(RESULTS, f"parity_level_{level}.json"), "w") as f:
            json.dump({"level": level, "config": vars(a), "result": result}, f)
        print(f"{level:5s} final validation loss {result['final_valid_loss']:.5f} (skipped steps: {result['skipped']})",
              flush=True)
    summarize()


if __name__ == "__main__":
    main()
