"""Per-iteration time and model-state bytes per parameter for each precision level on one model, beside a
plain PyTorch FP32 GPT of the same shape (nn.Linear, torch.optim.AdamW). Writes bench/results/train_step.json.

    python bench/train_step.py [--layers 4 --hidden 256 --heads 4 --vocab 8192 --seq 256 --batch 8 --steps 5]

Timings are medians over ``--steps`` after two warm-up steps, all in one run (this machine is noisy:
compare ratios, not absolute numbers).
"""

import argparse
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


from results_io import save_results
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.layers.weights import param_info
from megatron_fp8.training import Trainer

LEVELS = ["off", "gemm", "O1", "O2", "O3"]


class PlainGPT(nn.Module):
    """The reference: the same GPT shape in plain PyTorch modules."""

    def __init__(self, a):
        super().__init__()
        self.emb, self.pos = nn.Embedding(a.vocab, a.hidden), nn.Embedding(a.seq, a.hidden)
        layer = nn.TransformerEncoderLayer(a.hidden, a.heads, 4 * a.hidden, dropout=0.0, activation="gelu",
                                           norm_first=True, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, a.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(a.hidden)
        self.mask = nn.Transformer.generate_square_subsequent_mask(a.seq)

    def forward(self, tokens, labels):
        h = self.emb(tokens) + self.pos(torch.arange(tokens.shape[1]))
        h = self.norm(self.blocks(h, mask=self.mask, is_causal=True))
        return F.cross_entropy((h @ self.emb.weight.t()).flatten(0, 1), labels.flatten())


def _nbytes(t):
    return t.numel() * t.element_size()


def time_steps(step, n):
    for _ in range(2):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_plain(a, tokens, labels):
    model = PlainGPT(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step():
        opt.zero_grad(set_to_none=True)
        model(tokens, labels).backward()
        opt.step()

    sec = time_steps(step, a.steps)
    n = sum(p.numel() for p in model.parameters())
    state = sum(p.numel() * 4 * 4 for p in model.parameters())  # weight, grad, exp_avg, exp_avg_sq
    return {"step_time_s": sec, "params": n, "model_state_bytes_per_param": state / n}


def level_step(a, level, tokens, labels):
    """(trainer, one training step) of our GPT at ``level`` on the given batch, no dropout."""
    cfg = Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                                   seq_length=a.seq, vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0),
                 precision=PrecisionConfig(fp8_level=level),
                 training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch))
    trainer = Trainer(cfg)
    batch = {"tokens": tokens, "labels": labels, "loss_mask": torch.ones(tokens.shape),
             "position_ids": torch.arange(a.seq).expand_as(tokens)}
    return trainer, lambda: trainer.train_step([batch], 1e-4)


def bench_level(a, level, tokens, labels):
    trainer, step = level_step(a, level, tokens, labels)
    sec = time_steps(step, a.steps)
    mem = trainer.memory()
    eligible = [(n, p) for n, p in trainer.model.named_parameters() if param_info(p).fp8_eligible]
    n_all, n_elig = sum(p.numel() for p in trainer.params), sum(p.numel() for _, p in eligible)
    measured = sum(_nbytes(p) + _nbytes(p.main_grad.data if hasattr(p.main_grad, "scale_inv") else p.main_grad)
                   + sum(_nbytes(t) for t in trainer.optimizer.state[n].tensors().values() if t.dim())
                   for n, p in eligible)
    return {"step_time_s": sec, "params": n_all,
            "model_state_bytes_per_param": sum(v for k, v in mem.items() if k != "activations_peak") / n_all,
            "eligible_bytes_per_param_design": trainer.policy.eligible_bytes_per_param(),
            "eligible_bytes_per_param_measured": measured / n_elig, "mem": mem,
            "eligible_params": n_elig}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("vocab", 8192), ("seq", 256),
                          ("batch", 8), ("steps", 5), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_step.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = torch.randint(0, a.vocab, (a.batch, a.seq))
    results = {"plain_fp32": bench_plain(a, tokens, labels)}
    for level in LEVELS:
        results[level] = bench_level(a, level, tokens, labels)
    base = results["plain_fp32"]["step_time_s"]
    print(f"{'run':12s} {'s/step':>8s} {'vs plain FP32':>14s} {'state B/param (all)':>20s} "
          f"{'B/eligible measured':>20s} {'DESIGN':>7s}")
    for name, r in results.items():
        r["vs_plain_fp32"] = r["step_time_s"] / base
        print(f"{name:12s} {r['step_time_s']:8.3f} {r['vs_plain_fp32']:14.2f} {r['model_state_bytes_per_param']:20.2f} "
              f"{r.get('eligible_bytes_per_param_measured', 16):20.2f} {r.get('eligible_bytes_per_param_design', 16):7g}")
    save_results(a.out, vars(a), results)


if __name__ == "__main__":
    main()
