"""Layout-free names and full tensors: the bridge between a rank's shards and the whole model.

A parameter's *global* name does not depend on the parallel layout (layers are numbered across the
pipeline; the last stage's copy of a tied embedding has no name of its own), and its *full* tensor is
what a single process would hold: TP shards concatenated along the split dimension, stacked blocks
(SwiGLU's gate and up) put back together.
"""

import re

import torch

from ..parallel.state import ParallelState

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_RENAMES = {"word_embeddings.weight": "embedding.word_embeddings.weight",
            "position_embeddings.weight": "embedding.position_embeddings.weight"}


def global_name(local: str, pstate: ParallelState, num_layers: int, tied: bool) -> str | None:
    """The layout-free name of a rank-local parameter name; None for the last stage's tied copy."""
    if local == "output_weight":
        return None if tied else "output_layer.weight"
    if local in _RENAMES:
        return _RENAMES[local]
    match = _LAYER.match(local)
    if match:
        offset = pstate.pp_rank * (num_layers // pstate.pp_size)
        return f"decoder.layers.{int(match.group(1)) + offset}.{local[match.end():]}"
    return local


def unshard(shards: list[torch.Tensor], dim: int | None, stacked: int = 1) -> torch.Tensor:
    """Full tensor from TP shards in rank order (each shard holds a slice of every stacked block)."""
    if dim is None or len(shards) == 1:
        return shards[0]
    if stacked > 1:
        blocks = [s.reshape(stacked, s.shape[0] // stacked, *s.shape[1:]) for s in shards]
        full = torch.cat(blocks, dim=1)
        return full.reshape(-1, *full.shape[2:])
    return torch.cat(shards, dim=dim)


def shard(full: torch.Tensor, dim: int | None, tp_rank: int, tp_size: int, stacked: int = 1) -> torch.Tensor:
    """This TP rank's shard of a full tensor (the inverse of :func:`unshard`)."""
    if dim is None or tp_size == 1:
        return full
    if stacked > 1:
        blocks = full.reshape(stacked, full.shape[0] // stacked, *full.shape[1:])
        local = blocks.chunk(tp_size, dim=1)[tp_rank]
        return local.reshape(-1, *full.shape[1:]).contiguous()
    return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()


def resize_vocab(full: torch.Tensor, rows: int) -> torch.Tensor:
    """Pad (with zeros) or trim the padded vocabulary rows of an embedding to ``rows``."""
    if full.shape[0] >= rows:
        return full[:rows].contiguous()
    return torch.cat([full, full.new_zeros(rows - full.shape[0], *full.shape[1:])])
