"""The process's peak memory, logged beside the per-category bytes so users see both (and the gap).

On CPU the peak resident set size: ``VmHWM`` from /proc/self/status (Linux), else ``ru_maxrss`` from
getrusage (kilobytes on Linux, bytes on macOS). On CUDA also the caching allocator's peaks on the
training device: ``max_memory_allocated`` (what tensors held at most) and ``max_memory_reserved`` (what the
allocator took from the driver, slack included); the CUDA context itself is in neither.
"""

import resource
import sys

import torch


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def process_peaks(device) -> dict:
    """``peak_rss`` always; ``peak_cuda_allocated``/``peak_cuda_reserved`` when training on a GPU."""
    out = {"peak_rss": peak_rss_bytes()}
    device = torch.device(device)
    if device.type == "cuda":
        out["peak_cuda_allocated"] = torch.cuda.max_memory_allocated(device)
        out["peak_cuda_reserved"] = torch.cuda.max_memory_reserved(device)
    return out
