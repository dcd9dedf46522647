"""Tiny models and a learnable synthetic dataset shared by the training and parallel tests."""

import numpy as np

from megatron_fp8 import batches
from megatron_fp8.config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig

VOCAB = 128
SEQ = 32


class PatternDataset:
    """Sequences ``a, a+d, a+2d, ... (mod VOCAB)``: next tokens are predictable from context, so loss falls.
    ``max_step=1`` gives counting sequences (``d = 1``, as --mock-data), learnt in the first few steps."""

    def __init__(self, n: int = 4096, seed: int = 0, max_step: int = 6):
        rng = np.random.RandomState(seed)
        self.starts, self.steps = rng.randint(0, VOCAB, n), rng.randint(1, max_step + 1, n)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        return {"text": (self.starts[i] + self.steps[i] * np.arange(SEQ + 1)) % VOCAB}


def tiny_config(level: str = "O2", tp: int = 1, pp: int = 1, sp: bool = False, **training) -> Config:
    train = dict(micro_batch_size=4, global_batch_size=8, train_iters=50, lr=3e-3, min_lr=3e-4,
                 lr_warmup_iters=5, log_interval=5, eval_interval=25, eval_iters=2, seed=7)
    train.update(training)
    # VOCAB is already a valid padded size for TP <= 2 (multiple of 64 x TP), as the converter computes it
    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=SEQ, vocab_size=VOCAB,
                        make_vocab_size_divisible_by=64, hidden_dropout=0.0, attention_dropout=0.0)
    return Config(model=model, precision=PrecisionConfig(fp8_level=level), training=TrainingConfig(**train),
                  parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                          sequence_parallel=sp))


def run_steps(trainer, dataset, steps: int) -> list[float]:
    """Train ``steps`` iterations the way ``pretrain`` does; returns the loss of each."""
    t, ps = trainer.config.training, trainer.pstate
    losses = []
    for _ in range(steps):
        p = trainer.progress
        p.iteration += 1
        mbs = batches.global_batch(dataset, p.consumed_samples, t.global_batch_size, t.micro_batch_size,
                                   ps.dp_rank, ps.dp_size, trainer.device)
        losses.append(trainer.train_step(mbs, trainer.scheduler.lr(p.iteration)).loss)
        p.consumed_samples += t.global_batch_size
    return losses


class _EveryShape:
    def __contains__(self, key) -> bool:
        return True


def dequantized_gemms(monkeypatch) -> None:
    """Run the FP8 GEMMs through megatron_fp8.fp8.gemm's dequantize+matmul route for one test: the same
    FP8 operands and scales, exact products, float32 sums in another order. CPU ``torch._scaled_mm`` runs
    at ~90 ns per multiply-add on this machine, more than a test of several training steps can afford;
    tests/fp8 test the ``_scaled_mm`` route itself."""
    from megatron_fp8.fp8 import gemm

    monkeypatch.setattr(gemm, "_refused", _EveryShape())
