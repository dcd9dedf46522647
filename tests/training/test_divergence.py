"""A run that diverges stops with a clear message and saves nothing of the broken state (issue 17, item 6)."""

import math
import os
import sys

import pytest

from megatron_fp8.divergence import DivergenceGuard, TrainingDiverged

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
