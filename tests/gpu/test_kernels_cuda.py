"""Every compiled kernel against the pure-torch reference on the GPU, bit for bit, with the cases of
``python -m megatron_fp8.fp8.kernels --check`` (special values, every dtype pair, odd sizes); the CPU
suite's CUDA test (tests/fp8/test_kernels.py::test_cuda_matches_reference) adds multi-tensor AdamW with
more than one launch group."""

import pytest
import torch

from megatron_fp8.fp8 import kernels

from ..fp8.test_kernels import CUDA_KERNELS, NOT_COMPILED

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not CUDA_KERNELS,
                                 reason=f"extension built without CUDA ({NOT_COMPILED or 'CPU-only build'})")]

NAMES = ["scale_cast_amax", "cast_transpose_amax", "fp8_accumulate", "sum_shards", "adamw_step"]


@pytest.mark.parametrize("name", NAMES)
def test_kernel_matches_reference_on_cuda(name):
    cases = dict(kernels._check_cases(torch.device("cuda")))[name]
    assert cases
    for i, case in enumerate(cases):
        got, want = (r if isinstance(r, tuple) else (r,) for r in case())
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.device.type == "cuda" and w.device.type == "cuda"
            assert kernels._ulp_diff(g, w) == 0, f"{name} case {i}: {kernels._ulp_diff(g, w)} ulp"
