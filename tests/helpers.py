"""Tiny models and a learnable synthetic dataset shared by the training and parallel tests."""

import importlib.util
import os

import numpy as np

from megatron_fp8.config import Config, ModelConfig, ParallelConfig, PrecisionConfig, TrainingConfig
from megatron_fp8.fp8.scaling import Fp8Recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 128
SEQ = 32


class PatternDataset:
    """Sequences ``a, a+d, a+2d, ... (mod VOCAB)``: next tokens are predictable from context, so loss falls.
    ``max_step=1`` gives counting sequences (``d = 1``, as --mock-data), learnt in the first few steps."""

    def __init__(self, n: int = 4096, seed: int = 0, seq: int = SEQ, max_step: int = 6):
        rng = np.random.RandomState(seed)
        self.starts, self.steps = rng.randint(0, VOCAB, n), rng.randint(1, max_step + 1, n)
        self.seq = seq

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        return {"text": (self.starts[i] + self.steps[i] * np.arange(self.seq + 1)) % VOCAB}


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


ODD_SEQ = 12


def odd_shapes_config(level: str = "O2", recipe: str = "delayed", **training) -> Config:
    """A one-layer GPT none of whose FP8 GEMM dimensions is a multiple of 16: hidden 40 (K of QKV and fc1,
    N of their dgrad), QKV 120, tokens per micro-batch 2 x 12 = 24 (K of every weight
    gradient). Train it on ``PatternDataset(seq=ODD_SEQ)``."""
    cfg = tiny_config(level, **{"micro_batch_size": 2, "global_batch_size": 4, **training})
    cfg.model = ModelConfig(num_layers=1, hidden_size=40, num_attention_heads=4, seq_length=ODD_SEQ,
                            vocab_size=VOCAB, make_vocab_size_divisible_by=64, hidden_dropout=0.0,
                            attention_dropout=0.0)
    cfg.precision = PrecisionConfig(fp8_level=level, recipe=Fp8Recipe(recipe=recipe))
    return cfg


def run_steps(trainer, dataset, steps: int) -> list[float]:
    """Train ``steps`` iterations exactly as ``pretrain`` does; returns the loss of each."""
    return [trainer.train_iteration(dataset).loss for _ in range(steps)]


def load_script(relative_path: str):
    """A script of this checkout that is not in a package (bench/*.py), imported as a module."""
    name = os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PackedPatternDataset:
    """Packed SFT-like rows: 1-3 pattern documents per sample, then padding; loss on a varying tail of
    each document (its "assistant" part, 2 to 14 tokens), positions restarting at every document. The
    unmasked-token counts differ from sample to sample, so a per-micro-batch mean differs from the
    global masked mean."""

    def __init__(self, n: int = 512, seed: int = 0):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.RandomState(self.seed * 100003 + i)
        size = SEQ + 1
        tokens, targets = np.zeros(size, np.int64), np.zeros(size, bool)
        documents, positions = np.zeros(size, np.int64), np.zeros(size, np.int64)
        at, doc = 0, 0
        for doc in range(rng.randint(1, 4)):
            n = min(rng.randint(6, 17), size - at)
            if n < 4:
                break
            tokens[at:at + n] = (rng.randint(VOCAB) + rng.randint(1, 7) * np.arange(n)) % VOCAB
            targets[at + n - rng.randint(2, n - 1):at + n] = True
            documents[at:at + n], positions[at:at + n] = doc, np.arange(n)
            at += n
        documents[at:], positions[at:] = doc + 1, np.arange(size - at)  # padding (token 0), no loss
        same = documents[1:] == documents[:-1]
        return {"tokens": tokens[:-1], "labels": tokens[1:], "loss_mask": (targets[1:] & same).astype(np.float32),
                "position_ids": positions[:-1], "document_ids": documents[:-1]}


class _RefuseEveryShape(dict):
    def get(self, key, default=None):
        return "refused on purpose by tests.helpers.dequantized_gemms"


def dequantized_gemms(monkeypatch) -> None:
    """Run the FP8 GEMMs through megatron_fp8.fp8.gemm's dequantize+matmul route for one test: the same
    FP8 operands and scales, exact products, float32 sums in another order. CPU ``torch._scaled_mm`` runs
    at ~90 ns per multiply-add on this machine, more than a test of several training steps can afford;
    tests/fp8 test the ``_scaled_mm`` route itself. The fallback counts of this test are its own."""
    from megatron_fp8.fp8 import gemm

    monkeypatch.setattr(gemm, "_refused", _RefuseEveryShape())
    monkeypatch.setattr(gemm, "FALLBACKS", gemm.GemmFallbacks())
