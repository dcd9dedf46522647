"""Atomic file and directory creation: a killed or failed writer never leaves a file that looks complete."""

import contextlib
import os
import shutil
import tempfile
import uuid


def temp_name(final_path: str) -> str:
    """A unique sibling name for `final_path`, so the final rename stays on one filesystem."""
    head, tail = os.path.split(os.path.abspath(final_path))
    return os.path.join(head, f".{tail}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_quietly(path: str) -> None:
    """Delete a file or directory tree if it exists (cleanup after a failure must not raise)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


@contextlib.contextmanager
def atomic_file(final_path: str):
    """Yield a temporary path; on success rename it to `final_path`, on any exception delete it."""
    tmp = temp_name(final_path)
    try:
        yield tmp
        os.replace(tmp, final_path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(final_path: str, payload: bytes) -> None:
    """Write `payload` to `final_path` through a temporary file."""
    with atomic_file(final_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)


@contextlib.contextmanager
def atomic_dir(final_dir: str):
    """Yield a temporary directory; on success rename it to `final_dir`.

    If another process published `final_dir` first, ours is discarded: both built the same thing.
    """
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.partial-{os.getpid()}-", dir=parent)
    try:
        yield tmp
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):
                raise
            remove_quietly(tmp)
    except BaseException:
        remove_quietly(tmp)
        raise
