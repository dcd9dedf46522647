"""FP8-LM's Figure 1, measured: the largest GPT of a fixed aspect ratio that trains two steps within a
memory budget at each precision level, found by running it, beside the planner's answer.

Shapes: ``L`` layers, hidden ``64 L``, ``L`` heads of 64 (GPT-3's width/depth ratio of its 125M-350M models,
one shape per integer L), vocabulary 32000, sequence 256, micro-batch 1, no dropout. A probe trains two
steps in a fresh process (bench/memory_peak.py's worker) while this script polls the probe's VmHWM and
stops it as soon as it passes the budget, so no probe holds more than the budget (the machine is shared).
The search starts from the planner's answer and brackets it: up while probes fit, down while they do not,
then the largest fitting L is measured (every L reported was run).

    python bench/largest_model.py --budget-gib 3 --levels off,O2,O3

The issue asks for 24 GiB; on a shared 24 GiB machine use a smaller budget (and say so).
Writes bench/results/largest_model.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 1 << 30
MB = 1 << 20
VOCAB, SEQ = 32000, 256


def shape(layers: int) -> dict:
    return {"layers": layers, "hidden": 64 * layers, "heads": layers, "vocab": VOCAB, "seq": SEQ}


def config(level: str, layers: int, fixed: bool = False):
    from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig

    s = shape(layers)
    return Config(model=ModelConfig(num_layers=layers, hidden_size=s["hidden"], num_attention_heads=s["heads"],
                                    seq_length=SEQ, vocab_size=VOCAB, hidden_dropout=0.0, attention_dropout=0.0),
                  precision=PrecisionConfig(fp8_level=level),
                  training=TrainingConfig(micro_batch_size=1, global_batch_size=1))


def planned(level: str, layers: int, fixed: bool) -> tuple[int, int]:
    """(predicted process peak, parameters) from the planner."""
    from megatron_fp8.memory import plan_memory

    plan = plan_memory(config(level, layers), 1, device="cpu", fixed_mmap_threshold=fixed)
    return plan.process_peak, plan.params_total


def planner_largest(level: str, budget: int, fixed: bool, max_layers: int = 64) -> int:
    best = 0
    for layers in range(1, max_layers + 1):
        if planned(level, layers, fixed)[0] <= budget:
            best = layers
    return best


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def probe(level: str, layers: int, budget: int, a) -> dict:
    """Train two steps of this shape; stopped (fits=False) as soon as its peak RSS passes the budget."""
    args = [sys.executable, os.path.join(ROOT, "bench", "memory_peak.py"), "--worker", "--level", level,
            "--recompute", "none", "--steps", str(a.steps), "--batch", "1",
            *(f"--{k}={v}" for k, v in shape(layers).items())]
    if a.fix_mmap_threshold:
        args.append("--fix-mmap-threshold")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stopped = 0, False
    while child.poll() is None:
        peak = max(peak, _hwm(child.pid))
        if peak > budget:
            child.kill()
            stopped = True
            break
        time.sleep(0.05)
    out, err = child.communicate()
    plan_peak, params = planned(level, layers, a.fix_mmap_threshold)
    row = {"level": level, "layers": layers, "hidden": 64 * layers, "params": params, "planned_peak": plan_peak,
           "seconds": round(time.time() - t0, 1)}
    if stopped:
        row.update(fits=False, peak_rss_at_least=peak)
    else:
        if child.returncode:
            raise RuntimeError(f"{level} L={layers} failed:\n{err[-3000:]}")
        r = json.loads(out.strip().splitlines()[-1])
        row.update(fits=r["peak_rss"] <= budget, peak_rss=r["peak_rss"], losses=r["losses"])
    seen = row.get("peak_rss", row.get("peak_rss_at_least"))
    print(f"  {level:4s} L={layers:2d} ({params / 1e6:6.1f}M) {'fits' if row['fits'] else 'over'}: peak RSS "
          f"{'>' if stopped else ''}{seen / MB:7.0f} MB, planned {plan_peak / MB:7.0f} MB ({row['seconds']} s)",
          flush=True)
    return row


def largest_measured(level: str, budget: int, start: int, a) -> tuple[int, list]:
    """The largest L whose probe fits, searching from ``start``: up while probes fit, down while not."""
    rows, results = [], {}

    def fits(layers):
        if layers not in results:
            rows.append(probe(level, layers, budget, a))
            results[layers] = rows[-1]["fits"]
        return results[layers]

    layers = max(1, start)
    if fits(layers):
        while fits(layers + 1):
            layers += 1
        return layers, rows
    while layers > 1 and not fits(layers - 1):
        layers -= 1
    return layers - 1, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-gib", type=float, default=3.0, help="peak RSS budget per run (the issue: 24)")
    p.add_argument("--levels", default="off,O2,O3")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--fix-mmap-threshold", action="store_true", help="probes fix glibc's mmap threshold")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "largest_model.json"))
    a = p.parse_args(argv)
    from results_io import save_results

    budget = int(a.budget_gib * GIB)
    results = {}
    for level in a.levels.split(","):
        guess = planner_largest(level, budget, a.fix_mmap_threshold)
        print(f"{level}: planner says L={guess} ({planned(level, guess, a.fix_mmap_threshold)[1] / 1e6:.1f}M)",
              flush=True)
        found, rows = largest_measured(level, budget, guess, a)
        results[level] = {"planner_layers": guess, "planner_params": planned(level, guess, a.fix_mmap_threshold)[1],
                          "measured_layers": found,
                          "measured_params": planned(level, found, a.fix_mmap_threshold)[1] if found else 0,
                          "probes": rows}
    base = results.get("off", {}).get("measured_params") or None
    print(f"\nlargest GPT (L layers, hidden 64 L) training {a.steps} steps in {a.budget_gib:g} GiB peak RSS:")
    print(f"{'level':6s} {'measured':>18s} {'vs off':>7s} {'planner':>18s}")
    for level, r in results.items():
        ratio = f"{r['measured_params'] / base:.2f}x" if base else "-"
        measured = f"L={r['measured_layers']} {r['measured_params'] / 1e6:.1f}M"
        plan = f"L={r['planner_layers']} {r['planner_params'] / 1e6:.1f}M"
        print(f"{level:6s} {measured:>18s} {ratio:>7s} {plan:>18s}")
    save_results(a.out, vars(a), results)


if __name__ == "__main__":
    main()
