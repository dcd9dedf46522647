"""Run a function on N gloo processes on localhost and hand each rank's result back (tests, benchmarks).

Workers are spawned (a fresh interpreter each, as torchrun would give), pinned to one thread so four
ranks share two cores without oversubscribing, and write their results with ``torch.save``; the parent
loads them. When a worker raises, its peers usually fail next with a "connection closed" error from the
collective they were in; so every rank records its traceback with the time it failed, and the caller
fails with all of them, the earliest (the cause) first.
"""

import os
import socket
import tempfile
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

# A hung collective must fail the caller, not hang a CI job: well above any tiny-model step on a busy machine.
COLLECTIVE_TIMEOUT = timedelta(seconds=180)


class WorkerError(RuntimeError):
    """A spawned rank raised; the message holds every failed rank's traceback, earliest first."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # nobody tears down its sockets while a peer may still be receiving
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(f"{time.time():.6f}\n{traceback.format_exc()}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker_errors(out_dir: str) -> str:
    failed = []
    for name in os.listdir(out_dir):
        if name.endswith(".err"):
            with open(os.path.join(out_dir, name)) as f:
                when, text = f.read().split("\n", 1)
            failed.append((float(when), name[len("rank"):-len(".err")], text))
    return "\n".join(f"--- rank {rank} ({'first to fail' if i == 0 else 'failed after'}):\n{text}"
                     for i, (_, rank, text) in enumerate(sorted(failed)))


def spawn(fn, world: int, *args) -> list:
    """``[fn(rank, world, *args) for each rank]``, computed in ``world`` gloo processes.

    ``fn`` must be importable (a module-level function) because workers start from a fresh interpreter.
    Raises :class:`WorkerError` with the failing workers' tracebacks.
    """
    with tempfile.TemporaryDirectory(prefix="mfp8-spawn-") as out_dir:
        try:
            mp.spawn(_entry, args=(world, free_port(), out_dir, fn, args), nprocs=world, join=True)
        except ProcessException as err:
            raise WorkerError(_worker_errors(out_dir) or str(err)) from None
        # any picklable result of our own workers, read back from the private folder made above (never a
        # user's file; checkpoints are read with checkpoint.safe_load)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
