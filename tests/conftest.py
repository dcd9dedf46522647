"""Suite-wide rules: ``gpu``-marked tests skip without a CUDA device (never faked), and the summary says
whether the compiled FP8 kernels were checked against the reference or only the reference ran."""

import sys

import pytest
import torch

KERNEL_TEST_FILES = ("tests/fp8/test_kernels.py", "tests/gpu/test_kernels_cuda.py")
_kernel_tests_run = {"count": 0}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu-marked; run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.when == "call" and not report.skipped and report.nodeid.startswith(KERNEL_TEST_FILES):
        _kernel_tests_run["count"] += 1


def kernel_summary_line() -> str | None:
    """One line on the kernels this session used, or None when no test touched them (nothing is loaded
    here just to report)."""
    kernels = sys.modules.get("megatron_fp8.fp8.kernels")
    status = kernels.loaded_status() if kernels is not None else None
    if status is None:
        return None
    backend, where = status
    if backend == "reference":
        return f"compiled FP8 kernels NOT checked (only the pure-torch reference ran): {where}"
    ran = _kernel_tests_run["count"]
    if not ran:
        return f"compiled FP8 kernels in use ({backend}, {where}); no kernel-vs-reference test ran"
    return f"compiled FP8 kernels checked against the reference by {ran} tests: {backend} from {where}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    line = kernel_summary_line()
    if line is not None:
        terminalreporter.write_sep("-", "FP8 kernels")
        terminalreporter.write_line(line)
