"""The process's peak memory, logged beside the per-category bytes so users see both (and the gap).

On CPU the peak resident set size: ``VmHWM`` from /proc/self/status (Linux), else ``ru_maxrss`` from
getrusage (kilobytes on Linux, bytes on macOS). On CUDA also the caching allocator's peaks on the
training device: ``max_memory_allocated`` (what tensors held at most) and ``max_memory_reserved`` (what the
allocator took from the driver, slack included); the CUDA context itself is in neither.
"""

import ctypes
import ctypes.util
import os
import resource
import sys

import torch

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 64 * 1024


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` figure in bytes ("VmHWM:  123456 kB"); None where there is no procfs."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def current_rss_bytes() -> int:
    """The resident memory now (VmRSS; the peak so far where /proc is missing). Logged as ``rss_at_start``
    when the Trainer starts building: the interpreter, torch, our kernels and the data, the baseline that
    memory/process.py's planner constant stands for."""
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


def process_peaks(device) -> dict:
    """``peak_rss`` always; ``peak_cuda_allocated``/``peak_cuda_reserved`` when training on a GPU."""
    out = {"peak_rss": peak_rss_bytes()}
    device = torch.device(device)
    if device.type == "cuda":
        out["peak_cuda_allocated"] = torch.cuda.max_memory_allocated(device)
        out["peak_cuda_reserved"] = torch.cuda.max_memory_reserved(device)
    return out


def fix_mmap_threshold(device) -> str | None:
    """On a CPU process under glibc, fix malloc's mmap threshold at 64 KiB; returns a line saying so, or
    None when nothing was changed. Not called by training: it is a measured trade-off, not a default.

    glibc raises its mmap threshold dynamically to the largest block freed so far, after which large
    tensor buffers come from the heap, whose freed pages the process keeps. On a 110M GPT a fixed
    threshold took O2's peak from 1862 to 1602 MB (0.71x of ``off``) at about +3% step time, but the
    5M-parameter quick-start model ran ~45% slower (every mid-sized tensor became an mmap/munmap pair):
    docs/RESULTS.md. Users choose it with ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment; this
    function is the same setting from inside a process (bench/memory_peak.py --fix-mmap-threshold).
    Left alone on CUDA, on other C libraries, and when ``MALLOC_MMAP_THRESHOLD_`` is set."""
    if torch.device(device).type != "cpu" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None  # not glibc
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return None
    return (f" > host memory: glibc mmap threshold fixed at {MMAP_THRESHOLD // 1024} KiB, so freed tensor "
            "buffers return to the system (set MALLOC_MMAP_THRESHOLD_ to choose another value)")
