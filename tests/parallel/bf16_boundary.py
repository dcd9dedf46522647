"""A single-process model that rounds to BF16 where a pipeline would send tensors between stages.

The pipeline moves hidden states forward and their gradients backward in BF16 (docs/design.md §3). Doing the
same at the same layer boundaries in one process gives a reference the pipelined run must match to
FP32 order, which checks the schedule, p2p and stage split far more tightly than the plain reference.
"""

import torch

from megatron_fp8.pipeline.p2p import WIRE_DTYPE
from megatron_fp8.training import Trainer


class _Bf16RoundTrip(torch.autograd.Function):
    """What a pipeline boundary does to a tensor: BF16 on the wire, both ways."""

    @staticmethod
    def forward(ctx, x):
        return x.to(WIRE_DTYPE).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g.to(WIRE_DTYPE).to(g.dtype)


def emulate_pipeline_boundaries(trainer: Trainer, pp: int) -> None:
    """Make a single-process model round its hidden states (and their gradients) to BF16 where a
    ``pp``-stage pipeline would send them, so a pipelined run can be compared with it tightly."""
    layers = trainer.model.decoder.layers
    per_stage = len(layers) // pp
    for stage in range(pp - 1):
        layers[(stage + 1) * per_stage - 1].register_forward_hook(lambda mod, args, out: _Bf16RoundTrip.apply(out))
