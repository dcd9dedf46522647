"""Memory of --first-last-layers-bf16 (the first and last transformer layers out of FP8, at `off`'s bytes):
the planner and a real run of the same model, at O2 with and without the flag, and at `off`.

    python bench/first_last_layers.py [--layers 12 --hidden 768 --heads 12 --vocab 32000 --seq 256 --batch 1]

Each configuration trains two steps in its own process (so each has its own peak RSS) and reports the
trainer's per-category bytes (real tensors), the planner's for the same config, the model-state bytes per
linear-weight parameter, and the process's peak RSS. Writes bench/results/first_last_layers.json.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

from results_io import save_results
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.memory import plan_memory
from megatron_fp8.process_memory import peak_rss_bytes
from megatron_fp8.training import Trainer

CASES = {"off": ("off", False), "O2": ("O2", False), "O2 first-last": ("O2", True)}
STATES = ("weights", "grads", "master", "exp_avg", "exp_avg_sq")


def config(a, level: str, flag: bool) -> Config:
    return Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                                    seq_length=a.seq, vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0),
                  precision=PrecisionConfig(fp8_level=level, first_last_layers_bf16=flag),
                  training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch, seed=1))


def planned(a, level: str, flag: bool) -> dict:
    plan = plan_memory(config(a, level, flag), 1, device="cpu")
    mem = plan.as_trainer_memory()
    return {"memory": mem, "model_states": sum(mem[k] for k in STATES),
            "bytes_per_linear_param": plan.planned_linear_bytes_per_param,
            "bytes_per_fp8_param": plan.planned_bytes_per_param if plan.eligible_params else None,
            "high_precision_params": plan.high_precision_params, "params": plan.params_total}


def run_one(a, level: str, flag: bool) -> dict:
    """Two training steps in this process: the trainer's categories and the process's peak RSS."""
    torch.manual_seed(0)
    trainer = Trainer(config(a, level, flag))
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    batch = {"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(tokens.shape),
             "position_ids": torch.arange(a.seq).expand_as(tokens)}
    losses = [trainer.train_step([batch], 1e-4).loss for _ in range(2)]
    mem = trainer.memory()
    return {"memory": mem, "model_states": sum(mem[k] for k in STATES), "losses": losses,
            "peak_rss": peak_rss_bytes()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 12), ("hidden", 768), ("heads", 12), ("vocab", 32000), ("seq", 256),
                          ("batch", 1)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)  # run one case, print its JSON
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "first_last_layers.json"))
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a, *CASES[a.one])))
        return
    shape = [f"--{k}={getattr(a, k)}" for k in ("layers", "hidden", "heads", "vocab", "seq", "batch")]
    settings = {**{k: getattr(a, k) for k in ("layers", "hidden", "heads", "vocab", "seq", "batch")},
                "cpu_flags": _cpu_flags(), "steps": 2}
    results = {"cases": {}}
    for name, (level, flag) in CASES.items():
        out = subprocess.run([sys.executable, __file__, "--one", name, *shape], check=True, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        results["cases"][name] = {"planned": planned(a, level, flag), "measured": measured}
    base = results["cases"]["O2"]
    print(f"{'case':14s} {'model states MB (real / plan)':>30s} {'x O2':>6s} {'B/linear param':>15s} "
          f"{'activations MB':>15s} {'peak RSS MB':>12s}")
    for name, r in results["cases"].items():
        real, plan = r["measured"], r["planned"]
        r["model_states_vs_O2"] = real["model_states"] / base["measured"]["model_states"]
        r["peak_rss_vs_O2"] = real["peak_rss"] / base["measured"]["peak_rss"]
        print(f"{name:14s} {real['model_states'] / 1e6:14.1f} / {plan['model_states'] / 1e6:13.1f} "
              f"{r['model_states_vs_O2']:6.3f} {plan['bytes_per_linear_param']:15.2f} "
              f"{real['memory']['activations_peak'] / 1e6:15.1f} {real['peak_rss'] / 1e6:12.0f}")
    save_results(a.out, settings, results["cases"])


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        return " ".join(x for x in flags if x in ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
