"""Pre-norm transformer layers and the block of layers that lives on one pipeline stage."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..layers.norm import Norm
from ..parallel.state import ParallelState
from .attention import SelfAttention
from .mlp import MLP


class TransformerLayer(nn.Module):
    def __init__(self, config: Config, pstate: ParallelState, layer_number: int, device=None):
        super().__init__()
        prefix = f"decoder.layers.{layer_number}"
        h = config.model.hidden_size
        self.input_layernorm = Norm(h, config, device)
        self.self_attention = SelfAttention(config, pstate, f"{prefix}.self_attention", device)
        self.pre_mlp_layernorm = Norm(h, config, device)
        self.mlp = MLP(config, pstate, f"{prefix}.mlp", device)
        self.hidden_dropout = config.model.hidden_dropout

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        attn = self.self_attention(self.input_layernorm(x), rope)
        x = x + F.dropout(attn, self.hidden_dropout, self.training)
        mlp = self.mlp(self.pre_mlp_layernorm(x))
        return x + F.dropout(mlp, self.hidden_dropout, self.training)


class TransformerBlock(nn.Module):
    """The layers of this pipeline stage, numbered globally so every layout names (and seeds) them alike."""

    def __init__(self, config: Config, pstate: ParallelState, device=None):
        super().__init__()
        per_stage = config.model.num_layers // pstate.pp_size
        first = pstate.pp_rank * per_stage
        self.layers = nn.ModuleList(TransformerLayer(config, pstate, first + i, device) for i in range(per_stage))
        self.final_layernorm = Norm(config.model.hidden_size, config, device) if pstate.is_last_stage else None

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, rope)
        return self.final_layernorm(x) if self.final_layernorm is not None else x
