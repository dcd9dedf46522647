"""FP8 scales of a forward pass, recorded so that a recomputed forward casts with exactly the same ones.

Activation recomputation (model/recompute.py) runs a forward twice: once without keeping activations,
and again during backward. With delayed scaling the second run must not take a fresh scale from the amax
history (which the first run already advanced) nor push its amaxes again; with current scaling it must not
repeat the TP amax reduction. So the first run records, per quantizer and in order, the scale it cast
with and the ``scale_inv`` it handed to the GEMM; the second run replays them: same casts, same bits,
histories touched once. Tapes nest (a recompute inside another recompute's replay keeps its own tape).
"""

from collections import defaultdict, deque
from contextlib import contextmanager

import torch

_ACTIVE: list = []  # (tape, replaying) of the innermost recording/replaying region


class ScaleTape:
    """The (scale, scale_inv) pairs of every recorded cast, per quantizer in cast order."""

    def __init__(self):
        self._casts: dict[int, deque] = defaultdict(deque)

    def record(self, quantizer, scale: torch.Tensor, scale_inv: torch.Tensor) -> None:
        self._casts[id(quantizer)].append((scale, scale_inv))

    def take(self, quantizer) -> tuple[torch.Tensor, torch.Tensor]:
        queue = self._casts.get(id(quantizer))
        if not queue:
            raise RuntimeError("recomputed forward cast a tensor the first forward did not: the recomputed "
                               "region must run the same FP8 casts in the same order")
        return queue.popleft()

    def __len__(self) -> int:
        return sum(len(q) for q in self._casts.values())


def active() -> tuple[ScaleTape, bool] | None:
    """The innermost tape and whether it is being replayed, or None outside recomputed regions."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def _pushed(tape: ScaleTape, replay: bool):
    _ACTIVE.append((tape, replay))
    try:
        yield tape
    finally:
        _ACTIVE.pop()


def recording(tape: ScaleTape):
    """The first forward of a recomputed region: casts record their scales on ``tape``."""
    return _pushed(tape, False)


def replaying(tape: ScaleTape):
    """The recomputed forward: casts take the recorded scales back from ``tape``."""
    return _pushed(tape, True)
