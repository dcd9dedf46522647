"""Every collective goes through here, so each step can report the bytes it moved per tag (docs/design.md §3).

Bytes follow the nccl-tests bus convention: what one rank sends under a ring algorithm for a full tensor
of S bytes over N ranks: all-reduce 2(N-1)/N*S, reduce-scatter / all-gather / all-to-all (N-1)/N*S,
point-to-point S. FP8 payloads travel as uint8 views (no backend sums or gathers FP8 dtypes).
"""

from collections import defaultdict

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor-in/tensor-out collectives (the old names warn); older torch has only those.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# "embedding": tied-embedding gradients between first and last stage; "other": loss and norm scalars.
TAGS = ("tp", "sp", "pp", "dp-grad", "dp-param", "amax", "embedding", "other")


class CommCounter:
    def __init__(self):
        self.bytes = defaultdict(int)

    def add(self, tag: str, nbytes: float) -> None:
        if tag not in TAGS:
            raise ValueError(f"unknown communication tag {tag!r}")
        self.bytes[tag] += int(nbytes)

    def take(self) -> dict:
        """Bytes per tag since the last call (for one log line)."""
        out, self.bytes = dict(self.bytes), defaultdict(int)
        return out


COUNTER = CommCounter()


def _size(group) -> int:
    return dist.get_world_size(group) if group is not None else 1


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _wire(t: torch.Tensor) -> torch.Tensor:
    """FP8 tensors cross the wire as their bytes."""
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


def all_reduce(t: torch.Tensor, group, tag: str, op=dist.ReduceOp.SUM, async_op: bool = False):
    """In-place all-reduce; returns ``t``, or the work handle when ``async_op``."""
    n = _size(group)
    work = None
    if n > 1:
        COUNTER.add(tag, 2 * (n - 1) / n * _nbytes(t))
        work = dist.all_reduce(t, op=op, group=group, async_op=async_op)
    return work if async_op else t


def all_gather(t: torch.Tensor, group, tag: str, dim: int = 0, async_op: bool = False):
    """Concatenate every rank's ``t`` along ``dim``; with ``async_op`` returns ``(out, work)``."""
    n = _size(group)
    if n == 1:
        return (t, None) if async_op else t
    src = _wire(t.movedim(dim, 0).contiguous())
    out = torch.empty((n * src.shape[0], *src.shape[1:]), dtype=src.dtype, device=src.device)
    COUNTER.add(tag, (n - 1) * _nbytes(src))
    work = _all_gather_single(out, src, group=group, async_op=async_op)
    out = (out.view(t.dtype) if t.dtype != src.dtype else out).movedim(0, dim)
    return (out, work) if async_op else out


def reduce_scatter(t: torch.Tensor, group, tag: str, dim: int = 0) -> torch.Tensor:
    """Sum over ranks, each rank keeping its 1/N slice along ``dim``."""
    n = _size(group)
    if n == 1:
        return t
    src = t.movedim(dim, 0).contiguous()
    out = torch.empty((src.shape[0] // n, *src.shape[1:]), dtype=src.dtype, device=src.device)
    COUNTER.add(tag, (n - 1) / n * _nbytes(src))
    _reduce_scatter_single(out, src, group=group)
    return out.movedim(0, dim)


def all_to_all(t: torch.Tensor, group, tag: str) -> torch.Tensor:
    """Rank r sends chunk j of ``t`` (dim 0) to rank j and receives chunk r of everyone's."""
    n = _size(group)
    if n == 1:
        return t
    src = _wire(t.contiguous())
    out = torch.empty_like(src)
    COUNTER.add(tag, (n - 1) / n * _nbytes(src))
    dist.all_to_all_single(out, src, group=group)
    return out.view(t.dtype) if t.dtype != src.dtype else out


def all_to_all_v(src: torch.Tensor, send_counts: list[int], recv_counts: list[int], group, tag: str,
                 async_op: bool = False):
    """Uneven all-to-all of a flat tensor: ``send_counts[j]`` elements go to rank j. Counts the bytes this
    rank actually sends to the others. Returns ``(received, work)``; wait on ``work`` when async."""
    me = dist.get_rank(group)
    wire = _wire(src.contiguous())
    out = torch.empty(sum(recv_counts), dtype=wire.dtype, device=wire.device)
    COUNTER.add(tag, sum(c for j, c in enumerate(send_counts) if j != me) * wire.element_size())
    work = dist.all_to_all_single(out, wire, recv_counts, send_counts, group=group, async_op=async_op)
    return (out.view(src.dtype) if src.dtype != wire.dtype else out), work


def all_gather_v(local: torch.Tensor, counts: list[int], group, tag: str) -> torch.Tensor:
    """All-gather of uneven flat pieces (``counts[j]`` elements from rank j), concatenated in rank order."""
    n = _size(group)
    me = dist.get_rank(group)
    received, _ = all_to_all_v(local.reshape(-1).repeat(n), [counts[me]] * n, counts, group, tag)
    return received


def send(t: torch.Tensor, dst: int, group, tag: str = "pp"):
    COUNTER.add(tag, _nbytes(t))
    return dist.isend(_wire(t.contiguous()), dst, group=group)


def recv(shape, dtype, src: int, group, device) -> tuple[torch.Tensor, object]:
    buf = torch.empty(shape, dtype=dtype, device=device)
    return buf, dist.irecv(_wire(buf), src, group=group)
