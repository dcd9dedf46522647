"""Megatron's batch-size schedules and training lengths, as pure functions of the flags.

The global batch size is a function of ``consumed_samples`` alone (Megatron's num-microbatches
calculator), so a resumed run reads the same batch sizes from the consumed samples in its checkpoint:

- constant: ``--global-batch-size``;
- ``--rampup-batch-size START INCR SAMPLES``: START, growing by INCR in equal sample intervals until
  SAMPLES have been consumed, then ``--global-batch-size``;
- ``--step-batch-size-schedule "0:16 2.4B:320 ..."``: the batch size of the last threshold reached;
  thresholds (suffixes K, M, B, T) count tokens and are converted to samples with ``--seq-length``.

Learning-rate warm-up and decay lengths are counted in samples, as Megatron's scheduler counts them:
``iters x --global-batch-size`` for iteration-based flags, the sample flags as given, and
``--lr-warmup-fraction x`` the decay length.

This module reads config objects but imports nothing from the package (config.py imports it).
"""

import math
from dataclasses import dataclass

_SUFFIXES = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}
STEP_FLAG, RAMPUP_FLAG = "--step-batch-size-schedule", "--rampup-batch-size"


def parse_count(text: str, flag: str) -> int:
    """``2.4B`` -> 2400000000 (suffixes K, M, B, T), computed as Megatron does: int(float x multiplier)."""
    body = text.strip().upper()
    multiplier = _SUFFIXES.get(body[-1:], 1)
    if multiplier != 1:
        body = body[:-1]
    try:
        value = float(body)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number (suffixes K, M, B, T allowed)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag}: {text!r} must be a finite non-negative number")
    return int(value * multiplier)


def parse_step_schedule(text: str) -> list[tuple[int, int]]:
    """``"0:16 2.4B:320"`` -> ``[(0, 16), (2400000000, 320)]``: (threshold as written, batch size), sorted."""
    entries = text.strip().strip("'\"").replace(",", " ").split()
    if not entries:
        raise ValueError(f"{STEP_FLAG}: empty schedule; expected \"THRESHOLD:BATCH_SIZE ...\" like \"0:16 2.4B:320\"")
    schedule = []
    for entry in entries:
        threshold, sep, size = entry.partition(":")
        if not sep:
            raise ValueError(f"{STEP_FLAG}: entry {entry!r} is not THRESHOLD:BATCH_SIZE")
        batch = parse_count(size, STEP_FLAG)
        if batch < 1:
            raise ValueError(f"{STEP_FLAG}: entry {entry!r} has batch size {batch}; it must be positive")
        schedule.append((parse_count(threshold, STEP_FLAG), batch))
    return sorted(schedule, key=lambda e: e[0])


def steps_in_samples(schedule: list[tuple[int, int]], seq_length: int) -> tuple[tuple[int, int], ...]:
    """Token thresholds -> sample thresholds (floor division by --seq-length), checked as Megatron does."""
    steps = tuple((tokens // seq_length, batch) for tokens, batch in schedule)
    if steps[0][0] != 0:
        raise ValueError(f"{STEP_FLAG}: the first threshold must be 0 (tokens), got {schedule[0][0]}")
    for (low, _), (high, _), (tokens, _) in zip(steps, steps[1:], schedule[1:]):
        if high <= low:
            raise ValueError(f"{STEP_FLAG}: threshold {tokens} tokens is {high} samples at --seq-length "
                             f"{seq_length}, not after the previous threshold ({low} samples)")
    return steps


def check_rampup(rampup: list[int], global_batch_size: int) -> None:
    start, increment, samples = rampup
    if start < 1 or increment < 1 or samples < 1:
        raise ValueError(f"{RAMPUP_FLAG} {start} {increment} {samples}: START, INCR and SAMPLES must be positive")
    if global_batch_size < start or (global_batch_size - start) % increment:
        raise ValueError(f"{RAMPUP_FLAG} {start} {increment} {samples}: --global-batch-size {global_batch_size} "
                         f"must be START plus a whole number of INCR")


@dataclass(frozen=True)
class BatchSchedule:
    """The global batch size at any ``consumed_samples`` (see the module docstring)."""

    final: int
    steps: tuple[tuple[int, int], ...] = ()  # (threshold in samples, batch size), from --step-batch-size-schedule
    rampup: tuple[int, int, int] | None = None  # (start, increment, samples), from --rampup-batch-size

    @property
    def _increments(self) -> int:
        return (self.final - self.rampup[0]) // self.rampup[1]

    def at(self, consumed_samples: int) -> int:
        if self.steps:
            return [batch for threshold, batch in self.steps if consumed_samples >= threshold][-1]
        if self.rampup is None or self._increments == 0 or consumed_samples > self.rampup[2]:
            return self.final
        start, increment, samples = self.rampup
        return start + int(consumed_samples / (samples / self._increments)) * increment  # Megatron's rounding

    def sizes(self) -> list[int]:
        """Every batch size the schedule can produce."""
        if self.steps:
            return sorted({batch for _, batch in self.steps})
        if self.rampup is None:
            return [self.final]
        return list(range(self.rampup[0], self.final + 1, self.rampup[1]))

    def next_change(self, consumed_samples: int) -> int | None:
        """The smallest sample count above ``consumed_samples`` where the batch size may change (None: never)."""
        if self.steps:
            later = [threshold for threshold, _ in self.steps if threshold > consumed_samples]
            return later[0] if later else None
        current = self.at(consumed_samples)
        if self.rampup is None or current == self.final:
            return None
        # the ramp only grows: gallop to a sample count past the change, then bisect (exact under
        # Megatron's float rounding, whatever it is)
        low, high, step = consumed_samples, consumed_samples + 1, 1
        while self.at(high) == current:
            low, step = high, 2 * step
            high = low + step
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.at(mid) == current else (low, mid)
        return high


def batch_schedule(t, seq_length: int) -> BatchSchedule:
    """The schedule of a TrainingConfig ``t`` (whose __post_init__ already checked the flags alone)."""
    if t.step_batch_size_schedule is not None:
        steps = steps_in_samples(parse_step_schedule(t.step_batch_size_schedule), seq_length)
        return BatchSchedule(final=steps[-1][1], steps=steps)
    rampup = tuple(t.rampup_batch_size) if t.rampup_batch_size is not None else None
    return BatchSchedule(final=t.global_batch_size, rampup=rampup)


def check_batch_sizes(t, seq_length: int, dp: int) -> None:
    """Every batch size the schedule reaches must split into micro-batches over the data-parallel ranks;
    checked before any work (Megatron checks each size when it is reached)."""
    per_step = t.micro_batch_size * dp
    odd = [b for b in batch_schedule(t, seq_length).sizes() if b % per_step]
    if odd:
        source = (f"{STEP_FLAG}: batch size {odd[0]}" if t.step_batch_size_schedule else
                  f"{RAMPUP_FLAG}: batch size {odd[0]}" if t.rampup_batch_size else f"--global-batch-size {odd[0]}")
        raise ValueError(f"{source} is not divisible by --micro-batch-size {t.micro_batch_size} x data-parallel "
                         f"size {dp}")


def iterations_for_samples(schedule: BatchSchedule, train_samples: int) -> int:
    """Iterations of whole global batches that fit in ``train_samples`` (Megatron drops a partial last batch)."""
    consumed = iterations = 0
    while True:
        batch = schedule.at(consumed)
        fit = (train_samples - consumed) // batch
        if fit <= 0:
            return iterations
        change = schedule.next_change(consumed)
        n = fit if change is None else min(fit, -(-(change - consumed) // batch))
        iterations, consumed = iterations + n, consumed + n * batch


@dataclass(frozen=True)
class TrainingPlan:
    """What the flags ask for, resolved once: batch schedule, iterations, samples and lr lengths (samples)."""

    batch: BatchSchedule
    train_iters: int
    train_samples: int  # an upper bound on the samples the iterations consume (the dataset size to build)
    lr_warmup_samples: float  # a float when it comes from --lr-warmup-fraction, as in Megatron
    lr_decay_samples: int


def training_plan(config) -> TrainingPlan:
    t = config.training
    batch = batch_schedule(t, config.model.seq_length)
    if t.train_samples is None:
        iters, samples = t.train_iters, t.train_iters * max(batch.sizes())
        decay = t.lr_decay_iters * batch.final
        warmup = t.lr_warmup_iters * batch.final
    else:
        iters, samples = iterations_for_samples(batch, t.train_samples), t.train_samples
        decay = t.lr_decay_samples if t.lr_decay_samples is not None else t.train_samples
        warmup = t.lr_warmup_samples
    if t.lr_warmup_fraction is not None:
        warmup = t.lr_warmup_fraction * decay
    return TrainingPlan(batch=batch, train_iters=iters, train_samples=samples, lr_warmup_samples=warmup,
                        lr_decay_samples=decay)
