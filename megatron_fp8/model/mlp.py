"""The feed-forward block: fc1 (column-parallel), GeLU (exact, or tanh with --openai-gelu) or SwiGLU,
fc2 (row-parallel)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..layers.linear import ColumnParallelLinear, RowParallelLinear, output_layer_std
from ..parallel.state import ParallelState


class MLP(nn.Module):
    def __init__(self, config: Config, pstate: ParallelState, prefix: str, device=None, fp8: bool = True):
        super().__init__()
        m = config.model
        self.swiglu = m.swiglu
        self.gelu_approximate = "tanh" if m.openai_gelu else "none"
        fc1_out = 2 * m.ffn_hidden_size if m.swiglu else m.ffn_hidden_size
        self.linear_fc1 = ColumnParallelLinear(m.hidden_size, fc1_out, config, pstate, f"{prefix}.linear_fc1",
                                               bias=m.add_bias_linear, stacked=2 if m.swiglu else 1, device=device,
                                               fp8=fp8)
        self.linear_fc2 = RowParallelLinear(m.ffn_hidden_size, m.hidden_size, config, pstate,
                                            f"{prefix}.linear_fc2", bias=m.add_bias_linear,
                                            init_std=output_layer_std(config), device=device, fp8=fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_fc1(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        return self.linear_fc2(h)
