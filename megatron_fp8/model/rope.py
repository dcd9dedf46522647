"""Rotary position embeddings (non-interleaved halves, as Megatron and Llama use)."""

import torch


def rope_tables(seq_length: int, head_dim: int, base: int, device=None, dtype=torch.float32):
    """``(cos, sin)`` of shape [s, 1, 1, head_dim] for positions 0..s-1."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_length, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)[:, None, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [s, b, heads, head_dim] by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    s = x.shape[0]
    return x * cos[:s] + rotated * sin[:s]
