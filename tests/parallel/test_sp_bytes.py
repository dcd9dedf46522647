"""Byte counters around one forward in TP2+SP: the sequence-parallel all-gathers feeding FP8 linears move
one byte per element at O2 and four (FP32) at ``off``.

Bytes follow docs/design.md §3's bus convention: an all-gather of a full tensor of S bytes over N ranks counts
(N-1)/N * S for each rank, i.e. (tp-1) x (elements of this rank's shard) x bytes per element.
"""

import pytest

from .conftest import LAYOUTS
from .variants import model_config

TP = LAYOUTS["TP2+SP"][0]


def full_activation_elements(config) -> int:
    """[s, b, h] of one micro-batch: what each linear's input all-gather reassembles."""
    m, t = config.model, config.training
    return m.seq_length * t.micro_batch_size * m.hidden_size


@pytest.mark.parametrize("level,linear_bytes", [("O2", 1), ("off", 4)])
def test_sequence_parallel_all_gather_bytes(runs, level, linear_bytes):
    config = model_config("gpt", level, TP, 1, True)
    full, layers = full_activation_elements(config), config.model.num_layers
    per_gather = (TP - 1) * (full // TP)  # elements sent: (tp-1)/tp of the full activation
    for rank in runs.layout("TP2+SP"):
        run = rank[level]
        sp = [g for g in run["forward_gathers"] if g["tag"] == "sp"]
        # before qkv and fc1 of every layer, then once before the output head (compute dtype, never FP8)
        assert len(sp) == 2 * layers + 1
        for g in sp[:-1]:
            assert (g["local"], g["gathered"]) == (full // TP, full)
            assert g["itemsize"] == linear_bytes and g["bytes"] == per_gather * linear_bytes
        assert sp[-1]["itemsize"] == 4 and sp[-1]["bytes"] == per_gather * 4
        # The counter read around the whole forward: those gathers plus the reduce-scatters after the
        # row-parallel linears (proj, fc2), which sum partial outputs and so stay in FP32.
        reduce_scatters = 2 * layers * per_gather * 4
        assert run["forward_bytes"]["sp"] == 2 * layers * per_gather * linear_bytes + per_gather * 4 + reduce_scatters


def test_fp8_gathers_need_one_amax_all_reduce_per_cast(runs):
    """One shared scale over the TP group costs a 4-byte max all-reduce per FP8 input cast, not a gather
    of scales: every TP rank casts its rows with the same scale."""
    m = model_config("gpt", "O2", TP, 1, True).model
    for rank in runs.layout("TP2+SP"):
        casts = 4 * m.num_layers  # input casts of qkv, proj, fc1, fc2
        assert rank["O2"]["forward_bytes"]["amax"] == casts * 2 * (TP - 1) / TP * 4
        assert "amax" not in rank["off"]["forward_bytes"]
