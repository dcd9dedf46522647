"""Run a function on N gloo processes on localhost and hand each rank's result back (tests, benchmarks).

Workers are spawned (a fresh interpreter each, as torchrun would give), pinned to one thread so four
ranks share two cores without oversubscribing, and write their results with ``torch.save``; the parent
loads them. A worker's exception fails the test with that worker's traceback in the message, and the
other ranks are stopped instead of waiting on a collective that will never complete.
"""

import os
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# A hung collective must fail the caller, not hang a CI job: well above any tiny-model step on a busy machine.
COLLECTIVE_TIMEOUT = timedelta(seconds=180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # nobody tears down its sockets while a peer may still be receiving
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args) -> list:
    """``[fn(rank, world, *args) for each rank]``, computed in ``world`` gloo processes.

    ``fn`` must be importable (a module-level function) because workers start from a fresh interpreter.
    Raises ``torch.multiprocessing.ProcessRaisedException`` carrying the failing worker's traceback.
    """
    with tempfile.TemporaryDirectory(prefix="mfp8-spawn-") as out_dir:
        mp.spawn(_entry, args=(world, free_port(), out_dir, fn, args), nprocs=world, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
