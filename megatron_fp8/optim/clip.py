"""Global gradient norm over FP8/FP32 main gradients, overflow detection and the clip coefficient.

An FP8 gradient's values saturate on overflow, so its recorded amax (which keeps inf/NaN) is checked
as well as the norm. The norm is reduced over whatever groups the caller passes (TP/PP/DP later);
the clip coefficient is folded into the optimizer kernel instead of a separate pass over gradients.
"""

from typing import Callable

import torch
import torch.nn as nn

from ..fp8.tensor import Fp8Tensor


def _real_grad(param: nn.Parameter) -> torch.Tensor:
    g = param.main_grad
    return g.dequantize() if isinstance(g, Fp8Tensor) else g.float()


def grad_norm_and_overflow(params: list[nn.Parameter], counted: Callable[[nn.Parameter], bool] = lambda p: True,
                           reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """``(norm, found_nonfinite)`` over the main gradients as 0-dim tensors. ``counted`` excludes
    replicas from the norm; overflow is checked on every parameter."""
    device = params[0].device
    sq = torch.zeros((), dtype=torch.float32, device=device)
    bad = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        g = _real_grad(p)
        if counted(p):
            sq += g.square().sum()
        else:
            bad += (~torch.isfinite(g)).any().float()
        if isinstance(p.main_grad, Fp8Tensor) and p.main_grad.amax is not None:
            bad += (~torch.isfinite(p.main_grad.amax)).float()
    stats = torch.stack([sq, bad])
    if reduce_sum is not None:
        stats = reduce_sum(stats)
    norm = stats[0].sqrt()
    return norm, (stats[1] > 0) | ~torch.isfinite(norm)


def clip_coefficient(norm: float, clip_grad: float) -> float:
    """Megatron's rule: scale gradients by clip/(norm + 1e-6) when that is below one."""
    if clip_grad <= 0:
        return 1.0
    return min(1.0, clip_grad / (norm + 1.0e-6))
