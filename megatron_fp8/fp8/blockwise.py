"""Blockwise FP8 scaling (DeepSeek-V3 style): 1x128 tiles for activations and gradients, 128x128 blocks
for weights. One power-of-two scale per tile keeps an outlier from flattening its whole tensor.

The GEMM contracts along the last dimension, so every tile lies inside one 128-wide slice of that
dimension; :func:`row_scales` expresses either layout as one scale per (row, 128-column block), which
is what the chunked ``_scaled_mm`` route in :mod:`.gemm` consumes.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .formats import dtype_max
from .scaling import compute_scale_tensor, keep_overflow_visible

BLOCK = 128
TILE_1x128 = (1, BLOCK)
BLOCK_128x128 = (BLOCK, BLOCK)


def _blocks(n: int, size: int) -> int:
    return (n + size - 1) // size


@dataclass
class BlockwiseFp8Tensor:
    """2-D payload with one scale_inv per ``block`` tile: ``scale_inv`` has shape [rows/bm, cols/bk]."""

    data: torch.Tensor
    scale_inv: torch.Tensor
    block: tuple[int, int]

    @classmethod
    def quantize(cls, x: torch.Tensor, block: tuple[int, int], dtype: torch.dtype,
                 margin: int = 0) -> "BlockwiseFp8Tensor":
        if x.dim() != 2:
            raise ValueError(f"blockwise quantization expects a 2-D tensor, got {tuple(x.shape)}")
        rows, cols = x.shape
        bm, bk = block
        tiles = _tile_view(x.detach().float(), block)  # [Rb, bm, Cb, bk], zero padded
        amax = tiles.abs().amax(dim=(1, 3))
        fmax = dtype_max(dtype)
        scale = compute_scale_tensor(amax, fmax, margin, torch.ones_like(amax))
        scaled = (tiles * scale[:, None, :, None]).clamp(-fmax, fmax)
        data = scaled.reshape(_blocks(rows, bm) * bm, _blocks(cols, bk) * bk)[:rows, :cols]
        return cls(data.to(dtype).contiguous(), keep_overflow_visible(1.0 / scale, amax), block)

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def row_scales(self) -> torch.Tensor:
        """scale_inv per (row, 128-column block): [rows, ceil(cols/128)]."""
        if self.block[1] != BLOCK:
            raise ValueError(f"GEMM operands need 128-wide tiles along K, got block {self.block}")
        return self.scale_inv.repeat_interleave(self.block[0], dim=0)[: self.data.shape[0]]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows, cols = self.data.shape
        bm, bk = self.block
        full = self.scale_inv.repeat_interleave(bm, 0).repeat_interleave(bk, 1)[:rows, :cols]
        return (self.data.float() * full).to(dtype)


def _tile_view(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Zero-pad ``x`` to whole tiles and view it as [row_blocks, bm, col_blocks, bk]."""
    rows, cols = x.shape
    bm, bk = block
    padded = F.pad(x, (0, _blocks(cols, bk) * bk - cols, 0, _blocks(rows, bm) * bm - rows))
    return padded.reshape(_blocks(rows, bm), bm, _blocks(cols, bk), bk)
