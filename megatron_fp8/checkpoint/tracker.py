"""Where checkpoints live under a save directory: ``iter_XXXXXXX`` folders and the tracker file.

An iteration is written into ``iter_XXXXXXX.tmp`` and swapped into place with
:func:`megatron_fp8.fsutil.replace_dir` (a re-saved iteration keeps its old copy as ``iter_XXXXXXX.old``
until the new one is in place); the tracker is replaced last. A kill at any moment therefore leaves the
tracker naming a complete copy under one of the three names, which readers find and writers restore.
"""

import os
import re

from ..fsutil import atomic_write_bytes, fsync_dir, remove_quietly, replace_dir

TRACKER = "latest_checkpointed_iteration.txt"
METADATA = "metadata.json"  # written last into a staged iteration: its presence means the copy is complete
STAGED, BACKUP = ".tmp", ".old"
ITER_DIR = re.compile(r"iter_(\d{7})")


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def staging_dir(root: str, iteration: int) -> str:
    return iteration_dir(root, iteration) + STAGED


def publish(root: str, iteration: int, staged: str) -> None:
    """Move a fully written staging directory into place, then point the tracker at it."""
    final = iteration_dir(root, iteration)
    replace_dir(staged, final, final + BACKUP)
    atomic_write_bytes(os.path.join(root, TRACKER), f"{iteration}\n".encode(), durable=True)


def read_tracker(root: str) -> int | None:
    """The iteration the tracker names, None if there is no tracker; errors name the file."""
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    raw = open(path, "rb").read()
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if text is None or not text.isdigit():
        shown = text[:40] if text is not None else raw[:40]
        raise ValueError(f"{path}: expected an iteration number, found {shown!r}; write the number of the "
                         f"newest complete iter_XXXXXXX folder into it (e.g. `echo 5 > {path}`)")
    return int(text)


def complete_copy(root: str, iteration: int) -> str | None:
    """The folder holding a complete copy of ``iteration``: the published one, else the copy a kill
    during a swap left behind (the previous ``.old``, else the fully staged ``.tmp``); None if none."""
    final = iteration_dir(root, iteration)
    for path in (final, final + BACKUP, final + STAGED):
        if os.path.isfile(os.path.join(path, METADATA)):
            return path
    return None


def repair(root: str, log=print) -> None:
    """Writer start-up: put back the copy an interrupted swap left beside the tracker's iteration, and
    remove staging folders of saves that never completed."""
    iteration = read_tracker(root)
    if iteration is not None:
        final, found = iteration_dir(root, iteration), complete_copy(root, iteration)
        if found is not None and found != final:
            os.replace(found, final)
            fsync_dir(root)
            log(f" > WARNING: {final} was missing after an interrupted save; restored it from {found}")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        stem, ext = os.path.splitext(name)
        if ext in (STAGED, BACKUP) and ITER_DIR.fullmatch(stem):
            path = os.path.join(root, name)
            log(f" > removing {path}, left by an interrupted save (the tracker names a complete checkpoint)")
            remove_quietly(path)


def iteration_folders(root: str) -> list[int]:
    """Iterations of the published ``iter_XXXXXXX`` folders under ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    return sorted(int(m.group(1)) for m in map(ITER_DIR.fullmatch, os.listdir(root)) if m)
