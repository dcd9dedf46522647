"""LayerNorm and RMSNorm in the compute dtype (norms are never FP8, docs/design.md §1).

With ``--apply-layernorm-1p`` the weight is zero-centred: stored as ``w - 1`` (initialised to zeros) and
applied as ``1 + w``, so weight decay pulls the scale towards 1 rather than 0.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from .weights import make_parameter


class Norm(nn.Module):
    def __init__(self, hidden_size: int, config: Config, device=None, sequence_parallel: bool = False):
        super().__init__()
        policy = config.precision.policy
        self.kind, self.eps = config.model.normalization, config.model.layernorm_epsilon
        self.zero_centered = config.model.apply_layernorm_1p
        initial = torch.zeros(hidden_size) if self.zero_centered else torch.ones(hidden_size)
        # on sequence shards each TP rank sees part of the gradient
        kwargs = dict(policy=policy, fp8_eligible=False, device=device, no_weight_decay=True,
                      sequence_parallel=sequence_parallel)
        self.weight = make_parameter(initial, **kwargs)
        self.bias = make_parameter(torch.zeros(hidden_size), **kwargs) if self.kind == "LayerNorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[-1],)
        weight = self.weight + 1 if self.zero_centered else self.weight
        if self.kind == "LayerNorm":
            return F.layer_norm(x, shape, weight, self.bias, self.eps)
        return F.rms_norm(x, shape, weight, self.eps)
