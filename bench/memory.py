"""Measured model-state bytes per FP8-eligible parameter for each precision level, against
docs/design.md §1 and against the memory planner, plus every measured category against the planner.
Writes bench/results/memory.json.

    python bench/memory.py [--layers 4 --hidden 256 --heads 4 --vocab 8192 --seq 256 --batch 8]
"""

import argparse
import os

import torch


from results_io import save_results
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.layers.weights import param_info
from megatron_fp8.memory import plan_memory
from megatron_fp8.training import Trainer

LEVELS = ["off", "gemm", "O1", "O2", "O3"]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def measure(level: str, a) -> dict:
    cfg = Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                                   seq_length=a.seq, vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0),
                 precision=PrecisionConfig(fp8_level=level),
                 training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch))
    trainer = Trainer(cfg)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    batch = {"tokens": tokens, "labels": tokens, "loss_mask": torch.ones(tokens.shape),
             "position_ids": torch.arange(a.seq).expand_as(tokens)}
    trainer.train_step([batch], 1e-4)
    eligible = [(n, p) for n, p in trainer.model.named_parameters() if param_info(p).fp8_eligible]
    state_bytes = 0
    for name, p in eligible:
        grad = p.main_grad.data if isinstance(p.main_grad, Fp8Tensor) else p.main_grad
        states = trainer.optimizer.state[name].tensors().values()
        state_bytes += _nbytes(p) + _nbytes(grad) + sum(_nbytes(t) for t in states if t.dim())
    measured = trainer.memory()
    plan = plan_memory(cfg, 1, device="cpu").as_trainer_memory()
    n = sum(p.numel() for _, p in eligible)
    return {"bytes_per_eligible_param": state_bytes / n, "design": trainer.policy.eligible_bytes_per_param(),
            "measured": measured, "planned": plan,
            "max_planner_error": max(abs(measured[k] - plan[k]) / max(1, measured[k]) for k in measured)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("vocab", 8192), ("seq", 256),
                          ("batch", 8)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "memory.json"))
    a = p.parse_args(argv)
    results = {level: measure(level, a) for level in LEVELS}
    print(f"{'level':6s} {'B/eligible param':>17s} {'design §1':>10s} {'planner max error':>18s}  measured MB by category")
    for level, r in results.items():
        cats = " ".join(f"{k}={v / 2**20:.1f}" for k, v in r["measured"].items())
        print(f"{level:6s} {r['bytes_per_eligible_param']:17.3f} {r['design']:10g} {100 * r['max_planner_error']:17.2f}%  {cats}")
    save_results(a.out, vars(a), results)


if __name__ == "__main__":
    main()
