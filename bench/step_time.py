"""Time per step of each precision level against plain PyTorch FP32, BF16 autocast (a few steps: very
slow on CPUs without BF16 units) and torchao's float8 training, on the same architecture and batch, in
one run. Writes bench/results/step_time.json.

    pip install torchao   # the `bench` extra
    python bench/step_time.py [--layers 4 --hidden 256 --heads 4 --vocab 8192 --seq 256 --batch 8]

For reference (issue 8): a plain 7.4M-parameter GPT of this default shape measured here 0.70 s/step in
FP32, 1.04 s/step with torchao float8 and 24 s/step under BF16 autocast.
"""

import argparse
import os

import torch


from results_io import save_results
from train_step import LEVELS, PlainGPT, bench_level, time_steps


def bench_plain_variant(a, tokens, labels, variant: str, steps: int) -> dict:
    model = PlainGPT(a)
    if variant == "torchao_float8":
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model.blocks)  # the transformer's linears, as our FP8 levels do
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    autocast = variant == "bf16_autocast"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(tokens, labels)
        loss.backward()
        opt.step()

    return {"step_time_s": time_steps(step, steps), "params": sum(p.numel() for p in model.parameters())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("vocab", 8192), ("seq", 256),
                          ("batch", 8), ("steps", 5), ("bf16_steps", 1), ("threads", 2)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "step_time.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = torch.randint(0, a.vocab, (a.batch, a.seq))
    results = {"plain_fp32": bench_plain_variant(a, tokens, labels, "fp32", a.steps)}
    try:
        results["torchao_float8"] = bench_plain_variant(a, tokens, labels, "torchao_float8", a.steps)
    except ImportError:
        print("torchao not installed (pip install torchao): skipping its float8 baseline")
    for level in LEVELS:
        results[level] = bench_level(a, level, tokens, labels)
    if a.bf16_steps:
        results["bf16_autocast"] = bench_plain_variant(a, tokens, labels, "bf16_autocast", a.bf16_steps)
    base = results["plain_fp32"]["step_time_s"]
    ao = results.get("torchao_float8", {}).get("step_time_s")
    print(f"{'run':16s} {'s/step':>8s} {'vs plain FP32':>14s} {'vs torchao fp8':>15s}")
    for name, r in results.items():
        r["vs_plain_fp32"] = r["step_time_s"] / base
        r["vs_torchao_float8"] = r["step_time_s"] / ao if ao else None
        print(f"{name:16s} {r['step_time_s']:8.3f} {r['vs_plain_fp32']:14.2f} "
              f"{(r['vs_torchao_float8'] or float('nan')):15.2f}")
    save_results(a.out, vars(a), results)


if __name__ == "__main__":
    main()
