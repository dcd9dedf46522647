"""Where this rank sits in the tensor / pipeline / data-parallel grid, and its process groups.

Layers and schedules read sizes, ranks and groups from one ``ParallelState``; a single process is the
grid of size one, with no groups, so the same code runs with and without ``torch.distributed``.
"""

from dataclasses import dataclass
from typing import Any


@dataclass
class ParallelState:
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    dp_size: int = 1
    dp_rank: int = 0
    tp_group: Any = None
    pp_group: Any = None
    dp_group: Any = None
    mp_group: Any = None  # all TP x PP ranks of this data-parallel replica
    embedding_group: Any = None  # first and last pipeline stage (tied embeddings)
    amax_group: Any = None  # ranks that must agree on FP8 scales (the TP group)
    pp_ranks: tuple = (0,)  # global ranks of this pipeline, stage by stage (for point-to-point)
    rank: int = 0
    world_size: int = 1
    rng: Any = None  # TPRngTracker for dropout on tensors split across TP ranks (set by the model)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """Megatron prints from the last rank: it holds the loss (last stage)."""
        return self.rank == self.world_size - 1


def single_process() -> ParallelState:
    return ParallelState()
