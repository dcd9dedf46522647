"""The rank grid and its process groups, in Megatron's order: tensor fastest, then data, then pipeline.

``global rank = tp_rank + tp * (dp_rank + dp * pp_rank)``. Every rank creates every group in the same
order (``new_group`` is collective), then keeps the ones it belongs to. Every group, the default one
included, carries ``--distributed-timeout-minutes`` (a group created without a timeout would get the
backend's default, 30 minutes for gloo), so a collective that a hung peer blocks fails on time.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import Config
from . import comm
from .state import ParallelState


def group_timeout(config: Config) -> timedelta:
    return timedelta(minutes=config.parallel.distributed_timeout_minutes)


def grid_coordinates(rank: int, tp: int, dp: int) -> tuple[int, int, int]:
    """(tp_rank, dp_rank, pp_rank) of a global rank."""
    return rank % tp, (rank // tp) % dp, rank // (tp * dp)


def grid_groups(world: int, tp: int, pp: int) -> dict[str, list[list[int]]]:
    """All rank lists of each kind of group for a world of ``world`` ranks."""
    dp = world // (tp * pp)

    def rank(t, d, p):
        return t + tp * (d + dp * p)

    return {
        "tp": [[rank(t, d, p) for t in range(tp)] for p in range(pp) for d in range(dp)],
        "dp": [[rank(t, d, p) for d in range(dp)] for p in range(pp) for t in range(tp)],
        "pp": [[rank(t, d, p) for p in range(pp)] for d in range(dp) for t in range(tp)],
        # model-parallel: every TP and PP rank of one data-parallel replica (grad norm, overflow)
        "mp": [[rank(t, d, p) for p in range(pp) for t in range(tp)] for d in range(dp)],
        # first and last stage of each pipeline: they hold the two copies of tied embeddings
        "embedding": [sorted({ranks[0], ranks[-1]}) for ranks in
                      ([rank(t, d, p) for p in range(pp)] for d in range(dp) for t in range(tp))],
    }


def init_distributed(config: Config) -> ParallelState:
    """Join the job torchrun started (or run alone) and build this rank's ParallelState.

    Layout errors are raised before any process group exists, so a bad flag costs nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dp = config.validate_layout(world)
    if world == 1 and not dist.is_initialized():
        return ParallelState()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=group_timeout(config))
    return build_state(config, dist.get_rank(), dist.get_world_size(), dp)


def build_state(config: Config, rank: int, world: int, dp: int) -> ParallelState:
    tp, pp = config.parallel.tensor_model_parallel_size, config.parallel.pipeline_model_parallel_size
    tp_rank, dp_rank, pp_rank = grid_coordinates(rank, tp, dp)
    mine, timeout = {}, group_timeout(config)
    comm.TIMEOUT["minutes"] = config.parallel.distributed_timeout_minutes
    for kind, rank_lists in grid_groups(world, tp, pp).items():
        for ranks in rank_lists:
            group = dist.new_group(ranks, timeout=timeout)  # collective: every rank creates every group
            if rank in ranks and kind not in mine:
                mine[kind] = (group, ranks)
    return ParallelState(tp_size=tp, tp_rank=tp_rank, pp_size=pp, pp_rank=pp_rank, dp_size=dp, dp_rank=dp_rank,
                         tp_group=mine["tp"][0], pp_group=mine["pp"][0], dp_group=mine["dp"][0], mp_group=mine["mp"][0],
                         embedding_group=mine["embedding"][0] if "embedding" in mine else None,
                         amax_group=mine["tp"][0], pp_ranks=mine["pp"][1], rank=rank, world_size=world)
