"""Pre-norm transformer layers and the block of layers that lives on one pipeline stage."""

import torch
import torch.nn as nn

from ..config import Config
from ..layers.norm import Norm
from ..parallel.random import dropout
from ..parallel.state import ParallelState
from .attention import SelfAttention
from .mlp import MLP
from .recompute import active, recompute, recomputed_layers


def sequence_parallel(config: Config, pstate: ParallelState) -> bool:
    """Whether hidden states between the TP regions are split along the sequence."""
    return config.parallel.sequence_parallel and pstate.tp_size > 1


class TransformerLayer(nn.Module):
    def __init__(self, config: Config, pstate: ParallelState, layer_number: int, device=None):
        super().__init__()
        prefix = f"decoder.layers.{layer_number}"
        h, sp = config.model.hidden_size, sequence_parallel(config, pstate)
        # global layer numbers: a pipeline stage's layers are the model's first/last ones only where they are
        self.fp8 = not config.precision.high_precision_layer(layer_number, config.model.num_layers)
        self.input_layernorm = Norm(h, config, device, sp)
        self.self_attention = SelfAttention(config, pstate, f"{prefix}.self_attention", device, self.fp8)
        self.pre_mlp_layernorm = Norm(h, config, device, sp)
        self.mlp = MLP(config, pstate, f"{prefix}.mlp", device, self.fp8)
        self.hidden_dropout, self.pstate, self.sp = config.model.hidden_dropout, pstate, sp

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.hidden_dropout, self.training, self.pstate, split_across_tp=self.sp)

    def forward(self, x: torch.Tensor, rope=None, attention_mask=None) -> torch.Tensor:
        x = x + self._dropout(self.self_attention(self.input_layernorm(x), rope, attention_mask))
        return x + self._dropout(self.mlp(self.pre_mlp_layernorm(x)))


class TransformerBlock(nn.Module):
    """The layers of this pipeline stage, numbered globally so every layout names (and seeds) them alike."""

    def __init__(self, config: Config, pstate: ParallelState, device=None):
        super().__init__()
        per_stage = config.model.num_layers // pstate.pp_size
        first = pstate.pp_rank * per_stage
        self.layers = nn.ModuleList(TransformerLayer(config, pstate, first + i, device) for i in range(per_stage))
        self.final_layernorm = Norm(config.model.hidden_size, config, device, sequence_parallel(config, pstate)) \
            if pstate.is_last_stage else None
        t = config.training
        self.runs = recomputed_layers(t.recompute_granularity, t.recompute_method, t.recompute_num_layers, per_stage)
        self.pstate = pstate

    def _run(self, start: int, end: int):
        def run(x, cos, sin, attention_mask):
            rope = (cos, sin) if cos is not None else None
            for layer in self.layers[start:end]:
                x = layer(x, rope, attention_mask)
            return x
        return run

    def forward(self, x: torch.Tensor, rope=None, attention_mask=None) -> torch.Tensor:
        cos, sin = rope if rope is not None else (None, None)
        for start, end, recomputed in self.runs:
            if recomputed and active(self):
                x = recompute(self._run(start, end), self.pstate, x, cos, sin, attention_mask)
            else:
                x = self._run(start, end)(x, cos, sin, attention_mask)
        return self.final_layernorm(x) if self.final_layernorm is not None else x
