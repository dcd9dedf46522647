"""FP8-aware collectives built on the counted ones: the TP-group services the FP8 layers need.

The sequence-parallel all-gather moves FP8 bytes (one per element) because every TP rank casts its
rows with the same scale, agreed through a max all-reduce of the amax over the TP group.
"""

import torch
import torch.distributed as dist

from . import comm
from .state import ParallelState


class TPSequenceOps:
    """The ``SequenceParallelOps`` of the FP8 linear, over this rank's TP group."""

    def __init__(self, pstate: ParallelState):
        self.group = pstate.tp_group

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return comm.all_gather(t, self.group, "sp")

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        return comm.reduce_scatter(t, self.group, "sp")


def tp_amax_reducer(pstate: ParallelState):
    """Max-reduce an amax over the amax (TP) group, so every TP rank derives the same scale; None alone."""
    if pstate.tp_size == 1:
        return None

    def reduce(amax: torch.Tensor) -> torch.Tensor:
        return comm.all_reduce(amax.detach().float().reshape(1).clone(), pstate.amax_group, "amax",
                               dist.ReduceOp.MAX).reshape(())

    return reduce
