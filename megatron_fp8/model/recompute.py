"""Activation recomputation (Megatron's --recompute-granularity/--recompute-method/--recompute-num-layers).

A recomputed region runs its forward without keeping activations and keeps only its inputs; its
backward runs the forward again, with gradients, and backpropagates through that. The second forward
is the first one replayed bit for bit:
- the RNG streams (CPU, the current CUDA device, and the TP RNG tracker) are set back to where the first
  forward found them, so every dropout mask is the same, then returned to where backward found them;
- every FP8 cast reuses the scale the first forward used (fp8/replay.py) and leaves amax histories
  alone, so delayed scaling advances once per real forward, never twice;
so losses and gradients equal those of a run without recomputation (tests/model/test_recompute.py).

Which regions: ``full`` granularity with ``uniform`` method recomputes groups of ``--recompute-num-layers``
layers (their first input kept); ``block`` recomputes the first ``--recompute-num-layers`` layers of the
stage one by one and keeps the rest; ``selective`` (``--recompute-activations``) recomputes the attention
core (softmax, dropout, the two batched products: the s x s tensors) of every layer.
"""

import torch

from ..fp8 import replay
from ..metrics import ActivationMeter


def _rng_state(pstate):
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    tracker = pstate.rng.state.clone() if pstate is not None and pstate.rng is not None else None
    return torch.get_rng_state(), cuda, tracker


def _set_rng_state(pstate, state) -> None:
    cpu, cuda, tracker = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
    if tracker is not None:
        pstate.rng.state = tracker


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, pstate, *args):
        ctx.run, ctx.pstate = run, pstate
        ctx.rng = _rng_state(pstate)
        ctx.tape = replay.ScaleTape()
        ctx.meter = ActivationMeter.current()
        with torch.no_grad(), replay.recording(ctx.tape):
            out = run(*args)
        ctx.save_for_backward(*args)  # the only activations kept: the region's inputs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in ctx.saved_tensors]
        after = _rng_state(ctx.pstate)
        _set_rng_state(ctx.pstate, ctx.rng)
        try:
            with torch.enable_grad(), replay.replaying(ctx.tape):
                if ctx.meter is not None:
                    with ctx.meter.measure_rebuild():
                        out = ctx.run(*inputs)
                else:
                    out = ctx.run(*inputs)
        finally:
            _set_rng_state(ctx.pstate, after)
        if len(ctx.tape):
            raise RuntimeError("recomputed forward ran fewer FP8 casts than the first forward")
        torch.autograd.backward(out, grad_out)
        ctx.run = ctx.tape = None
        return (None, None, *(t.grad if t is not None and t.requires_grad else None for t in inputs))


def recompute(run, pstate, *args: torch.Tensor | None) -> torch.Tensor:
    """``run(*args)`` (one tensor out), recomputed during backward instead of keeping its activations.
    ``args`` are tensors or None; anything else ``run`` needs it takes from its closure."""
    return _Recompute.apply(run, pstate, *args)


def active(module: torch.nn.Module) -> bool:
    """Recomputation applies: training with gradients (evaluation keeps nothing anyway)."""
    return module.training and torch.is_grad_enabled()


def recomputed_layers(granularity: str | None, method: str | None, num_layers: int | None,
                      layers: int) -> list[tuple[int, int, bool]]:
    """The stage's layers as ``(start, end, recomputed)`` runs under full granularity (Megatron's
    uniform groups, or the first ``num_layers`` layers one by one with ``block``); one plain run otherwise."""
    if granularity != "full":
        return [(0, layers, False)]
    if method == "uniform":
        return [(s, min(s + num_layers, layers), True) for s in range(0, layers, num_layers)]
    kept = min(num_layers, layers)
    return [(i, i + 1, True) for i in range(kept)] + ([(kept, layers, False)] if kept < layers else [])
