"""Megatron's schedule flags: sample-based lr warm-up/decay, warm-up fraction, batch-size ramps and step
schedules by consumed samples, --train-samples, decoupled lr, and resume across a batch-size change."""

import json
import math
import os
import sys

import pytest
import torch

from megatron_fp8.arguments import parse_config
from megatron_fp8.optim.lr_scheduler import schedulers
from megatron_fp8.schedule import BatchSchedule, iterations_for_samples, parse_count, training_plan
from megatron_fp8.training import Trainer

from ..helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--mock-data", "--vocab-size", "200", "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2",
        "--seq-length", "16", "--micro-batch-size", "1", "--fp8-level", "off", "--eval-iters", "0"]


def megatron_lr(step: float, max_lr: float, min_lr: float, warmup: float, decay: float, style: str = "cosine"):
    """Megatron's OptimizerParamScheduler.get_lr, written out (steps counted in samples)."""
    if warmup > 0 and step <= warmup:
        return max_lr * step / warmup
    if style == "constant":
        return max_lr
    if step > decay:
        return min_lr
    ratio = (step - warmup) / (decay - warmup)
    coeff = 1.0 - ratio if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return min_lr + coeff * (max_lr - min_lr)


def plan_of(seq_length: int = 32, **training):
    config = tiny_config("off", **training)
    config.model.seq_length = seq_length
    return config, training_plan(config)


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_sample_based_warmup_and_decay(style):
    config, plan = plan_of(micro_batch_size=4, global_batch_size=8, train_iters=None, train_samples=1000,
                           lr_warmup_iters=None, lr_warmup_samples=96, lr_decay_samples=800, lr=1e-3, min_lr=1e-4,
                           lr_decay_style=style)
    main, decoupled = schedulers(config.training, plan)
    assert decoupled is None and plan.lr_warmup_samples == 96 and plan.lr_decay_samples == 800
    assert plan.train_iters == 1000 // 8
    for samples in (0, 8, 48, 96, 104, 400, 448, 799, 800, 808, 1000):
        assert main.lr(samples) == pytest.approx(megatron_lr(samples, 1e-3, 1e-4, 96, 800, style), rel=1e-15, abs=0)
    assert main.lr(48) == pytest.approx(0.5e-3) and main.lr(96) == pytest.approx(1e-3)
    assert main.lr(1000) == (1e-4 if style != "constant" else 1e-3)


def test_decay_defaults_to_train_samples_and_warmup_fraction():
    config, plan = plan_of(micro_batch_size=4, global_batch_size=8, train_iters=None, train_samples=1000,
                           lr_warmup_iters=None, lr_warmup_fraction=0.01)
    assert plan.lr_decay_samples == 1000 and plan.lr_warmup_samples == pytest.approx(10.0)
    main, _ = schedulers(config.training, plan)
    assert main.lr(5) == pytest.approx(megatron_lr(5, 3e-3, 3e-4, 10.0, 1000))
    # iteration-based: the fraction is of --lr-decay-iters x --global-batch-size (430000 x 1536 in the 175B script)
    config, plan = plan_of(micro_batch_size=4, global_batch_size=8, train_iters=50, lr_decay_iters=40,
                           lr_warmup_iters=None, lr_warmup_fraction=0.1)
    assert plan.lr_decay_samples == 320 and plan.lr_warmup_samples == pytest.approx(32.0)
    assert config.training.lr_warmup_iters == 0


def test_iteration_based_flags_count_in_samples_and_match_iterations():
    """--lr-warmup-iters / --lr-decay-iters become iters x global batch samples: lr(k x G) is Megatron's lr at
    iteration k, and Trainer iteration k uses it."""
    config, plan = plan_of(micro_batch_size=4, global_batch_size=8, train_iters=20, lr_warmup_iters=5)
    main, _ = schedulers(config.training, plan)
    assert (plan.lr_warmup_samples, plan.lr_decay_samples, plan.train_iters) == (40, 160, 20)
    for k in (1, 5, 6, 13, 20):
        assert main.lr(8 * k) == pytest.approx(megatron_lr(k, 3e-3, 3e-4, 5, 20), rel=1e-15)


def test_rampup_batch_size_by_consumed_samples():
    """The 175B script's --rampup-batch-size 16 16 5859375 to 1536: 95 increments every 61677.6 samples."""
    ramp = BatchSchedule(final=1536, rampup=(16, 16, 5859375))
    per = 5859375 / 95
    assert [ramp.at(s) for s in (0, 61677, 61678, int(2 * per), int(2 * per) + 1)] == [16, 16, 32, 32, 48]
    assert ramp.at(5859374) == 1520 and ramp.at(5859375) == 1536 and ramp.at(10 ** 9) == 1536
    assert ramp.sizes() == list(range(16, 1537, 16))
    for consumed in (0, 61677, 3_000_000, 5859374):  # next_change is where at() changes, exactly
        change = ramp.next_change(consumed)
        assert ramp.at(change) != ramp.at(consumed) and ramp.at(change - 1) == ramp.at(consumed)
    assert ramp.next_change(5859375) is None


def test_step_batch_size_schedule_thresholds_are_tokens():
    """The current 175B script's schedule at --seq-length 2048: 2.4B tokens = 1171875 samples."""
    config, plan = plan_of(seq_length=2048, micro_batch_size=16, global_batch_size=None,
                           step_batch_size_schedule="0:16 2.4B:320 4.8B:624 7.2B:928 9.6B:1232 12B:1536")
    batch = plan.batch
    assert config.training.global_batch_size == 1536 and batch.final == 1536
    assert batch.steps == ((0, 16), (1171875, 320), (2343750, 624), (3515625, 928), (4687500, 1232), (5859375, 1536))
    assert [batch.at(s) for s in (0, 1171874, 1171875, 5859374, 5859375)] == [16, 16, 320, 1232, 1536]
    assert parse_count("2.4B", "x") == 2_400_000_000 and parse_count("12b", "x") == 12 * 10 ** 9
    assert parse_count("0.5K", "x") == 500 and parse_count("7", "x") == 7 and parse_count("1T", "x") == 10 ** 12


@pytest.mark.parametrize("schedule", [BatchSchedule(final=8), BatchSchedule(final=12, rampup=(2, 2, 37)),
                                      BatchSchedule(final=6, steps=((0, 2), (10, 5), (31, 3), (40, 6)))])
@pytest.mark.parametrize("train_samples", [1, 7, 40, 41, 100, 1001])
def test_train_samples_to_iterations(schedule, train_samples):
    """--train-samples gives the iterations of whole global batches that fit (a partial last batch is dropped)."""
    consumed = iterations = 0
    while consumed + schedule.at(consumed) <= train_samples:
        consumed += schedule.at(consumed)
        iterations += 1
    assert iterations_for_samples(schedule, train_samples) == iterations
    if schedule.rampup is None and not schedule.steps:
        assert iterations == train_samples // 8  # Megatron's constant-batch rule


@pytest.mark.parametrize("flags,message", [
    (["--train-samples", "100", "--train-iters", "5"], "--train-iters is for iteration-based training"),
    (["--train-samples", "100", "--lr-decay-iters", "5"], "--lr-decay-iters is for iteration-based"),
    (["--train-samples", "100", "--lr-warmup-iters", "5"], "--lr-warmup-iters is for iteration-based"),
    (["--lr-decay-samples", "100"], "--lr-decay-samples needs --train-samples"),
    (["--lr-warmup-samples", "10"], "--lr-warmup-samples needs --train-samples"),
    (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"], "give one of --lr-warmup-fraction"),
    (["--lr-warmup-fraction", "1.5"], "--lr-warmup-fraction must be in [0, 1]"),
    (["--rampup-batch-size", "4", "4", "100"], "--rampup-batch-size needs --global-batch-size"),
    (["--global-batch-size", "10", "--rampup-batch-size", "4", "4", "100"], "must be START plus a whole number"),
    (["--global-batch-size", "8", "--rampup-batch-size", "4", "4", "0"], "must be positive"),
    (["--global-batch-size", "8", "--step-batch-size-schedule", "0:4 1K:16"], "--global-batch-size 8 differs"),
    (["--step-batch-size-schedule", "0:4 1K"], "entry '1K' is not THRESHOLD:BATCH_SIZE"),
    (["--step-batch-size-schedule", "0:4 1Q:8"], "'1Q' is not a number"),
    (["--step-batch-size-schedule", "16:4 1K:8"], "the first threshold must be 0"),
    (["--step-batch-size-schedule", "0:4 8:8"], "threshold 8 tokens is 0 samples at --seq-length 16"),
    (["--step-batch-size-schedule", "0:4 1K:0"], "has batch size 0"),
    (["--step-batch-size-schedule", "0:4", "--rampup-batch-size", "1", "1", "4"], "give one batch-size schedule"),
    (["--decoupled-min-lr", "1e-5"], "--decoupled-min-lr needs --decoupled-lr"),
    (["--decoupled-lr", "1e-5", "--min-lr", "1e-4"], "exceeds --decoupled-lr"),
    (["--exit-duration-in-mins", "0"], "--exit-duration-in-mins must be positive"),
])
def test_schedule_flag_errors_name_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(TINY + flags)
    assert message in capsys.readouterr().err


def test_every_scheduled_batch_size_must_split_into_micro_batches():
    config = parse_config(TINY + ["--micro-batch-size", "2", "--step-batch-size-schedule", "0:2 64:3 128:4"])
    with pytest.raises(ValueError, match="--step-batch-size-schedule: batch size 3 is not divisible by "
                                         "--micro-batch-size 2 x data-parallel size 1"):
        config.validate_layout(1)
    config = parse_config(TINY + ["--micro-batch-size", "2", "--global-batch-size", "8",
                                  "--rampup-batch-size", "2", "2", "10"])
    with pytest.raises(ValueError, match="--rampup-batch-size: batch size 2 is not divisible by "
                                         "--micro-batch-size 2 x data-parallel size 2"):
        config.validate_layout(2)


@pytest.mark.parametrize("schedule", [dict(step_batch_size_schedule="0:4 0.512K:8"),  # 16 samples at seq 32
                                      dict(rampup_batch_size=[4, 4, 16])])
def test_resume_is_bit_identical_across_a_batch_size_change(tmp_path, dataset, schedule):
    def make():
        return Trainer(tiny_config("off", micro_batch_size=4, global_batch_size=8, **schedule))

    straight = make()
    reference = [straight.train_iteration(dataset) for _ in range(6)]
    sizes = [r.global_batch_size for r in reference]
    assert sizes[0] == 4 and sizes[-1] == 8 and sizes == sorted(sizes)
    # each iteration's lr is the schedule at the samples it brings the count to (warm-up 5 x 8 samples)
    assert [r.lr for r in reference] == [straight.scheduler.lr(sum(sizes[:k + 1])) for k in range(6)]
    assert reference[0].lr == pytest.approx(3e-3 * 4 / 40)
    first = make()
    for _ in range(3):
        first.train_iteration(dataset)
    first.save(str(tmp_path))
    resumed = make()
    assert resumed.load(str(tmp_path)) and resumed.progress.consumed_samples == sum(sizes[:3])
    rest = [resumed.train_iteration(dataset) for _ in range(3)]
    assert [(r.loss, r.lr, r.global_batch_size) for r in rest] == \
           [(r.loss, r.lr, r.global_batch_size) for r in reference[3:]]
    assert straight.progress == resumed.progress


def test_decoupled_lr_moves_only_word_embedding_and_output_layer(dataset):
    """lr 0 everywhere but --decoupled-lr: only the word embedding and the output layer change (the position
    embedding does not: Megatron marks only those two); and the other way round."""
    def changed(lr, decoupled):
        config = tiny_config("off", lr=lr, min_lr=0.0, decoupled_lr=decoupled, lr_warmup_iters=0)
        config.model.untie_embeddings_and_output_weights = True
        trainer = Trainer(config)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train_iteration(dataset)
        return {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}, set(before)

    special = {"word_embeddings.weight", "output_weight"}
    only_decoupled, names = changed(0.0, 1e-3)
    assert only_decoupled == special
    everything_else, _ = changed(1e-3, 0.0)
    assert everything_else == names - special and "position_embeddings.weight" in everything_else


def test_log_line_shows_the_current_global_batch_size(tmp_path, capsys):
    sys.path.insert(0, ROOT)
    import pretrain_gpt

    log = tmp_path / "log.jsonl"
    pretrain_gpt.main(TINY + ["--step-batch-size-schedule", "0:1 32:2 64:3", "--train-samples", "8",
                              "--lr-warmup-samples", "2", "--decoupled-lr", "1e-3", "--log-interval", "1",
                              "--log-json", str(log), "--data-cache-path", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "global batch size:" in line]
    # samples 0, 1 -> batch 1; 2, 4 -> 2 (32 tokens = 2 samples); then 3 (64 tokens = 4 samples): 1+1+2+3 <= 8
    assert [int(line.split("global batch size:")[1].split("|")[0]) for line in lines] == [1, 1, 2, 3]
    assert "iteration        4/       4 |" in out and "decoupled learning rate:" in lines[0]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["global_batch_size"] for r in records] == [1, 1, 2, 3] and "decoupled_lr" in records[0]
