"""Functions that run inside the spawned gloo ranks (importable, so ``spawn`` can start them)."""

import torch.distributed as dist

from megatron_fp8.parallel.groups import build_state

from .probe import run_probe
from .variants import model_config


def layout_worker(rank: int, world: int, tp: int, pp: int, sp: bool, runs: list) -> dict:
    """Probe each ``(key, level, variant, steps[, (tp, pp, sp)])`` run. One spawn serves every run of a
    layout: process start-up and group set-up cost more than a tiny model's steps."""
    out = {}
    for key, level, variant, steps, *layout in runs:
        config = model_config(variant, level, *(layout[0] if layout else (tp, pp, sp)))
        pstate = build_state(config, rank, world, config.validate_layout(world))
        out[key] = run_probe(config, pstate, steps)
        dist.barrier()
    return out


def failing_worker(rank: int, world: int) -> None:
    """Rank 1 fails while rank 0 waits in a collective it can never finish (tests the harness)."""
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    dist.barrier()
