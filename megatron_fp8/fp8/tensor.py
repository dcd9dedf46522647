"""``Fp8Tensor``: an FP8 (or FP16) payload plus the scale_inv that turns it back into real numbers.

Values are ``real ~ data * scale_inv``. ``scale_inv`` is a 0-dim tensor (tensorwise scaling) or a
``[rows, 1]`` column (rowwise scaling, one scale per row). The optional ``amax`` records the largest
magnitude seen when the payload was written, so an overflow (inf/NaN) stays visible after the values
themselves saturated.
"""

from dataclasses import dataclass

import torch

from . import kernels
from .formats import dtype_max, is_scaled
from .reference import amax as tensor_amax
from .scaling import compute_scale_tensor


@dataclass
class Fp8Tensor:
    data: torch.Tensor
    scale_inv: torch.Tensor
    amax: torch.Tensor | None = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def quantize(cls, x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> "Fp8Tensor":
        """Cast with a given (power-of-two) scale; records the amax of ``x``."""
        data, amax = kernels.scale_cast_amax(x.contiguous(), scale, dtype)
        return cls(data, (1.0 / scale).reshape(()), amax)

    @classmethod
    def quantize_current(cls, x: torch.Tensor, dtype: torch.dtype, margin: int = 0) -> "Fp8Tensor":
        """Current scaling: the scale comes from this tensor's own amax."""
        return cls.quantize(x, current_scale(x, dtype, margin), dtype)

    @classmethod
    def quantize_rowwise(cls, x: torch.Tensor, dtype: torch.dtype, margin: int = 0) -> "Fp8Tensor":
        """One power-of-two scale per row of a 2-D tensor (the ``_scaled_mm`` rowwise layout)."""
        if x.dim() != 2:
            raise ValueError(f"rowwise quantization expects a 2-D tensor, got {tuple(x.shape)}")
        row_amax = x.detach().float().abs().amax(dim=1, keepdim=True) if x.shape[1] else \
            torch.zeros((x.shape[0], 1), dtype=torch.float32, device=x.device)  # an empty row's amax is 0
        scale = compute_scale_tensor(row_amax, dtype_max(dtype), margin, torch.ones_like(row_amax))
        data = (x.float() * scale).clamp(-dtype_max(dtype), dtype_max(dtype)).to(dtype)
        total = row_amax.amax() if x.shape[0] else torch.zeros((), dtype=torch.float32, device=x.device)
        return cls(data, 1.0 / scale, total)

    @classmethod
    def zeros(cls, shape, dtype: torch.dtype, device=None) -> "Fp8Tensor":
        return cls.zeros_like_view(torch.zeros(shape, dtype=dtype, device=device))

    @classmethod
    def zeros_like_view(cls, view: torch.Tensor) -> "Fp8Tensor":
        """Wrap a zeroed FP8 tensor (e.g. a view of a larger buffer) with a scale and amax of its own."""
        one = torch.ones((), dtype=torch.float32, device=view.device)
        return cls(view, one, torch.zeros((), dtype=torch.float32, device=view.device))

    @classmethod
    def from_uint8(cls, payload: torch.Tensor, dtype: torch.dtype, scale_inv: torch.Tensor) -> "Fp8Tensor":
        """Rebuild from bytes received over a collective (gloo/NCCL move FP8 as uint8)."""
        return cls(payload.view(dtype), scale_inv)

    # ---- views and conversions ----------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def rowwise(self) -> bool:
        return self.scale_inv.dim() == 2

    def numel(self) -> int:
        return self.data.numel()

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale_inv.numel() * 4

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale_inv).to(dtype)

    def as_uint8(self) -> torch.Tensor:
        """The payload as raw bytes for communication."""
        return self.data.view(torch.uint8)

    def t(self) -> "Fp8Tensor":
        """Transposed contiguous copy of a tensorwise-scaled 2-D tensor (same scale, exact)."""
        if self.rowwise:
            raise ValueError("a rowwise-scaled tensor has no exact transpose with one scale per row")
        return Fp8Tensor(self.data.t().contiguous(), self.scale_inv, self.amax)

    # ---- in-place accumulation (FP8 weight gradients) -----------------------------------------
    def accumulate_(self, grad: torch.Tensor, margin: int = 0) -> None:
        """``self += grad`` with a fresh current scale; the amax keeps any inf/NaN seen (sticky)."""
        new_amax = kernels.fp8_accumulate(self.data, self.scale_inv, grad, margin)
        self.amax = new_amax if self.amax is None else torch.maximum(self.amax, new_amax)

    def zero_(self) -> None:
        self.data.zero_()
        if self.amax is not None:
            self.amax.zero_()


def current_scale(x: torch.Tensor, dtype: torch.dtype, margin: int = 0) -> torch.Tensor:
    """The current-scaling scale for ``x`` stored as ``dtype`` (1 for unscaled dtypes)."""
    one = torch.ones((), dtype=torch.float32, device=x.device)
    if not is_scaled(dtype):
        return one
    return compute_scale_tensor(tensor_amax(x), dtype_max(dtype), margin, one)
