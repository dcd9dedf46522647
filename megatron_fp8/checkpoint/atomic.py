"""Atomic file-system steps shared by every checkpoint writer.

A checkpoint directory is written under a temporary name and renamed into place; the tracker file is
replaced last, so a crash at any point leaves the previous checkpoint complete and selected.
"""

import os
import shutil

TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def staging_dir(root: str, iteration: int) -> str:
    """A fresh temporary directory beside the final ``iter_XXXXXXX``."""
    path = iteration_dir(root, iteration) + f".tmp-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def publish(root: str, iteration: int, staged: str) -> None:
    """Move a fully written staging directory into place, then point the tracker at it."""
    final = iteration_dir(root, iteration)
    if os.path.exists(final):  # re-saving the same iteration: replace the old copy only now
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(root)
    write_file_atomic(os.path.join(root, TRACKER), f"{iteration}\n".encode())


def read_tracker(root: str) -> int | None:
    """The iteration the tracker names, None if there is no tracker; errors name the file."""
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read().strip()
    if not text.isdigit():
        raise ValueError(f"{path}: expected an iteration number, found {text[:40]!r}")
    return int(text)
