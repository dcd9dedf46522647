"""A run that diverges stops with a clear message and saves nothing of the broken state (issue 17, item 6)."""

import json
import math
import os
import sys

import pytest

from megatron_fp8.divergence import DivergenceGuard, TrainingDiverged
from megatron_fp8.optim.loss_scaler import DynamicLossScaler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import pretrain_gpt  # noqa: E402

from .test_pretrain_cli import TINY  # noqa: E402


def diverging_run(tmp_path, capsys, *flags) -> str:
    """--lr 1e4 (the issue's reproduction): every step after the second is NaN. Returns stderr."""
    save = tmp_path / "ckpt"
    with pytest.raises(SystemExit) as exit_:
        pretrain_gpt.main(TINY + ["--lr", "1e4", "--train-iters", "8", "--save", str(save), "--save-interval", "100",
                                  "--data-cache-path", str(tmp_path / "cache"), *flags])
    assert exit_.value.code == 1
    assert not os.path.exists(save / "latest_checkpointed_iteration.txt"), "a diverged state was saved"
    return capsys.readouterr().err


def test_nan_loss_stops_the_run(tmp_path, capsys):
    err = diverging_run(tmp_path, capsys)
    assert "iteration 3: found NaN in the loss (--check-for-nan-in-loss-and-grad)" in err
    assert "no checkpoint of this state is saved" in err


def test_consecutive_skipped_steps_stop_the_run_without_the_nan_check(tmp_path, capsys):
    err = diverging_run(tmp_path, capsys, "--no-check-for-nan-in-loss-and-grad",
                        "--max-consecutive-skipped-iterations", "2")
    assert "iteration 4: 2 iterations in a row were skipped" in err
    assert "--max-consecutive-skipped-iterations 2" in err


def test_guard_counts_only_consecutive_skips_and_lets_single_overflows_pass():
    guard = DivergenceGuard(check_nan=True, max_consecutive_skipped=3, has_loss=True, world_size=1)
    for it, skipped in enumerate([True, True, False, True, True], 1):  # inf overflows: skipped, not NaN
        guard.check(it, 2.0, math.inf if skipped else 1.0, skipped, None)
    with pytest.raises(TrainingDiverged, match="iteration 6: 3 iterations in a row"):
        guard.check(6, 2.0, math.inf, True, "ckpt/iter_0000002")
    off = DivergenceGuard(check_nan=False, max_consecutive_skipped=0, has_loss=True, world_size=1)
    for it in range(20):
        off.check(it, math.nan, math.nan, True, None)  # both checks off: Megatron's behaviour before them


def test_nan_loss_is_ignored_on_stages_without_a_loss():
    """Only the last pipeline stage has a loss; the others report NaN as 'no loss here'."""
    guard = DivergenceGuard(check_nan=True, max_consecutive_skipped=3, has_loss=False, world_size=1)
    guard.check(1, math.nan, 1.0, False, None)
    with pytest.raises(TrainingDiverged, match="NaN in the gradient norm"):
        guard.check(2, math.nan, math.nan, True, None)


def test_flags_parse_with_megatrons_names():
    from megatron_fp8.arguments import parse_config

    t = parse_config(TINY).training
    assert t.check_for_nan_in_loss_and_grad and t.max_consecutive_skipped_iterations == 10
    t = parse_config(TINY + ["--no-check-for-nan-in-loss-and-grad", "--max-consecutive-skipped-iterations", "0"]).training
    assert not t.check_for_nan_in_loss_and_grad and t.max_consecutive_skipped_iterations == 0
    with pytest.raises(SystemExit):
        parse_config(TINY + ["--max-consecutive-skipped-iterations", "-1"])


def test_fp16_overflows_belong_to_the_loss_scaler():
    """Under dynamic loss scaling an overflow's NaN/inf gradient norm skips the step and backs the scale off;
    skips count towards the limit only once the scale sits at --min-loss-scale; a NaN loss still stops."""
    scaler = DynamicLossScaler(2.0 ** 4, min_scale=1.0, hysteresis=1)
    guard = DivergenceGuard(check_nan=True, max_consecutive_skipped=2, has_loss=True, world_size=1,
                            loss_scaler=scaler)
    for it in range(1, 5):  # 16 -> 8 -> 4 -> 2 -> 1: expected overflows, not counted
        scaler.update(True)
        guard.check(it, 2.0, math.nan, True, None)
    assert scaler.scale == 1.0 and guard.consecutive == 1  # the step that reached the minimum counts
    scaler.update(True)
    with pytest.raises(TrainingDiverged, match="iteration 5: 2 iterations in a row"):
        guard.check(5, 2.0, math.nan, True, None)
    with pytest.raises(TrainingDiverged, match="NaN in the loss"):
        DivergenceGuard(True, 0, True, 1, loss_scaler=DynamicLossScaler(8.0)).check(1, math.nan, 1.0, False, None)


def test_fp16_run_starts_at_megatrons_initial_scale_and_trains(tmp_path):
    """--fp16 starts at 2^32 (Megatron's --initial-loss-scale default): the first steps overflow and are
    skipped while the scale backs off; the run goes on and applies steps."""
    pretrain_gpt.main(TINY + ["--fp16", "--fp8-level", "off", "--train-iters", "60", "--hysteresis", "1",
                              "--log-interval", "20", "--eval-iters", "0",
                              "--data-cache-path", str(tmp_path / "cache"), "--log-json", str(tmp_path / "log.json")])
    rows = [json.loads(line) for line in open(tmp_path / "log.json")]
    last = [r for r in rows if "loss_scale" in r][-1]
    assert last["iteration"] == 60 and last["loss_scale"] < 2.0 ** 32
    assert 0 < last["skipped_iterations"] < 60
