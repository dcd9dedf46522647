"""Put per-rank pieces of parameters (weights or gradients) back into single-process tensors.

A piece is ``(tensor, partition_dim, stacked)``: split along ``partition_dim`` across the TP ranks
(None: replicated), made of ``stacked`` blocks that were split block by block (SwiGLU's fc1).
"""

import torch


def join_shards(shards: list[torch.Tensor], dim: int, stacked: int = 1) -> torch.Tensor:
    """The full tensor from its TP shards in TP-rank order."""
    blocks = [s.chunk(stacked, dim) for s in shards]
    return torch.cat([torch.cat([b[k] for b in blocks], dim) for k in range(stacked)], dim)


def assemble(per_rank: list[tuple[tuple, dict]]) -> dict[str, list[torch.Tensor]]:
    """``[((tp_rank, pp_rank), {name: piece}), ...]`` -> ``{name: [full tensors]}``.

    One full tensor per copy that exists: per pipeline stage holding the parameter (the tied embedding
    lives on the first and the last) and, for replicated parameters, per TP rank, so that every copy
    gets compared with the reference.
    """
    by_copy: dict[tuple[str, int], dict[int, tuple]] = {}
    for (tp_rank, pp_rank), pieces in per_rank:
        for name, piece in pieces.items():
            by_copy.setdefault((name, pp_rank), {})[tp_rank] = piece
    out: dict[str, list[torch.Tensor]] = {}
    for (name, _), shards in sorted(by_copy.items()):
        ordered = [shards[r] for r in sorted(shards)]
        dim, stacked = ordered[0][1], ordered[0][2]
        if dim is None:
            out.setdefault(name, []).extend(t for t, _, _ in ordered)
        else:
            out.setdefault(name, []).append(join_shards([t for t, _, _ in ordered], dim, stacked))
    return out
