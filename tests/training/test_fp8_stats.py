"""--fp8-stats-interval end to end: free when off, rows in --log-json, the log line, warnings, TensorBoard,
and a larger --fp8-margin measurably raising underflow."""

import json
import os
import sys

import pytest

from megatron_fp8.fp8 import stats
from megatron_fp8.metrics import MetricsLogger
from megatron_fp8.stats_collector import Fp8StatsCollector, log_line_part, worst_per_role
from megatron_fp8.training import Trainer

from ..parallel.stats_workers import stats_config, train_with_stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import pretrain_gpt  # noqa: E402

FIGURES = {"amax", "scale_exp", "underflow", "saturation", "rel_error"}
SMALL = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--num-layers", "1",
         "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "8", "--micro-batch-size", "2",
         "--global-batch-size", "2", "--eval-iters", "0", "--lr-warmup-iters", "1"]


def _raise(*args, **kwargs):
    raise AssertionError("an FP8 statistic was computed")


def test_interval_zero_computes_no_statistic(monkeypatch):
    monkeypatch.setattr(stats, "measure", _raise)
    trainer = Trainer(stats_config("O2", interval=0))
    assert train_with_stats(trainer, steps=1) == {}
    assert not stats.RECORDER.active
    # the patched function is the one the quantization points reach: on a statistics iteration it raises
    trainer.config.training.fp8_stats_interval = trainer.progress.iteration + 1  # the next one is due
    with pytest.raises(AssertionError, match="statistic was computed"):
        train_with_stats(trainer, steps=1)
    assert not stats.RECORDER.active  # an interrupted statistics iteration leaves the recorder off


def test_larger_margin_raises_measured_underflow():
    def underflow(margin):
        figures = train_with_stats(Trainer(stats_config("O2", margin=margin)))
        return sum(f["underflow"] for f in figures.values()) / len(figures), figures

    low, low_figures = underflow(0)
    high, high_figures = underflow(6)
    assert set(low_figures) == set(high_figures)
    assert high > low
    # the margin moves every current-scaling scale down by exactly 2^6
    name = "decoder.layers.0.mlp.linear_fc1.weight.exp_avg"
    assert high_figures[name]["scale_exp"] == low_figures[name]["scale_exp"] - 6


def test_blockwise_recipe_measures_its_tile_casts():
    config = stats_config("O2")
    config.precision.recipe.recipe = "blockwise"
    figures = train_with_stats(Trainer(config))
    roles = {name.rsplit(".", 1)[-1] for name in figures}
    assert {"input", "weight", "grad_output", "wgrad", "exp_avg"} <= roles
    # one scale per 1x128 tile: no activation value is clamped
    assert all(f["saturation"] == 0.0 for n, f in figures.items() if n.endswith(".input"))


def test_log_json_rows_log_line_and_warnings(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    pretrain_gpt.main(SMALL + ["--train-iters", "3", "--log-interval", "1", "--fp8-stats-interval", "2",
                               "--fp8-margin", "6", "--fp8-stats-warn-underflow", "0.001",
                               "--log-json", str(log), "--data-cache-path", str(tmp_path / "cache")])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    with_stats = [r for r in rows if "fp8_stats" in r]
    assert [r["iteration"] for r in with_stats] == [2] and with_stats[0]["fp8_stats_iteration"] == 2
    figures = with_stats[0]["fp8_stats"]
    assert all(set(f) == FIGURES for f in figures.values())
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if " iteration " in line and "/       3 |" in line]
    assert ["fp8 stats (worst" in line for line in lines] == [False, True, False]
    offending = sorted(n for n, f in figures.items() if f["underflow"] > 0.001)
    assert offending, "a margin of 6 leaves some tensor with underflow"
    warned = sorted(line.split("FP8 tensor ")[1].split(":")[0] for line in (out.out + out.err).splitlines()
                    if "--fp8-stats-warn-underflow" in line and "WARNING" in line)
    assert warned == offending


class _Writer:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)

    def close(self):
        pass


def test_tensorboard_gets_the_worst_tensor_per_role():
    figures = {"a.input": {"amax": 1.0, "scale_exp": 8, "underflow": 0.1, "saturation": 0.0, "rel_error": 0.02},
               "b.input": {"amax": 2.0, "scale_exp": 7, "underflow": 0.3, "saturation": 0.01, "rel_error": 0.01},
               "b.weight.exp_avg": {"amax": 1e-3, "scale_exp": 18, "underflow": 0.5, "saturation": 0.0,
                                    "rel_error": 0.03}}
    logger, lines = MetricsLogger(10, printer=lambda line: lines.append(line)), []
    logger.writer = _Writer()
    logger.log_iteration({"iteration": 4, "consumed_samples": 8, "step_time_s": 0.1, "tflops": 0.0,
                          "tokens_per_sec": 1.0, "lr": 1e-3, "global_batch_size": 2, "lm_loss": 1.0,
                          "grad_norm": 1.0, "skipped_iterations": 0, "nan_iterations": 0, "mem": {},
                          "fp8_stats_iteration": 3, "fp8_stats": figures})
    s = logger.writer.scalars
    assert s["fp8-stats/input/underflow"] == (0.3, 3) and s["fp8-stats/input/rel_error"] == (0.02, 3)
    assert s["fp8-stats/exp_avg/underflow"] == (0.5, 3)
    assert worst_per_role(figures)["input"]["underflow"] == (0.3, "b.input")
    assert log_line_part(figures) in lines[0]
    assert "exp_avg 50.00%/0.00%/3.00e-02" in lines[0]


def test_collector_is_idle_off_its_iterations():
    trainer = Trainer(stats_config("gemm", interval=2))
    collector = Fp8StatsCollector.for_trainer(trainer)
    assert [collector.due(i) for i in range(1, 5)] == [False, True, False, True]
    with collector.iteration(1):
        assert not stats.RECORDER.active
    assert collector.take() == {}
