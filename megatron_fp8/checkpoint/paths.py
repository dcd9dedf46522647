"""What ``--load`` and ``--save`` mean for a run, decided at start-up before any work.

- ``--load`` naming a path that does not exist (a typo) or one ``iter_XXXXXXX`` folder is an error that
  says what to pass; an existing folder without a tracker starts from scratch with Megatron's warning
  (the usual first run ``--save X --load X``, also when X does not exist yet).
- ``--save`` is locked for the run (``lock``) and must not hold checkpoints this run did not load: a run
  never overwrites another run's checkpoints. Leftovers of an interrupted save are repaired under the lock.
"""

import os

from ..parallel import comm
from .lock import SaveDirLock
from .tracker import ITER_DIR, TRACKER, iteration_folders, read_tracker, repair


class CheckpointDirError(ValueError):
    """--load or --save cannot be used as given; raised on every rank before any work."""


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def no_checkpoint_message(root: str, flag: str = "--load") -> str:
    """Why ``root`` holds no checkpoint, saying what to pass instead (every message says 'no checkpoint')."""
    if not os.path.exists(root):
        return f"{flag} {root}: no checkpoint: the path does not exist"
    if os.path.isfile(root):
        return f"{flag} {root}: no checkpoint: this is a file; pass the folder that holds {TRACKER}"
    name = os.path.basename(os.path.normpath(root))
    if ITER_DIR.fullmatch(name.split(".")[0]):
        parent = os.path.dirname(os.path.abspath(root))
        return (f"{flag} {root}: no checkpoint: this is the folder of one saved iteration; pass the checkpoint "
                f"directory that holds it and {TRACKER}: {flag} {parent} (it resumes from the iteration its "
                f"{TRACKER} names)")
    folders = iteration_folders(root)
    if folders:
        return (f"{flag} {root}: no checkpoint: it holds iteration folders (newest iter_{folders[-1]:07d}) but no "
                f"{TRACKER}; if iter_{folders[-1]:07d} is complete, write it: "
                f"echo {folders[-1]} > {os.path.join(root, TRACKER)}")
    return f"{flag} {root}: no checkpoint (no {TRACKER})"


def load_decision(load: str | None, save: str | None, log=print) -> bool:
    """True if ``load`` holds a checkpoint to resume; False to start from scratch (with Megatron's
    warning); raises ValueError when ``load`` cannot be what the user meant."""
    if not load:
        return False
    if read_tracker(load) is not None:
        return True
    one_iteration = ITER_DIR.fullmatch(os.path.basename(os.path.normpath(load)).split(".")[0])
    first_run = save is not None and _same(load, save) and not os.path.exists(load)  # Megatron's --save X --load X
    if not one_iteration and not iteration_folders(load) and (os.path.isdir(load) or first_run):
        log(f" > WARNING: could not find the metadata file {os.path.join(load, TRACKER)}\n"
            "    will not load any checkpoints and will start from random")
        return False
    raise ValueError(no_checkpoint_message(load))


def check_save_dir(save: str, loads: bool, load: str | None) -> None:
    """Refuse a ``--save`` that holds checkpoints this run did not load (it would overwrite them)."""
    newest = read_tracker(save)
    folders = iteration_folders(save)
    if newest is None and not folders:
        return
    if loads and _same(load, save):
        return
    what = f"latest iteration {newest}" if newest is not None else f"iter_{folders[-1]:07d} and others"
    reason = (f"this run loads {load} instead" if loads else "this run starts from scratch")
    raise ValueError(f"--save {save} already holds checkpoints ({what}) and {reason}: saving would overwrite "
                     f"them. To continue that run pass --load {save}; to start another run choose an empty "
                     f"--save directory")


def prepare(load: str | None, save: str | None, log=print) -> tuple[bool, SaveDirLock | None]:
    """Start-up on rank 0: ``(resume from load?, the save directory's lock)``; raises before any work."""
    loads = load_decision(load, save, log)
    if not save:
        return loads, None
    lock = SaveDirLock(save, log).acquire()
    try:
        check_save_dir(save, loads, load)
        repair(save, log)
    except BaseException:
        lock.release()
        raise
    return loads, lock


def prepare_for_run(load: str | None, save: str | None, pstate, printer=print) -> tuple[bool, SaveDirLock | None]:
    """:func:`prepare` on rank 0, its decision (or error) shared with every rank; the logging rank
    prints rank 0's warnings. Returns ``(resume?, lock held by rank 0 or None)``."""
    lines, outcome, lock = [], None, None
    if pstate.rank == 0:
        try:
            loads, lock = prepare(load, save, lines.append)
            outcome = ("ok", loads)
        except (ValueError, OSError, RuntimeError) as err:
            outcome = ("error", str(err))
    lines, outcome = comm.all_gather_object((lines, outcome))[0]
    for line in lines:
        printer(line)
    if outcome[0] == "error":
        raise CheckpointDirError(outcome[1])
    return outcome[1], lock
