"""Global gradient norm over FP8/FP32 main gradients, overflow detection and the clip coefficient.

An FP8 gradient's values saturate on overflow, so its recorded amax (which keeps inf/NaN) is checked
as well as the norm. The norm is reduced over whatever groups the caller passes (TP/PP/DP later);
the clip coefficient is folded into the optimizer kernel instead of a separate pass over gradients.
"""

from typing import Callable

import torch
import torch.nn as nn

from ..fp8.tensor import Fp8Tensor


def _sum_of_squares(grads: list) -> torch.Tensor:
    """Sum of squares of the real gradient values; FP8 ones as ``scale_inv^2 * sum(q^2)`` (no dequantized copy)."""
    floats = [g for g in grads if not isinstance(g, Fp8Tensor)]
    total = torch.stack(torch._foreach_norm(floats)).square().sum() if floats else torch.zeros(())
    for g in grads:
        if isinstance(g, Fp8Tensor):
            total = total + torch.linalg.vector_norm(g.data.float()).square() * g.scale_inv.square()
    return total


def _nonfinite(grads: list) -> torch.Tensor:
    """1 if any gradient holds inf/NaN: FP8 ones by their sticky amax (their values saturate)."""
    flags = [(~torch.isfinite(g.amax)).float() if isinstance(g, Fp8Tensor) else (~torch.isfinite(g)).any().float()
             for g in grads]
    return torch.stack(flags).amax() if flags else torch.zeros(())


def grad_norm_and_overflow(params: list[nn.Parameter], counted: Callable[[nn.Parameter], bool] = lambda p: True,
                           reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """``(norm, found_nonfinite)`` over the main gradients as 0-dim tensors. ``counted`` excludes
    replicas from the norm; overflow is checked on every parameter."""
    grads = [p.main_grad for p in params]
    sq = _sum_of_squares([p.main_grad for p in params if counted(p)]).to(params[0].device)
    stats = torch.stack([sq.float(), _nonfinite(grads).to(sq.device)])
    if reduce_sum is not None:
        stats = reduce_sum(stats)
    norm = stats[0].sqrt()
    return norm, (stats[1] > 0) | ~torch.isfinite(norm)


def clip_coefficient(norm: float, clip_grad: float) -> float:
    """Megatron's rule: scale gradients by clip/(norm + 1e-6) when that is below one."""
    if clip_grad <= 0:
        return 1.0
    return min(1.0, clip_grad / (norm + 1.0e-6))
