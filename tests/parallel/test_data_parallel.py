"""Data parallelism with FP8 gradient communication and the O3 distributed optimizer (gloo).

Each data-parallel run is compared with the single-process run of the same model, seed and global
batch. Tolerance: the loss within 1% at each of 10 steps (the issue's bound). Where the two runs differ
is only in how gradients are summed: in one FP8 accumulator per rank and then an FP32 sum of the
per-rank FP8 gradients with a fresh requantization, versus one FP8 accumulator over all micro-batches;
each path is within one E4M3 rounding (2^-4 relative) per element of the exact sum, and the loss
averages over ~10^5 such elements, so its difference stays far below 1%.
"""

import pytest
import torch

from ..helpers import PatternDataset, run_steps
from .dp_workers import make_config
from .harness import spawn
from .dp_workers import train
from megatron_fp8.training import Trainer

STEPS = 10
LEVELS = ["off", "O1", "O2", "O3"]


def single_process(level: str, **kw) -> list[float]:
    return run_steps(Trainer(make_config(level, **kw)), PatternDataset(), STEPS)


@pytest.fixture(scope="module")
def reference():
    return {level: single_process(level) for level in LEVELS}


def runs_for(levels, **config):
    out = []
    for level in levels:
        out.append({"name": level, "config": dict(level=level, **config)})
        out.append({"name": f"{level}-distopt", "config": dict(level=level, distopt=True, **config)})
    return out


def assert_close(losses, ref, what):
    for step, (a, b) in enumerate(zip(losses, ref)):
        assert abs(a - b) / b < 0.01, f"{what} step {step + 1}: {a:.5f} vs single-process {b:.5f}"


@pytest.mark.parametrize("world", [2, 4])
def test_dp_matches_single_process(world, reference):
    results = spawn(train, world, runs_for(LEVELS), STEPS)
    for name, res in results[-1].items():
        assert_close(res["losses"], reference[name.split("-")[0]], f"DP{world} {name}")
    # every rank ends with the same model, bit for bit
    for name in results[0]:
        for pname, value in results[0][name]["params"].items():
            for other in results[1:]:
                assert torch.equal(value, other[name]["params"][pname]), f"DP{world} {name}: {pname} diverged"


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_model_parallel_with_dp_at_o3(tp, pp):
    ref = single_process("O3")
    runs = [{"name": "O3-distopt", "config": dict(level="O3", tp=tp, pp=pp, distopt=True)}]
    results = spawn(train, 4, runs, STEPS)
    assert_close(results[-1]["O3-distopt"]["losses"], ref, f"TP{tp}xPP{pp}xDP2 O3")


def test_fp8_gradient_traffic_and_o3_state_bytes():
    """Per parameter and step: FP8 dp-grad bytes <= 0.27x the FP32 all-reduce of `off`; O3 optimizer state
    per rank within 5% of docs/design.md §1's 5/d bytes per FP8-eligible parameter."""
    runs = [{"name": n, "config": dict(level=lvl, hidden=128, distopt=d)}
            for n, lvl, d in [("off", "off", False), ("O1", "O1", False), ("O2", "O2", False),
                              ("O3", "O3", True)]]
    results = spawn(train, 2, runs, 2)
    per_param = {n: sum(r[n]["comm"].get("dp-grad", 0) for r in results) / 2 / results[0][n]["numel"] / 2
                 for n in ("off", "O1", "O2", "O3")}
    assert per_param["off"] == pytest.approx(2 * (2 - 1) / 2 * 4, rel=1e-3)  # ring all-reduce of FP32
    for level in ("O1", "O2", "O3"):
        assert per_param[level] <= 0.27 * per_param["off"], (level, per_param)
    for rank_result in results:
        o3 = rank_result["O3"]
        state = sum(o3["optimizer_bytes"].values())
        non_eligible = o3["numel"] - o3["eligible_numel"]
        expected_eligible = 5 * o3["eligible_numel"] / 2
        # the non-FP8 parameters' FP32 master-free states (2 x 4 bytes) are balanced separately
        eligible_state = state - 8 * non_eligible / 2
        assert abs(eligible_state - expected_eligible) / expected_eligible < 0.05, (state, expected_eligible)


def test_overflow_on_one_rank_skips_everywhere():
    runs = [{"name": "O2", "config": dict(level="O2"), "inject_inf_step": 3},
            {"name": "O3-distopt", "config": dict(level="O3", distopt=True), "inject_inf_step": 3}]
    results = spawn(train, 2, runs, 5)
    for name in ("O2", "O3-distopt"):
        assert [r[name]["skipped"] for r in results] == [1, 1], name
        for pname, value in results[0][name]["params"].items():
            assert torch.equal(value, results[1][name]["params"][pname]), f"{name}: {pname} diverged"


def test_overlapped_reduction_is_bit_identical():
    runs = [{"name": "plain", "config": dict(level="O2", ddp_bucket_size=20000)},
            {"name": "overlap", "config": dict(level="O2", ddp_bucket_size=20000, overlap_grad_reduce=True)}]
    results = spawn(train, 2, runs, 4)
    assert results[-1]["plain"]["losses"] == results[-1]["overlap"]["losses"]
