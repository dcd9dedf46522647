"""Atomic file and directory writes, the one module every writer uses (data caches, tokenizers, checkpoints).

A killed or failed writer never leaves a file that looks complete, never destroys the last good copy, and
cleans up its temporary files; a full disk is reported as such, naming the file being written.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import uuid


class DiskFullError(OSError):
    """A write ran out of space (or quota); the message names the file and the free space left."""


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
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _free_bytes(path: str) -> str:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
        return f"{st.f_bavail * st.f_frsize / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when torch's zip writer reports a short write as 'unexpected pos'."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and is_disk_full(cause):
        return True
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


@contextlib.contextmanager
def naming_write_errors(path: str):
    """Re-raise a full disk as :class:`DiskFullError` naming ``path``; other OS errors get the path too."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as err:
        if is_disk_full(err):
            raise DiskFullError(errno.ENOSPC, f"{path}: no space left on device while writing "
                                f"({_free_bytes(path)}); free some space and retry") from err
        if isinstance(err, OSError) and not err.filename and str(path) not in str(err):
            raise OSError(err.errno, f"{path}: {err.strerror or err}") from err
        raise


@contextlib.contextmanager
def atomic_file(final_path: str):
    """Yield a temporary path; on success rename it to `final_path`, on any exception delete it."""
    tmp = temp_name(final_path)
    try:
        with naming_write_errors(final_path):
            yield tmp
            os.replace(tmp, final_path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(final_path: str, payload: bytes, durable: bool = False) -> None:
    """Write `payload` to `final_path` through a temporary file (fsynced, with its folder, if `durable`)."""
    with atomic_file(final_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(final_path)))


@contextlib.contextmanager
def atomic_dir(final_dir: str):
    """Yield a temporary directory; on success rename it to `final_dir`.

    If another process published `final_dir` first, ours is discarded: both built the same thing.
    """
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.partial-{os.getpid()}-", dir=parent)
    try:
        with naming_write_errors(final_dir):
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


def replace_dir(staged: str, final: str, backup: str) -> None:
    """Move the complete directory ``staged`` to ``final``; an existing ``final`` is first renamed to
    ``backup`` and deleted only once the new copy is in place, so a kill at any point leaves one complete
    copy under ``final``, ``backup`` or ``staged`` (readers look in that order)."""
    if os.path.exists(final):
        remove_quietly(backup)  # an older leftover: ``final`` is the complete copy
        os.replace(final, backup)
    os.replace(staged, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    remove_quietly(backup)


def file_sha256(path: str) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
