"""Step time of FP8 levels against ``off`` on the same model, interleaved step by step in one process, so
that a shared machine's load changes hit every level alike. Writes bench/results/step_ratio.json.

    python bench/step_ratio.py [--layers 12 --hidden 768 --heads 12 --vocab 50304 --seq 256 --batch 1]
                               [--levels O2 --rounds 5 --warmup 2]

Each round runs one training step of ``off`` and then one of each level (same batch); after ``--warmup``
rounds, the figure per level is the median over rounds of (level step / ``off`` step of the same round),
beside each level's median step time. Defaults: the 110M GPT of issue 16 (12 layers, hidden 768, 12
heads, vocabulary 50304, sequence 256, micro-batch 1); all models stay resident (~4 GB at these defaults
for ``off`` + O2).
"""

import argparse
import os
import statistics
import time

import torch
from cpu_gemm import cpu_flags
from results_io import save_results
from train_step import level_step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 12), ("hidden", 768), ("heads", 12), ("vocab", 50304), ("seq", 256),
                          ("batch", 1), ("rounds", 5), ("warmup", 2), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--levels", default="O2", help="comma-separated levels timed against off")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "step_ratio.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = torch.randint(0, a.vocab, (a.batch, a.seq))
    names = ["off", *a.levels.split(",")]
    steps = {name: level_step(a, name, tokens, labels)[1] for name in names}
    times = {name: [] for name in names}
    for r in range(a.warmup + a.rounds):
        for name in names:
            start = time.perf_counter()
            steps[name]()
            if r >= a.warmup:
                times[name].append(time.perf_counter() - start)
        print(f"round {r}: " + "  ".join(f"{n} {times[n][-1]:.2f} s" for n in names) if r >= a.warmup
              else f"round {r}: warm-up", flush=True)
    results = {}
    for name in names:
        ratios = [t / t0 for t, t0 in zip(times[name], times["off"])]
        results[name] = {"step_time_s": statistics.median(times[name]), "times_s": times[name],
                         "vs_off_median_ratio": statistics.median(ratios), "vs_off_ratios": ratios}
        print(f"{name:6s} {results[name]['step_time_s']:.3f} s/step (median)  "
              f"{results[name]['vs_off_median_ratio']:.3f}x off (median of per-round ratios)")
    info = cpu_flags()
    print(f"CPU: {info['model']} | flags: {' '.join(info['flags'])} | {a.threads} threads | torch {info['torch']}")
    save_results(a.out, dict(vars(a), cpu=info), results)


if __name__ == "__main__":
    main()
