"""Bytes moved per parameter per step by tag, and per-rank model-state bytes, for each precision level at
data-parallel sizes 1, 2 and 4 (gloo on localhost). Writes bench/results/comm.json.

    python bench/comm.py [--hidden 256] [--layers 4] [--steps 2]

FP8-LM reported 63-65% less weight-gradient traffic than BF16 Megatron-LM; the reduction printed here is
against `off` with FP32 gradient all-reduce (docs/design.md §3 byte convention: what one rank sends).
"""

import argparse
import os

import numpy as np


from results_io import save_results
from megatron_fp8 import batches
from megatron_fp8.config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.parallel import comm
from megatron_fp8.parallel.groups import build_state
from megatron_fp8.parallel.local_spawn import spawn
from megatron_fp8.training import Trainer

RUNS = [("off", False), ("off+distopt", True), ("O1", False), ("O2", False), ("O3+distopt", True)]


class RandomTokens:
    def __init__(self, vocab, seq):
        self.vocab, self.seq = vocab, seq

    def __len__(self):
        return 1 << 30

    def __getitem__(self, i):
        return {"text": np.random.RandomState(i % (1 << 31)).randint(0, self.vocab, self.seq + 1)}


def worker(rank, world, args):
    out = {}
    for name, distopt in RUNS:
        level = name.split("+")[0]
        cfg = Config(model=ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=4,
                                       seq_length=64, vocab_size=args.vocab, hidden_dropout=0, attention_dropout=0),
                     parallel=ParallelConfig(use_distributed_optimizer=distopt),
                     precision=PrecisionConfig(fp8_level=level),
                     training=TrainingConfig(micro_batch_size=2, global_batch_size=8, lr=1e-4))
        trainer = Trainer(cfg, build_state(cfg, rank, world, world) if world > 1 else None)
        data = RandomTokens(args.vocab, 64)
        comm.COUNTER.take()
        for step in range(args.steps):
            mbs = batches.global_batch(data, step * 8, 8, 2, trainer.pstate.dp_rank, world, "cpu")
            trainer.train_step(mbs, 1e-4)
        moved = comm.COUNTER.take()
        params = sum(p.numel() for p in trainer.params)
        mem = trainer.memory()
        out[name] = {"bytes_per_param_per_step": {k: v / args.steps / params for k, v in moved.items()},
                     "model_state_bytes_per_param": sum(v for k, v in mem.items() if k != "activations_peak") / params,
                     "mem": mem, "params": params}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "comm.json"))
    args = p.parse_args(argv)
    results = {}
    for world in (1, 2, 4):
        ranks = [worker(0, 1, args)] if world == 1 else spawn(worker, world, args)
        results[f"dp{world}"] = ranks[0]
    print(f"{'layout':8s} {'run':12s} {'dp-grad B/param':>16s} {'dp-param B/param':>17s} {'vs off':>8s} "
          f"{'state B/param (rank 0)':>23s}")
    for layout, runs in results.items():
        base = runs["off"]["bytes_per_param_per_step"].get("dp-grad", 0.0)
        for name, r in runs.items():
            grad = r["bytes_per_param_per_step"].get("dp-grad", 0.0)
            param = r["bytes_per_param_per_step"].get("dp-param", 0.0)
            ratio = f"{grad / base:.3f}" if base else "-"
            r["dp_grad_vs_off"] = grad / base if base else None
            print(f"{layout:8s} {name:12s} {grad:16.3f} {param:17.3f} {ratio:>8s} {r['model_state_bytes_per_param']:23.2f}")
    save_results(args.out, vars(args), results)


if __name__ == "__main__":
    main()
