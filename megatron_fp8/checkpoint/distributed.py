"""Distributed checkpoints: every rank writes its shard, rank 0 seals the iteration with checksums.

Layout of ``{root}/iter_XXXXXXX/``::

    metadata.json                       layout (TP, PP, DP), config, progress, sha256 + size of every file
    model_tp{t:02d}_pp{p:03d}.pt        model shard + FP8 scaling state (written by DP rank 0)
    optim_tp{t:02d}_pp{p:03d}_dp{d:03d}.pt   optimizer state (DP rank 0, or every DP rank when sharded)
    rng_rank{r:05d}.pt                  each rank's RNG streams

Files are written into a staging directory that is swapped into place once every rank has finished
(see ``tracker``: a re-saved iteration keeps its old copy until the new one is in place); the tracker
file is replaced last. A failed write (a full disk, say) removes the staging directory and names the
file. ``--async-save`` takes a snapshot of the state and writes it on a background thread; the
checkpoint is sealed at a later step, once every rank reports its files done. Files are read back with
``safe_load`` (no code runs from a file) after their size and sha256 match the metadata.
"""

import errno
import json
import os
import threading
import time

import torch

from ..config import Config
from ..fsutil import DiskFullError, file_sha256, naming_write_errors, remove_quietly
from ..parallel import comm
from ..parallel.state import ParallelState
from . import safe_load
from .state import (
    FORMAT,
    check_config,
    config_summary,
    set_rng_state,
    target_precision_flags,
)
from .tracker import (
    METADATA,
    TRACKER,
    complete_copy,
    iteration_dir,
    publish,
    read_tracker,
    staging_dir,
)


def model_file(tp: int, pp: int) -> str:
    return f"model_tp{tp:02d}_pp{pp:03d}.pt"


def optim_file(tp: int, pp: int, dp: int) -> str:
    return f"optim_tp{tp:02d}_pp{pp:03d}_dp{dp:03d}.pt"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


def _write(path: str, obj) -> dict:
    with naming_write_errors(path):
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    return {"sha256": file_sha256(path), "bytes": os.path.getsize(path)}


def write_metadata(staged: str, metadata: dict) -> None:
    path = os.path.join(staged, METADATA)
    with naming_write_errors(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())


def _snapshot(obj):
    """A deep copy of every tensor (on CPU) so training may change the originals while a save runs."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


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
        staged = staging_dir(self.root, iteration)
        if ps.rank == 0:
            os.makedirs(self.root, exist_ok=True)
            remove_quietly(staged)
            os.makedirs(staged)
        comm.barrier()
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
            result["error"], result["disk_full"] = str(err) or repr(err), isinstance(err, DiskFullError)

    def poll(self) -> None:
        """Seal a background save if every rank has finished writing (called once per iteration)."""
        if self._pending is None or self._pending[1] is None:
            return
        done = torch.tensor([0.0 if self._pending[1].is_alive() else 1.0])
        if self.pstate.world_size > 1:
            comm.all_reduce(done, _world(), "other", op=torch.distributed.ReduceOp.MIN)
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
        results = comm.all_gather_object(result)
        errors = [r["error"] for r in results if "error" in r]
        staged = staging_dir(self.root, iteration)
        try:
            if errors:
                full = any(r.get("disk_full") for r in results)
                raise (DiskFullError if full else OSError)(
                    errno.ENOSPC if full else errno.EIO,
                    f"checkpoint at iteration {iteration} failed, the previous one is intact: {errors[0]}")
            if self.pstate.rank == 0:
                metadata["files"] = {name: info for r in results for name, info in r["files"].items()}
                write_metadata(staged, metadata)
                publish(self.root, iteration, staged)
                self.log(f" > saved checkpoint at iteration {iteration} to {iteration_dir(self.root, iteration)}")
        except BaseException:
            if self.pstate.rank == 0:
                remove_quietly(staged)  # no litter: the tracker still names the previous checkpoint
            raise
        comm.barrier()


def _world():
    return torch.distributed.group.WORLD


def read_metadata(root: str, log=print) -> tuple[str, dict] | None:
    """``(iteration directory, metadata)`` of the newest checkpoint, None if ``root`` has none yet."""
    iteration = read_tracker(root)
    if iteration is None:
        return None
    directory = complete_copy(root, iteration)
    if directory is None:
        path = os.path.join(iteration_dir(root, iteration), METADATA)
        raise FileNotFoundError(f"{os.path.join(root, TRACKER)} names iteration {iteration}, but {path} "
                                "does not exist (nor a complete .old/.tmp copy of it)")
    if directory != iteration_dir(root, iteration):
        log(f" > WARNING: {iteration_dir(root, iteration)} is missing (a save was interrupted while replacing "
            f"it); reading the complete copy {directory}")
    path = os.path.join(directory, METADATA)
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
    if file_sha256(path) != info["sha256"]:
        raise ValueError(f"{path}: checksum mismatch (file corrupted after it was written)")
    return safe_load.load(path)


def converter_command(root: str, saved: dict, config: Config, here: dict) -> str:
    """A tools/convert_checkpoint.py command line that turns the checkpoint under ``root`` into this
    run's layout (and precision level), ready to paste."""
    root = os.path.normpath(root)
    target = f"{root}_tp{here['tp']}_pp{here['pp']}" + (f"_dp{here['dp']}" if here["distributed_optimizer"] else "")
    cmd = (f"python tools/convert_checkpoint.py --load {root} --save {target} "
           f"--target-tensor-parallel-size {here['tp']} --target-pipeline-parallel-size {here['pp']}")
    if here["distributed_optimizer"]:
        cmd += f" --target-data-parallel-size {here['dp']} --target-use-distributed-optimizer"
    cmd += target_precision_flags(saved.get("config", {}).get("precision", {}), config)
    return f"{cmd}, then resume with --load {target} --save {target}"


def check_layout(metadata: dict, config: Config, pstate: ParallelState, source: str) -> None:
    """Fail, before any other check, when the checkpoint's TP/PP (or, with a sharded optimizer, DP and
    distributed-optimizer) layout differs from this run's; the message holds the converter command.
    ``source`` is ``ROOT/iter_XXXXXXX/metadata.json``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(source)))
    layout = metadata["layout"]
    here = {"tp": pstate.tp_size, "pp": pstate.pp_size, "dp": pstate.dp_size,
            "distributed_optimizer": config.parallel.use_distributed_optimizer and pstate.dp_size > 1}
    sharded_opt = layout["distributed_optimizer"] and layout["dp"] > 1
    mismatch = [f"{k.upper()} {layout[k]} vs {here[k]}" for k in ("tp", "pp") if layout[k] != here[k]]
    if sharded_opt != here["distributed_optimizer"]:
        mismatch.append(f"distributed optimizer {sharded_opt} vs {here['distributed_optimizer']}")
    elif sharded_opt and layout["dp"] != here["dp"]:
        mismatch.append(f"DP {layout['dp']} vs {here['dp']} (optimizer state is sharded over DP)")
    if mismatch:
        raise ValueError(
            f"{source}: saved with another parallel layout ({'; '.join(mismatch)}): the checkpoint has "
            f"TP={layout['tp']} PP={layout['pp']} DP={layout['dp']} (distributed optimizer: {sharded_opt}), "
            f"this run TP={here['tp']} PP={here['pp']} DP={here['dp']} (distributed optimizer: "
            f"{here['distributed_optimizer']}). Convert it first: {converter_command(root, metadata, config, here)}")


def load_rank_files(root: str, config: Config, pstate: ParallelState, sharded_optimizer: bool,
                    load_optim: bool = True, load_rng: bool = True):
    """This rank's (model shard, optimizer state or None, metadata) from the newest checkpoint, RNG restored
    unless ``load_rng`` is False (--no-load-rng); no optimizer state without ``load_optim``."""
    found = read_metadata(root)
    if found is None:
        return None
    directory, metadata = found
    source = os.path.join(directory, METADATA)
    check_layout(metadata, config, pstate, source)  # first: another TP size also pads the vocab otherwise
    check_config(metadata["config"], config, source)
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
