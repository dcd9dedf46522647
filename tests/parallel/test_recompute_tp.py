"""Recomputation under TP2 with sequence parallelism is bit-identical to keeping activations on every rank
(tests/model/test_recompute.py does the single process)."""

from .harness import spawn
from .recompute_workers import recompute_worker


def test_recompute_under_tp2_sequence_parallel_is_bit_identical():
    kinds = ("full-uniform", "selective")
    assert spawn(recompute_worker, 2, "O2", kinds) == [list(kinds)] * 2
