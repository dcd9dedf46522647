"""Stop a run that diverged instead of skipping steps forever and saving a broken state.

Megatron's ``--check-for-nan-in-loss-and-grad`` (on by default; ``--no-check-for-nan-in-loss-and-grad``
turns it off): a NaN loss or gradient norm stops the run at that iteration. An inf gradient (an
overflow) only skips its step, as before; ``--max-consecutive-skipped-iterations N`` stops the run when
N iterations in a row were skipped (0: never). Under FP16 loss scaling (``--fp16``, ``--loss-scale``) an
overflow shows as an inf/NaN gradient norm: that is the loss scaler's business (the step is skipped and a
dynamic scale backs off), so only a NaN loss stops the run, and skipped steps count towards the limit only
once a dynamic scale has reached ``--min-loss-scale`` (while it can still back off they are expected: the
default initial scale 2^32 overflows for a few dozen steps). Every rank reaches the same decision, so no rank is left
waiting: the gradient norm and the skip flag are already global, and under pipeline parallelism (only the
last stage has a loss) the flags are combined over all ranks with one small all-reduce.
"""

import math

import torch
import torch.distributed as dist

from .parallel import comm


class TrainingDiverged(RuntimeError):
    """The loss or gradients went NaN, or too many steps in a row were skipped; nothing was saved."""


class DivergenceGuard:
    def __init__(self, check_nan: bool, max_consecutive_skipped: int, has_loss: bool, world_size: int,
                 loss_scaler=None):
        self.check_nan, self.max_skipped = check_nan, max_consecutive_skipped
        self.has_loss, self.world_size = has_loss, world_size
        self.loss_scaler = loss_scaler  # None: no loss scaling (an inf/NaN gradient is not an overflow)
        self.consecutive = 0

    def _scaler_can_back_off(self) -> bool:
        scaler = self.loss_scaler
        return scaler is not None and scaler.scale > getattr(scaler, "min_scale", scaler.scale)

    def _flags(self, loss: float, grad_norm: float, skipped: bool) -> tuple[bool, bool, bool]:
        flags = torch.tensor([float(self.has_loss and math.isnan(loss)), float(math.isnan(grad_norm)),
                              float(skipped)])
        if self.world_size > 1:
            comm.all_reduce(flags, dist.group.WORLD, "other", op=dist.ReduceOp.MAX)
        return tuple(bool(f) for f in flags.tolist())

    def check(self, iteration: int, loss: float, grad_norm: float, skipped: bool, last_saved: str | None) -> None:
        """Raise :class:`TrainingDiverged` when this iteration ends the run (same answer on every rank)."""
        if not self.check_nan and not self.max_skipped:
            return
        nan_loss, nan_grad, skipped = self._flags(loss, grad_norm, skipped)
        nan_grad = nan_grad and self.loss_scaler is None  # under loss scaling: an overflow, already skipped
        if not skipped:
            self.consecutive = 0
        elif not self._scaler_can_back_off():  # (the scaler already updated for this step)
            self.consecutive += 1
        resume = (f"the last checkpoint is {last_saved}" if last_saved else "no checkpoint was saved by this run")
        if self.check_nan and (nan_loss or nan_grad):
            what = "loss" if nan_loss else "gradient norm"
            raise TrainingDiverged(
                f"iteration {iteration}: found NaN in the {what} (--check-for-nan-in-loss-and-grad); the step "
                f"was not applied and no checkpoint of this state is saved; {resume}. Lower --lr or raise "
                f"--lr-warmup-iters and resume, or pass --no-check-for-nan-in-loss-and-grad to skip such steps")
        if self.max_skipped and self.consecutive >= self.max_skipped:
            raise TrainingDiverged(
                f"iteration {iteration}: {self.consecutive} iterations in a row were skipped (inf/NaN gradients, "
                f"--max-consecutive-skipped-iterations {self.max_skipped}): training has diverged; no checkpoint "
                f"of this state is saved; {resume}. Lower --lr and resume, or raise the limit (0: never stop)")
