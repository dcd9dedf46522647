"""Loss parity: the same model from the same initialisation on the default corpus at every precision level
(`off` is the FP32 reference), long enough for the loss to flatten. Reports the final validation loss and,
beside it, the early-training gap (the training loss of each of steps 1-50 against `off`'s). Writes
bench/results/parity.json and, with matplotlib installed, bench/results/parity.png.

    python bench/parity.py [--train-iters 1000] [--levels off,gemm,O1,O2,O3] [--hidden 256 --layers 4 --seq 128]
    python bench/parity.py --early-only --levels O2   # steps 1-50 only (--exit-interval), final kept as it was
    python bench/parity.py --summarize-only
    python bench/parity.py --levels O1,O2,O3 --tag +sr -- --main-params-rounding stochastic

Flags after ``--`` go to every level except `off`; ``--tag`` names those runs (the level's key becomes
LEVEL+TAG, e.g. ``O2+sr``) so they sit beside the plain levels against the same `off`.
"""

import argparse
import json
import os
import sys


from megatron_fp8.arguments import parse_config
from megatron_fp8.training import pretrain

from results_io import plot_curves

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


EARLY_STEPS = 50


def run_level(level: str, a, extra: list[str]) -> dict:
    key = level + (a.tag if level != "off" else "")
    log = os.path.join(RESULTS, f"parity_{key}{'_early' if a.early_only else ''}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    exit_flags = ["--exit-interval", str(EARLY_STEPS)] if a.early_only else []  # same schedule and data order
    flags = exit_flags + ["--fp8-level", level, "--num-layers", str(a.layers), "--hidden-size", str(a.hidden),
             "--num-attention-heads", str(a.heads), "--seq-length", str(a.seq), "--micro-batch-size", str(a.batch),
             "--train-iters", str(a.train_iters), "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "50",
             "--log-interval", str(a.log_interval), "--eval-interval", str(a.train_iters), "--eval-iters",
             str(a.eval_iters), "--hidden-dropout", "0", "--attention-dropout", "0", "--log-json", log] \
        + (extra if level != "off" else [])
    summary = pretrain(parse_config(flags), printer=lambda *x, **k: None)
    early = summary["train_losses"][:EARLY_STEPS]
    if a.early_only:
        return {"early_losses": early}
    records = [json.loads(line) for line in open(log)]
    curve = [(r["iteration"], r["lm_loss"]) for r in records if "lm_loss" in r]
    return {"curve": curve, "final_valid_loss": summary["valid_loss"], "skipped": summary["skipped"],
            "early_losses": early}


def early_gap(losses: list[float], reference: list[float]) -> dict:
    """Relative training-loss gap to the reference at each of the first steps, and its summary."""
    gaps = [(x - r) / r for x, r in zip(losses, reference)]
    return {"per_step": gaps, "max_abs": max(abs(g) for g in gaps), "step_10": gaps[9] if len(gaps) >= 10 else None,
            "steps": len(gaps)}


def plot(results: dict, path: str) -> bool:
    drawn = plot_curves(results, path, "training lm loss", "megatron_fp8: loss by precision level (default corpus, "
                        "same init)", log_scale=True)
    early = {level: r["early_gap"]["per_step"] for level, r in results.items() if "early_gap" in r}
    if drawn and early:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for level, gaps in early.items():
            ax.plot(range(1, len(gaps) + 1), [100 * g for g in gaps], label=level, linewidth=1)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss vs off (%)")
        ax.set_title(f"early-training gap, steps 1-{EARLY_STEPS}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.replace(".png", "_early.png"), dpi=120)
    return drawn


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
        ref, ref_early = results["off"]["final_valid_loss"], results["off"].get("early_losses")
        for level, r in results.items():
            r["valid_vs_off"] = (r["final_valid_loss"] - ref) / ref
            line = f"{level:5s} final validation loss {r['final_valid_loss']:.5f} ({100 * r['valid_vs_off']:+.3f}% vs off)"
            if ref_early and r.get("early_losses"):
                r["early_gap"] = early_gap(r["early_losses"], ref_early)
                e = r["early_gap"]
                line += (f" | early gap (steps 1-{e['steps']}): step 10 {100 * e['step_10']:+.2f}%, "
                         f"largest {100 * e['max_abs']:.2f}%")
            print(line)
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    if plot(results, os.path.join(RESULTS, "parity.png")):
        print("wrote bench/results/parity.png")
    return saved


def _saved_level(level: str) -> tuple[dict, dict]:
    """(config, result) of a level measured before, from its own file or the combined one."""
    path = os.path.join(RESULTS, f"parity_level_{level}.json")
    if os.path.exists(path):
        one = json.load(open(path))
        return one["config"], one["result"]
    combined = json.load(open(os.path.join(RESULTS, "parity.json")))
    if level not in combined["results"]:
        raise SystemExit(f"--early-only: no full run of level {level} in {RESULTS} to add steps 1-{EARLY_STEPS} to")
    return combined["config"], combined["results"][level]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="", help="suffix of the result names of the levels run with the extra flags")
    p.add_argument("--levels", default="off,gemm,O1,O2,O3")
    p.add_argument("--summarize-only", action="store_true", help="combine the levels measured so far")
    p.add_argument("--early-only", action="store_true",
                   help=f"train steps 1-{EARLY_STEPS} only and add them to the level's saved result")
    for name, default in [("train_iters", 1000), ("layers", 4), ("hidden", 256), ("heads", 4), ("seq", 128),
                          ("batch", 8), ("eval_iters", 20), ("log_interval", 10)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    a = p.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    for level in [] if a.summarize_only else a.levels.split(","):
        result = run_level(level, a, extra)
        key = level + (a.tag if level != "off" else "")
        config = {**vars(a), "extra_flags": extra if level != "off" else []}
        if a.early_only:  # keep the level's final result and the run it came from
            config, saved = _saved_level(key)
            result = {**saved, **result}
        with open(os.path.join(RESULTS, f"parity_level_{key}.json"), "w") as f:
            json.dump({"level": key, "config": config, "result": result}, f)
        print(f"{key:5s} final validation loss {result.get('final_valid_loss')} "
              f"(skipped steps: {result.get('skipped')})", flush=True)
    summarize()


if __name__ == "__main__":
    main()
