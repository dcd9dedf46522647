"""Causal self-attention: QKV column-parallel linear, SDPA, output row-parallel linear."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..layers.linear import ColumnParallelLinear, RowParallelLinear, output_layer_std
from ..parallel.state import ParallelState
from .rope import apply_rope


class SelfAttention(nn.Module):
    """QKV rows are laid out per head as ``[heads, (q, k, v), head_dim]`` (Megatron's layout), so a TP
    split hands each rank whole heads."""

    def __init__(self, config: Config, pstate: ParallelState, prefix: str, device=None):
        super().__init__()
        m = config.model
        self.heads_local = m.num_attention_heads // pstate.tp_size
        self.head_dim = m.head_dim
        self.dropout, self.pstate = m.attention_dropout, pstate
        bias = m.add_bias_linear
        self.linear_qkv = ColumnParallelLinear(m.hidden_size, 3 * m.hidden_size, config, pstate,
                                               f"{prefix}.linear_qkv", bias=bias, device=device)
        self.linear_proj = RowParallelLinear(m.hidden_size, m.hidden_size, config, pstate, f"{prefix}.linear_proj",
                                             bias=bias, init_std=output_layer_std(config), device=device)

    def forward(self, x: torch.Tensor, rope=None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` (``[b, 1, s, s]``, True = attend; model/masks.py) replaces the causal mask."""
        qkv = self.linear_qkv(x)
        s, b = qkv.shape[:2]
        q, k, v = qkv.view(s, b, self.heads_local, 3 * self.head_dim).split(self.head_dim, dim=-1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, head_dim]
        dropout_p = self.dropout if self.training else 0.0
        mask = dict(is_causal=True) if attention_mask is None else dict(attn_mask=attention_mask)
        if dropout_p > 0 and self.pstate.rng is not None and self.pstate.tp_size > 1:
            with self.pstate.rng.fork():  # heads are split across TP ranks: draw per-rank masks
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **mask)
        out = out.permute(2, 0, 1, 3).reshape(s, b, self.heads_local * self.head_dim)
        return self.linear_proj(out)
