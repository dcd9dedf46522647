"""When training stops early: ``--exit-interval``, ``--exit-duration-in-mins``, ``--exit-signal-handler``.

``--exit-signal-handler`` installs a SIGTERM handler that only records the signal (a preempted cluster job
gets SIGTERM and a grace period); the loop checks after every iteration. Duration and signal are agreed
over all ranks (one MAX all-reduce of two numbers per iteration, only when either flag is given), so every
rank stops after the same iteration, saves the same checkpoint and exits cleanly.
"""

import signal
import time

import torch
import torch.distributed as dist

from .parallel import comm


class ExitConditions:
    def __init__(self, t, start_time: float, world_size: int = 1, device="cpu", clock=time.time):
        """``t``: a TrainingConfig; ``start_time``: ``clock()`` when the program started (Megatron's
        duration counts from then, set-up included)."""
        self.interval, self.minutes, self.handle_signal = t.exit_interval, t.exit_duration_in_mins, t.exit_signal_handler
        self.start_time, self.world_size, self.device, self.clock = start_time, world_size, device, clock
        self.received = None  # the signal number once one arrived
        self._previous = None
        if self.handle_signal:
            self._previous = signal.signal(signal.SIGTERM, self._record)

    def _record(self, signum, frame) -> None:
        self.received = signum

    def close(self) -> None:
        """Put back the SIGTERM handler that was there before."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def elapsed_minutes(self) -> float:
        return (self.clock() - self.start_time) / 60.0

    def _agreed(self) -> tuple[bool, bool]:
        """(duration exceeded, signal received) on any rank."""
        local = torch.tensor([float(self.minutes is not None and self.elapsed_minutes() > self.minutes),
                              float(self.received is not None)], device=self.device)
        if self.world_size > 1:
            comm.all_reduce(local, dist.group.WORLD, "other", dist.ReduceOp.MAX)
        return bool(local[0]), bool(local[1])

    def check(self, iteration: int) -> str | None:
        """Why to stop after ``iteration`` (a line for the log), or None to go on."""
        if self.minutes is not None or self.handle_signal:
            timed_out, signalled = self._agreed()
            if signalled:
                return "exiting program after receiving SIGTERM (--exit-signal-handler)"
            if timed_out:
                return f"exiting program after {self.elapsed_minutes():.2f} minutes (--exit-duration-in-mins)"
        if self.interval and iteration % self.interval == 0:
            return f"exiting program at iteration {iteration} (--exit-interval)"
        return None
