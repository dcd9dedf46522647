"""Every collective goes through here, so each step can report the bytes it moved per tag (docs/design.md §3).

Bytes follow the nccl-tests bus convention: what one rank sends under a ring algorithm for a full tensor
of S bytes over N ranks: all-reduce 2(N-1)/N*S, reduce-scatter / all-gather / all-to-all (N-1)/N*S,
point-to-point S. FP8 payloads travel as uint8 views (no backend sums or gathers FP8 dtypes).

A collective that fails because a peer hung past the process-group timeout (``--distributed-timeout-minutes``,
which every group carries) or died raises :class:`CollectiveError` naming the operation, its tag and its
ranks, so the rank that noticed exits with that message and the launcher ends the others.
"""

import contextlib
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
TIMEOUT = {"minutes": None}  # set by parallel.groups when the process groups are created, for messages


class CollectiveError(RuntimeError):
    """A collective did not complete because a peer rank hung (timeout) or is gone."""


_TIMED_OUT = ("timed out", "timeout", "watchdog caught collective operation")
_PEER_GONE = ("connection closed", "connection reset", "broken pipe", "connection refused")


def _ranks(group) -> str:
    try:
        return str(dist.get_process_group_ranks(group if group is not None else dist.group.WORLD))
    except (RuntimeError, ValueError):
        return "?"


def _named_error(op: str, tag: str, group, err: BaseException) -> CollectiveError | None:
    text = str(err).lower()
    me = dist.get_rank() if dist.is_initialized() else 0
    where = f"rank {me}: {op} (tag {tag!r}) over ranks {_ranks(group)}"
    if any(k in text for k in _TIMED_OUT):
        limit = f"{TIMEOUT['minutes']:g} minutes" if TIMEOUT["minutes"] is not None else "the process-group timeout"
        return CollectiveError(f"{where} did not complete within {limit} (--distributed-timeout-minutes): a peer "
                               f"rank is hung or stopped; stopping this rank ({str(err).strip()[:200]})")
    if any(k in text for k in _PEER_GONE):
        return CollectiveError(f"{where} failed: a peer rank exited or crashed (see its log for the cause); "
                               f"stopping this rank ({str(err).strip()[:200]})")
    return None


@contextlib.contextmanager
def _naming(op: str, tag: str, group):
    """Turn a backend's timeout / lost-peer error into a CollectiveError naming the operation."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as err:
        named = _named_error(op, tag, group, err)
        if named is None:
            raise
        raise named from err


class NamedWork:
    """An async work handle whose ``wait`` names the operation when the collective fails."""

    def __init__(self, work, op: str, tag: str, group):
        self.work, self.op, self.tag, self.group = work, op, tag, group

    def wait(self):
        with _naming(self.op, self.tag, self.group):
            return self.work.wait()

    def is_completed(self) -> bool:
        return self.work.is_completed()


def _call(name: str, tag: str, group, fn, *args, async_op: bool = False, **kwargs):
    with _naming(name, tag, group):
        work = fn(*args, group=group, async_op=async_op, **kwargs)
    return NamedWork(work, name, tag, group) if async_op and work is not None else work


def barrier(group=None, tag: str = "other") -> None:
    """A barrier over ``group`` (None: every rank); a no-op without torch.distributed."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        _call("barrier", tag, group, dist.barrier)


def all_gather_object(obj, group=None, tag: str = "other") -> list:
    """Every rank's picklable ``obj`` (our own ranks' objects, never a file), in rank order."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [obj]
    out = [None] * dist.get_world_size(group)
    with _naming("all_gather_object", tag, group):
        dist.all_gather_object(out, obj, group=group)
    return out


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
        work = _call("all_reduce", tag, group, dist.all_reduce, t, op=op, async_op=async_op)
    return work if async_op else t


def all_gather(t: torch.Tensor, group, tag: str, dim: int = 0, async_op: bool = False):
    """Concatenate every rank's ``t`` along ``dim``; with ``async_op`` returns ``(out, work)``."""
    n = _size(group)
    if n == 1:
        return (t, None) if async_op else t
    src = _wire(t.movedim(dim, 0).contiguous())
    out = torch.empty((n * src.shape[0], *src.shape[1:]), dtype=src.dtype, device=src.device)
    COUNTER.add(tag, (n - 1) * _nbytes(src))
    work = _call("all_gather", tag, group, _all_gather_single, out, src, async_op=async_op)
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
    _call("reduce_scatter", tag, group, _reduce_scatter_single, out, src)
    return out.movedim(0, dim)


def all_to_all(t: torch.Tensor, group, tag: str) -> torch.Tensor:
    """Rank r sends chunk j of ``t`` (dim 0) to rank j and receives chunk r of everyone's."""
    n = _size(group)
    if n == 1:
        return t
    src = _wire(t.contiguous())
    out = torch.empty_like(src)
    COUNTER.add(tag, (n - 1) / n * _nbytes(src))
    _call("all_to_all", tag, group, dist.all_to_all_single, out, src)
    return out.view(t.dtype) if t.dtype != src.dtype else out


def all_to_all_v(src: torch.Tensor, send_counts: list[int], recv_counts: list[int], group, tag: str,
                 async_op: bool = False):
    """Uneven all-to-all of a flat tensor: ``send_counts[j]`` elements go to rank j. Counts the bytes this
    rank actually sends to the others. Returns ``(received, work)``; wait on ``work`` when async."""
    me = dist.get_rank(group)
    wire = _wire(src.contiguous())
    out = torch.empty(sum(recv_counts), dtype=wire.dtype, device=wire.device)
    COUNTER.add(tag, sum(c for j, c in enumerate(send_counts) if j != me) * wire.element_size())
    work = _call("all_to_all_v", tag, group, dist.all_to_all_single, out, wire, recv_counts, send_counts,
                 async_op=async_op)
    return (out.view(src.dtype) if src.dtype != wire.dtype else out), work


def all_gather_v(local: torch.Tensor, counts: list[int], group, tag: str) -> torch.Tensor:
    """All-gather of uneven flat pieces (``counts[j]`` elements from rank j), concatenated in rank order."""
    n = _size(group)
    me = dist.get_rank(group)
    received, _ = all_to_all_v(local.reshape(-1).repeat(n), [counts[me]] * n, counts, group, tag)
    return received


def send(t: torch.Tensor, dst: int, group, tag: str = "pp"):
    COUNTER.add(tag, _nbytes(t))
    with _naming(f"send to rank {dst}", tag, group):
        return NamedWork(dist.isend(_wire(t.contiguous()), dst, group=group), f"send to rank {dst}", tag, group)


def recv(shape, dtype, src: int, group, device) -> tuple[torch.Tensor, object]:
    buf = torch.empty(shape, dtype=dtype, device=device)
    with _naming(f"recv from rank {src}", "pp", group):
        return buf, NamedWork(dist.irecv(_wire(buf), src, group=group), f"recv from rank {src}", "pp", group)
