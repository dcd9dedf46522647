"""The process-memory helpers: the peak RSS read, and glibc's mmap threshold fixed on CPU runs only."""

import ctypes
import ctypes.util
import sys

import pytest

from megatron_fp8.process_memory import fix_mmap_threshold, peak_rss_bytes

glibc = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"),
                                                     "mallopt")


def test_peak_rss_grows_with_a_touched_buffer():
    before = peak_rss_bytes()
    buffer = bytearray(64 << 20)  # zero-filled: every page touched
    assert peak_rss_bytes() >= before and peak_rss_bytes() >= len(buffer)
    del buffer


@pytest.mark.skipif(not glibc, reason="needs glibc's mallopt")
def test_cpu_run_fixes_the_threshold_and_says_so(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    line = fix_mmap_threshold("cpu")
    assert line is not None and "mmap threshold fixed at 64 KiB" in line and "MALLOC_MMAP_THRESHOLD_" in line


def test_the_users_setting_and_gpu_runs_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold("cpu") is None  # the user's value (read by glibc at start-up) stands
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert fix_mmap_threshold("cuda") is None  # host memory is not what limits a GPU run
