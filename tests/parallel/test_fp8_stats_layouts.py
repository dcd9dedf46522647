"""FP8 statistics across layouts: a tensor's figures under TP2 equal the single process's (shards of one
tensor merge into the whole), and the FP8 gradient communication (dp_grad) is measured at O2/O3 only."""

import pytest

from megatron_fp8.training import Trainer

from .harness import spawn
from .stats_workers import stats_config, stats_worker, train_with_stats

RUNS = [("TP2", "O2"), ("DP2", "O2"), ("DP2", "O3"), ("DP2", "gemm")]


@pytest.fixture(scope="module")
def spawned():
    return spawn(stats_worker, 2, RUNS)


def _roles(figures: dict) -> set:
    return {name.rsplit(".", 1)[-1] for name in figures}


def test_every_rank_reports_the_same_merged_statistics(spawned):
    for run in RUNS:
        assert spawned[0][run] == spawned[1][run], run


def test_tp2_statistics_equal_the_single_process(spawned):
    single = train_with_stats(Trainer(stats_config("O2")))
    tp2 = spawned[0][("TP2", "O2")]
    operands = [n for n in single if n.endswith((".input", ".grad_output"))]
    assert len(operands) == 8 and set(operands) <= set(tp2)
    # the first GEMM's input is computed identically by both layouts: every figure is equal
    first = "decoder.layers.0.self_attention.linear_qkv.input"
    assert tp2[first] == single[first]
    for name in operands:  # later tensors went through TP reductions (float summation order differs)
        a, b = tp2[name], single[name]
        assert a["scale_exp"] == b["scale_exp"], name
        assert a["amax"] == pytest.approx(b["amax"], rel=1e-4), name
        assert a["rel_error"] == pytest.approx(b["rel_error"], rel=1e-2), name
        assert a["underflow"] == pytest.approx(b["underflow"], abs=2e-3), name
        assert a["saturation"] == pytest.approx(b["saturation"], abs=2e-3), name


def test_dp_grad_and_optimizer_states_appear_at_o2_and_o3_only(spawned):
    for level in ("O2", "O3"):
        roles = _roles(spawned[0][("DP2", level)])
        assert {"input", "grad_output", "wgrad", "exp_avg", "exp_avg_sq", "master", "dp_grad"} <= roles, level
    assert "weight" in _roles(spawned[0][("DP2", "O2")])  # the FP16 weight cast to the FP8 GEMM operand
    gemm = _roles(spawned[0][("DP2", "gemm")])
    assert gemm == {"input", "weight", "grad_output"}
