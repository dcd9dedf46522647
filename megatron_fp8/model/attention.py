"""Causal self-attention: QKV column-parallel linear, SDPA, output row-parallel linear."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..layers.linear import ColumnParallelLinear, RowParallelLinear, output_layer_std
from ..parallel.state import ParallelState
from .recompute import active, recompute
from .rope import apply_rope


class SelfAttention(nn.Module):
    """QKV rows are laid out per query group as ``[groups, (q_per_group + 2) * head_dim]``: the group's
    query heads, then its key head and its value head (Megatron's layout; with one group per head this is
    ``[heads, (q, k, v), head_dim]``). A TP split hands each rank whole groups. Grouped-query attention
    shares each key/value head among the group's query heads (SDPA's ``enable_gqa``, no copies of K/V)."""

    def __init__(self, config: Config, pstate: ParallelState, prefix: str, device=None, fp8: bool = True):
        super().__init__()
        m = config.model
        self.heads_local = m.num_attention_heads // pstate.tp_size
        self.groups_local = m.query_groups // pstate.tp_size
        self.head_dim = m.head_dim
        self.dropout, self.pstate = m.attention_dropout, pstate
        self.recompute_core = config.training.recompute_granularity == "selective"
        bias = m.add_bias_linear
        self.linear_qkv = ColumnParallelLinear(m.hidden_size, m.qkv_size, config, pstate, f"{prefix}.linear_qkv",
                                               bias=bias or m.add_qkv_bias, device=device, fp8=fp8)
        self.linear_proj = RowParallelLinear(m.num_attention_heads * m.head_dim, m.hidden_size, config, pstate,
                                             f"{prefix}.linear_proj", bias=bias, init_std=output_layer_std(config),
                                             device=device, fp8=fp8)

    def _split_qkv(self, qkv: torch.Tensor):
        """q [s, b, heads, d], k and v [s, b, groups, d] (views of the QKV output where the layout allows)."""
        s, b = qkv.shape[:2]
        d, per_group = self.head_dim, self.heads_local // self.groups_local
        q, k, v = qkv.view(s, b, self.groups_local, (per_group + 2) * d).split([per_group * d, d, d], dim=-1)
        if per_group > 1:  # a group's query heads are contiguous rows, but groups are strided: one copy
            q = q.reshape(s, b, self.heads_local, d)
        return q, k, v

    def forward(self, x: torch.Tensor, rope=None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` (``[b, 1, s, s]``, True = attend; model/masks.py) replaces the causal mask."""
        qkv = self.linear_qkv(x)
        s, b = qkv.shape[:2]
        q, k, v = self._split_qkv(qkv)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads or groups, s, head_dim]
        if self.recompute_core and active(self):
            out = recompute(self._core, self.pstate, q, k, v, attention_mask)
        else:
            out = self._core(q, k, v, attention_mask)
        out = out.permute(2, 0, 1, 3).reshape(s, b, self.heads_local * self.head_dim)
        return self.linear_proj(out)

    def _core(self, q, k, v, attention_mask):
        """Softmax(q k^T) v with attention dropout: the part --recompute-activations recomputes."""
        dropout_p = self.dropout if self.training else 0.0
        gqa = {"enable_gqa": True} if self.groups_local != self.heads_local else {}
        mask = dict(is_causal=True) if attention_mask is None else dict(attn_mask=attention_mask)
        if dropout_p > 0 and self.pstate.rng is not None and self.pstate.tp_size > 1:
            with self.pstate.rng.fork():  # heads are split across TP ranks: draw per-rank masks
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **mask, **gqa)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, **mask, **gqa)
