"""Synthetic documents for --mock-data: no files, deterministic from the seed, learnable structure."""

import numpy as np


class MockLowLevelDataset:
    """Documents of random length in [1, 2 * seq_length]; document i holds (i + position) mod vocab_size,
    so a model can learn to predict the next token (handy for smoke tests). No cache identity: the
    indices are rebuilt in memory, which is cheap at this size."""

    identity = None
    prefix = "mock data"

    def __init__(self, vocab_size: int, seq_length: int, seed: int, num_documents: int = 100_000):
        self.vocab_size = int(vocab_size)
        rng = np.random.RandomState(seed)
        self.sequence_lengths = rng.randint(1, 2 * seq_length + 1, size=num_documents).astype(np.int32)

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        if length is None:
            length = int(self.sequence_lengths[i]) - offset
        return (np.arange(offset, offset + length, dtype=np.int64) + i) % self.vocab_size
