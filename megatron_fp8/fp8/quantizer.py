"""Quantizers that turn high-precision operands into FP8 GEMM operands, following the recipe.

A GEMM needs each operand in two layouts (row-major for one product, transposed for the other in the
backward pass). Tensorwise operands get both from one fused cast+transpose pass; blockwise operands are
tiled along whichever dimension the GEMM contracts.
"""

from typing import Callable

import torch

from . import kernels, replay
from .blockwise import BLOCK_128x128, TILE_1x128, BlockwiseFp8Tensor
from .formats import dtype_max, is_scaled
from .reference import amax as tensor_amax
from .reference import load as load_stored
from .scaling import Fp8Recipe, ScalingMeta, compute_scale_tensor, keep_overflow_visible
from .stats import RECORDER
from .tensor import Fp8Tensor

AmaxReduce = Callable[[torch.Tensor], torch.Tensor]


class TensorQuantizer:
    """Scales and casts one tensor role (e.g. the input of one linear) under a recipe.

    ``amax_reduce`` (optional) agrees an amax over a process group (max), supplied by the parallel
    layers so this package never imports ``torch.distributed``.
    """

    def __init__(self, dtype: torch.dtype, recipe: Fp8Recipe, device=None, amax_reduce: AmaxReduce | None = None):
        self.dtype, self.recipe, self.amax_reduce = dtype, recipe, amax_reduce
        meta_recipe = "delayed" if recipe.recipe == "delayed" else "current"
        self.meta = ScalingMeta(dtype_max(dtype), meta_recipe, recipe.amax_history_len,
                                recipe.amax_compute_algo, recipe.margin, device)
        self._has_history = False  # delayed scaling casts with current scaling until it has an amax
        self.stats_name: str | None = None  # set by the statistics collector (--fp8-stats-interval)

    @property
    def blockwise(self) -> bool:
        return self.recipe.recipe == "blockwise"

    def _reduce(self, amax: torch.Tensor) -> torch.Tensor:
        return self.amax_reduce(amax) if self.amax_reduce is not None else amax

    def quantize(self, x: torch.Tensor, with_transpose: bool = True):
        """Return ``(q, q_t)``: ``x`` [M, K] as an FP8 GEMM operand, and (if asked) ``x.T`` [K, M]. In a
        recomputed forward (fp8/replay.py) the first forward's scale is reused and nothing is recorded."""
        tape = replay.active()
        replaying = tape is not None and tape[1]
        if self.blockwise:
            q = BlockwiseFp8Tensor.quantize(x, TILE_1x128, self.dtype, self.recipe.margin)
            q_t = BlockwiseFp8Tensor.quantize(x.t(), TILE_1x128, self.dtype, self.recipe.margin) \
                if with_transpose else None
            if RECORDER.active and self.stats_name and not replaying:  # both casts (tiles along K) count
                for values, cast in ((x, q), (x.t(), q_t)) if q_t is not None else ((x, q),):
                    RECORDER.record(self.stats_name, values, 1.0 / cast.element_scale_inv(), self.dtype)
            return q, q_t
        if replaying:  # the first forward's scale; no history update, no statistics
            scale, scale_inv = tape[0].take(self)
            data, data_t, amax = _cast(x, scale, self.dtype, with_transpose)
            return Fp8Tensor(data, scale_inv, amax), (Fp8Tensor(data_t, scale_inv) if with_transpose else None)
        agreed = None  # the group-wide amax, when this cast computes it up front
        if self.meta.delayed and self._has_history:
            scale = self.meta.scale.clone()
        else:  # current scaling, and the first cast of a delayed recipe (a scale of 1 would underflow)
            agreed = self._reduce(tensor_amax(x))
            scale = self.meta.scale_for(agreed)
        if RECORDER.active and self.stats_name:
            RECORDER.record(self.stats_name, x, scale, self.dtype)
        data, data_t, amax = _cast(x, scale, self.dtype, with_transpose)
        seen = agreed if agreed is not None else self._reduce(amax)
        self.meta.record_amax(seen)
        self._has_history = True
        scale_inv = keep_overflow_visible(1.0 / scale, seen)
        if tape is not None:
            tape[0].record(self, scale, scale_inv)
        return Fp8Tensor(data, scale_inv, amax), (Fp8Tensor(data_t, scale_inv) if with_transpose else None)

    def state_dict(self) -> dict:
        return self.meta.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.meta.load_state_dict(state)
        self._has_history = bool(self.meta.amax_history.max() > 0)


def _cast(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, with_transpose: bool):
    x = x.contiguous()
    if with_transpose:
        return kernels.cast_transpose_amax(x, scale, dtype)
    data, amax = kernels.scale_cast_amax(x, scale, dtype)
    return data, None, amax


def weight_operands(weight: torch.Tensor, scale_inv: torch.Tensor | None, dtype: torch.dtype,
                    blockwise: bool, margin: int = 0, with_transpose: bool = True):
    """FP8 operands ``(w, w_t)`` of a weight with current scaling.

    ``weight`` may be high precision (``gemm`` level), FP16 + ``scale_inv`` (O1/O2 master) or already
    FP8 + ``scale_inv`` (O3), in which case only the transpose is made. Without ``with_transpose``
    (tensorwise only: GEMMs that read a transposed operand as stored) ``w_t`` is None.
    """
    if blockwise:
        w = BlockwiseFp8Tensor.quantize(load_stored(weight, scale_inv), BLOCK_128x128, dtype, margin)
        return w, BlockwiseFp8Tensor(w.data.t().contiguous(), w.scale_inv.t().contiguous(), BLOCK_128x128)
    if weight.dtype == dtype:
        w = Fp8Tensor(weight, scale_inv)
        return w, (w.t() if with_transpose else None)
    stored_sinv = scale_inv if (scale_inv is not None and is_scaled(weight.dtype)) else None
    real_amax = kernels.amax(weight) * (stored_sinv if stored_sinv is not None else 1.0)
    scale = compute_scale_tensor(real_amax, dtype_max(dtype), margin, torch.ones_like(real_amax))
    # FP16 storage is itself scaled: fold both power-of-two scales into one exact cast.
    cast_scale = scale * stored_sinv if stored_sinv is not None else scale
    data, data_t, _ = _cast(weight, cast_scale, dtype, with_transpose)
    scale_inv_w = 1.0 / scale
    return Fp8Tensor(data, scale_inv_w, real_amax), (Fp8Tensor(data_t, scale_inv_w) if with_transpose else None)

