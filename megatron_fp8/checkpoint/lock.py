"""One run per save directory: an advisory lock file naming its holder (pid, host, start time, command).

The file appears with its content in one step (written aside, then hard-linked into place, which fails
if it exists), so a reader never sees a half-written lock. A second writer fails at start-up with the
holder's details. A lock whose holder is gone (same host, no process with that pid and start time) is
taken over with a warning; a lock from another host cannot be checked and must be removed by hand.
"""

import json
import os
import socket
import sys
import time

from ..fsutil import remove_quietly, temp_name

LOCK_FILE = "megatron_fp8.lock"


class SaveDirLockedError(RuntimeError):
    """Another run holds the lock of this save directory."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a recycled pid apart); None where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(info: dict) -> bool:
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, KeyError):
        return True  # someone else's live process, or a lock we cannot interpret: assume held
    started = info.get("proc_start")
    return started is None or _proc_start(int(info["pid"])) in (None, started)


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}, "
            f"command: {' '.join(info.get('argv', []))[:200]}")


class SaveDirLock:
    def __init__(self, root: str, log=print):
        self.root, self.log = root, log
        self.path = os.path.join(root, LOCK_FILE)
        self.held = False

    def _mine(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv}

    def _read(self, path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": None, "host": None, "unreadable": True}

    def acquire(self) -> "SaveDirLock":
        os.makedirs(self.root, exist_ok=True)
        mine = temp_name(self.path)
        with open(mine, "w", encoding="utf-8") as f:
            json.dump(self._mine(), f)
        try:
            for _ in range(3):
                try:
                    self._create(mine)
                    self.held = True
                    return self
                except FileExistsError:
                    holder = self._read(self.path)
                    if holder is None:
                        continue  # released meanwhile: try again
                    self._take_over_or_fail(holder)
            raise SaveDirLockedError(f"{self.path}: could not take the lock (another run keeps taking it)")
        finally:
            remove_quietly(mine)

    def _create(self, mine: str) -> None:
        """Put our lock in place in one step; FileExistsError if there is one."""
        try:
            os.link(mine, self.path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(open(mine, encoding="utf-8").read())

    def _take_over_or_fail(self, holder: dict) -> None:
        here = socket.gethostname()
        if holder.get("unreadable") or holder.get("host") != here or _alive(holder):
            where = "this host" if holder.get("host") == here else f"host {holder.get('host')}"
            raise SaveDirLockedError(
                f"--save {self.root} is in use by another run ({_describe(holder)}): two runs writing one "
                f"save directory overwrite each other's checkpoints. Wait for it to finish, or give this run "
                f"another --save; if that run is gone (it ran on {where}), delete {self.path}")
        # the holder died without releasing: move its lock aside, and take over only if it is still that one
        aside = temp_name(self.path)
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read(aside) != holder:  # another run replaced the stale lock meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            remove_quietly(aside)
            return
        remove_quietly(aside)
        self.log(f" > WARNING: took over the stale lock {self.path} of a run that is gone ({_describe(holder)})")

    def release(self) -> None:
        if self.held:
            holder = self._read(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                remove_quietly(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
