"""A checkpoint's TP dropout stream saved on one kind of device loads on another: a CUDA generator state
(16 bytes of Philox seed and offset) cannot drive a CPU generator, so the CPU run keeps its own stream
instead of failing at its first tensor-parallel dropout."""

import torch

from megatron_fp8.checkpoint.state import rng_state, set_rng_state
from megatron_fp8.parallel.random import TPRngTracker
from megatron_fp8.parallel.state import ParallelState


def test_cuda_tracker_state_is_not_forced_on_a_cpu_generator():
    saved = rng_state(ParallelState(rng=TPRngTracker(1, 0, "cpu")))
    saved["tp_tracker"] = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    pstate = ParallelState(rng=TPRngTracker(7, 0, "cpu"))
    fresh = pstate.rng.state.clone()
    set_rng_state(saved, pstate)
    assert torch.equal(pstate.rng.state, fresh)
    with pstate.rng.fork():
        torch.rand(3)


def test_same_device_tracker_state_is_restored():
    source = ParallelState(rng=TPRngTracker(1, 0, "cpu"))
    with source.rng.fork():
        torch.rand(5)
    saved = rng_state(source)
    pstate = ParallelState(rng=TPRngTracker(7, 0, "cpu"))
    set_rng_state(saved, pstate)
    assert torch.equal(pstate.rng.state, source.rng.state)
