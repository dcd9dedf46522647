"""Rotary position embeddings (non-interleaved halves, as Megatron and Llama use), optionally on the leading
``--rotary-percent`` of each head and with Llama-3.1's frequency scaling (``--use-rope-scaling``)."""

import math

import torch

# Llama 3.1's scaling constants (Megatron fixes them too; only the factor is a flag)
LOW_FREQ_FACTOR, HIGH_FREQ_FACTOR, ORIGINAL_MAX_POSITIONS = 1.0, 4.0, 8192


def inverse_frequencies(rotary_dim: int, base: float, scaling_factor: float | None = None,
                        device=None) -> torch.Tensor:
    """``base^(-2i/d)`` for i < d/2; with ``scaling_factor``, Llama 3.1's rescaling: wavelengths longer than
    the original context / LOW_FREQ_FACTOR are divided by the factor, shorter than context / HIGH_FREQ_FACTOR
    kept, and the band between interpolated smoothly."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    if scaling_factor is None:
        return inv_freq
    wavelength = 2 * math.pi / inv_freq
    long_wave, short_wave = ORIGINAL_MAX_POSITIONS / LOW_FREQ_FACTOR, ORIGINAL_MAX_POSITIONS / HIGH_FREQ_FACTOR
    scaled = torch.where(wavelength > long_wave, inv_freq / scaling_factor, inv_freq)
    smooth = (ORIGINAL_MAX_POSITIONS / wavelength - LOW_FREQ_FACTOR) / (HIGH_FREQ_FACTOR - LOW_FREQ_FACTOR)
    blended = (1 - smooth) * scaled / scaling_factor + smooth * scaled
    in_band = (wavelength >= short_wave) & (wavelength <= long_wave)
    return torch.where(in_band, blended, scaled)


def rope_tables(seq_length: int, rotary_dim: int, base: float, device=None, dtype=torch.float32,
                scaling_factor: float | None = None):
    """``(cos, sin)`` of shape [s, 1, 1, rotary_dim] for positions 0..s-1."""
    inv_freq = inverse_frequencies(rotary_dim, base, scaling_factor, device)
    angles = torch.outer(torch.arange(seq_length, dtype=torch.float32, device=device), inv_freq)
    emb = torch.cat([angles, angles], dim=-1)[:, None, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading ``cos.shape[-1]`` channels of ``x`` [s, b, heads, head_dim] by the position
    angles; the remaining channels pass through (``--rotary-percent`` < 1)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)
    half = rot // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    s = x.shape[0]
    return x * cos[:s] + rotated * sin[:s]
