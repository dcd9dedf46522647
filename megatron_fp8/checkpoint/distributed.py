"""Distributed checkpoints: every rank writes its shard, rank 0 seals the iteration with checksums.

Layout of ``{root}/iter_XXXXXXX/``::

    metadata.json                       layout (TP, PP, DP), config, progress, sha256 + size of every file
    model_tp{t:02d}_pp{p:03d}.pt        model shard + FP8 scaling state (written by DP rank 0)
    optim_tp{t:02d}_pp{p:03d}_dp{d:03d}.pt   optimizer state (DP rank 0, or every DP rank when sharded)
    rng_rank{r:05d}.pt                  each rank's RNG streams

Files are written into a staging directory that is renamed into place once every rank has finished;
the tracker file is replaced last. ``--async-save`` takes a snapshot of the state and writes it on a
background thread; the checkpoint is sealed at a later step, once every rank reports its files done.
"""

import hashlib
import json
import os
import threading
import time

import torch
import torch.distributed as dist

from ..config import Config
from ..parallel.state import ParallelState
from .atomic import TRACKER, iteration_dir, publish, read_tracker
from .state import FORMAT, check_config, config_summary, set_rng_state

METADATA = "metadata.json"


def model_file(tp: int, pp: int) -> str:
    return f"model_tp{tp:02d}_pp{pp:03d}.pt"


def optim_file(tp: int, pp: int, dp: int) -> str:
    return f"optim_tp{tp:02d}_pp{pp:03d}_dp{dp:03d}.pt"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write(path: str, obj) -> dict:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": sha256(path), "bytes": os.path.getsize(path)}


def _snapshot(obj):
    """A deep copy of every tensor (on CPU) so training may change the originals while a save runs."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


def _staging(root: str, iteration: int) -> str:
    return iteration_dir(root, iteration) + ".tmp"


def _barrier(pstate: ParallelState) -> None:
    if pstate.world_size > 1:
        dist.barrier()


def _gather(obj, pstate: ParallelState) -> list:
    if pstate.world_size == 1:
        return [obj]
    out = [None] * pstate.world_size
    dist.all_gather_object(out, obj)
    return out


class CheckpointWriter:
    """Saves checkpoints for one rank; with ``async_save`` the file writing runs in the background."""

    def __init__(self, root: str, config: Config, pstate: ParallelState, async_save: bool = False, log=print):
        self.root, self.config, self.pstate, self.async_save, self.log = root, config, pstate, async_save, log
        self._pending = None  # (iteration, thread, result dict, metadata)

    def save(self, iteration: int, shards: dict, progress: dict) -> float:
        """Write this rank's ``shards`` (file name -> object); returns the seconds training was blocked."""
        start = time.perf_counter()
        self.wait()  # one save in flight at a time
        ps = self.pstate
        staged = _staging(self.root, iteration)
        if ps.rank == 0:
            os.makedirs(self.root, exist_ok=True)
            if os.path.exists(staged):
                import shutil
                shutil.rmtree(staged)
            os.makedirs(staged)
        _barrier(ps)
        metadata = {"format": FORMAT, "iteration": iteration, "progress": progress,
                    "config": config_summary(self.config),
                    "layout": {"tp": ps.tp_size, "pp": ps.pp_size, "dp": ps.dp_size,
                               "distributed_optimizer": self.config.parallel.use_distributed_optimizer}}
        result: dict = {}
        if self.async_save:
            snapshot = _snapshot(shards)
            thread = threading.Thread(target=self._write_all, args=(staged, snapshot, result), daemon=True)
            thread.start()
            self._pending = (iteration, thread, result, metadata)
        else:
            self._write_all(staged, shards, result)
            self._pending = (iteration, None, result, metadata)
            self.wait()
        return time.perf_counter() - start

    @staticmethod
    def _write_all(staged: str, shards: dict, result: dict) -> None:
        try:
            result["files"] = {name: _write(os.path.join(staged, name), obj) for name, obj in shards.items()}
        except Exception as err:  # noqa: BLE001 - reported on the main thread when sealing
            result["error"] = repr(err)

    def poll(self) -> None:
        """Seal a background save if every rank has finished writing (called once per iteration)."""
        if self._pending is None or self._pending[1] is None:
            return
        done = torch.tensor([0.0 if self._pending[1].is_alive() else 1.0])
        if self.pstate.world_size > 1:
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
        if done.item() == 1.0:
            self.wait()

    def wait(self) -> None:
        """Finish the save in flight: join the writer, gather every rank's checksums, publish atomically."""
        if self._pending is None:
            return
        iteration, thread, result, metadata = self._pending
        self._pending = None
        if thread is not None:
            thread.join()
        results = _gather(result, self.pstate)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"checkpoint at iteration {iteration} failed; the previous one is intact: {errors[0]}")
        if self.pstate.rank == 0:
            files = {name: info for r in results for name, info in r["files"].items()}
            metadata["files"] = files
            staged = _staging(self.root, iteration)
            with open(os.path.join(staged, METADATA), "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            publish(self.root, iteration, staged)
            self.log(f" > saved checkpoint at iteration {iteration} to {iteration_dir(self.root, iteration)}")
        _barrier(self.pstate)


def read_metadata(root: str) -> tuple[str, dict] | None:
    """``(iteration directory, metadata)`` of the newest checkpoint, None if ``root`` has none yet."""
    iteration = read_tracker(root)
    if iteration is None:
        return None
    directory = iteration_dir(root, iteration)
    path = os.path.join(directory, METADATA)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.path.join(root, TRACKER)} names iteration {iteration}, but {path} "
                                "does not exist")
    try:
        metadata = json.load(open(path, encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: unreadable checkpoint metadata ({err})") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (format {metadata.get('format')!r})")
    return directory, metadata


def read_file(directory: str, metadata: dict, name: str):
    """Load one file of a checkpoint after checking it is listed, complete and unmodified."""
    path = os.path.join(directory, name)
    info = metadata["files"].get(name)
    if info is None:
        raise ValueError(f"{path}: not listed in {METADATA} (checkpoint written by another layout?)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing checkpoint file")
    if os.path.getsize(path) != info["bytes"]:
        raise ValueError(f"{path}: truncated checkpoint file ({os.path.getsize(path)} of {info['bytes']} bytes)")
    if sha256(path) != info["sha256"]:
        raise ValueError(f"{path}: checksum mismatch (file corrupted after it was written)")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_layout(metadata: dict, config: Config, pstate: ParallelState, source: str) -> None:
    layout = metadata["layout"]
    here = {"tp": pstate.tp_size, "pp": pstate.pp_size, "dp": pstate.dp_size,
            "distributed_optimizer": config.parallel.use_distributed_optimizer}
    sharded_opt = layout["distributed_optimizer"] and layout["dp"] > 1
    needs_same_dp = sharded_opt or (here["distributed_optimizer"] and here["dp"] > 1)
    mismatch = [k for k in ("tp", "pp") if layout[k] != here[k]]
    if needs_same_dp and (layout["dp"] != here["dp"] or layout["distributed_optimizer"] != here["distributed_optimizer"]):
        mismatch.append("dp")
    if mismatch:
        raise ValueError(
            f"{source}: saved with TP={layout['tp']} PP={layout['pp']} DP={layout['dp']} "
            f"(distributed optimizer: {layout['distributed_optimizer']}), this run has TP={here['tp']} "
            f"PP={here['pp']} DP={here['dp']}: convert it first with tools/convert_checkpoint.py --load "
            f"{os.path.dirname(source)} --save NEW_DIR --target-tensor-parallel-size {here['tp']} "
            f"--target-pipeline-parallel-size {here['pp']} --target-data-parallel-size {here['dp']}")


def load_rank_files(root: str, config: Config, pstate: ParallelState, sharded_optimizer: bool,
                    load_optim: bool = True, load_rng: bool = True):
    """This rank's (model shard, optimizer state or None, metadata) from the newest checkpoint, RNG restored
    unless ``load_rng`` is False (--no-load-rng); no optimizer state without ``load_optim``."""
    found = read_metadata(root)
    if found is None:
        return None
    directory, metadata = found
    check_config(metadata["config"], config, os.path.join(directory, METADATA))
    check_layout(metadata, config, pstate, os.path.join(directory, METADATA))
    ps = pstate
    model = read_file(directory, metadata, model_file(ps.tp_rank, ps.pp_rank))
    optim = None
    if load_optim:
        name = optim_file(ps.tp_rank, ps.pp_rank, ps.dp_rank if sharded_optimizer else 0)
        if name not in metadata["files"] and not any(f.startswith("optim_") for f in metadata["files"]):
            raise ValueError(f"{directory}: no optimizer state (saved with --no-save-optim); load it with "
                             "--no-load-optim, or --finetune")
        optim = read_file(directory, metadata, name)
    rng_name = rng_file(ps.rank)
    if load_rng and rng_name in metadata["files"]:
        set_rng_state(read_file(directory, metadata, rng_name), ps)
    return model, optim, metadata
