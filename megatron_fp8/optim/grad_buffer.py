"""Contiguous gradient storage: every parameter's ``main_grad`` is a view into one flat buffer per dtype.

FP8 weight gradients (O1-O3) are :class:`Fp8Tensor` views with their own scale, written by the FP8
linear's fused accumulation. Gradients that arrive through autograd's ``.grad`` (embeddings, norms,
biases, and every weight at ``off``) are moved into ``main_grad`` by a post-accumulate hook, so the
optimizer sees one kind of gradient and micro-batches accumulate in the buffer's dtype (FP32 for BF16
compute, as Megatron does).
"""

import torch
import torch.nn as nn

from ..config import PrecisionPolicy
from ..fp8.formats import is_fp8
from ..fp8.linear import accumulate_weight_grad
from ..fp8.tensor import Fp8Tensor


def grad_dtype(param: nn.Parameter, policy: PrecisionPolicy) -> torch.dtype:
    return policy.grad if getattr(param, "fp8_eligible", False) else torch.float32


class GradBuffers:
    def __init__(self, params: list[nn.Parameter], policy: PrecisionPolicy, margin: int = 0):
        self.params, self.margin = params, margin
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(grad_dtype(p, policy), []).append(p)
        self.flat: dict[torch.dtype, torch.Tensor] = {}
        for dtype, group in by_dtype.items():
            total = sum(p.numel() for p in group)
            flat = torch.zeros(total, dtype=dtype, device=group[0].device)
            self.flat[dtype] = flat
            offset = 0
            for p in group:
                view = flat[offset: offset + p.numel()].view(p.shape)
                offset += p.numel()
                p.main_grad = Fp8Tensor.zeros_like_view(view) if is_fp8(dtype) else view
        self._hooks = [p.register_post_accumulate_grad_hook(self._move_grad) for p in params]

    def _move_grad(self, param: nn.Parameter) -> None:
        if param.grad is None:  # the FP8 linear already wrote main_grad and returned no gradient
            return
        accumulate_weight_grad(param, param.grad, self.margin)
        param.grad = None

    def zero(self) -> None:
        for flat in self.flat.values():
            flat.zero_()
        for p in self.params:
            if isinstance(p.main_grad, Fp8Tensor):
                p.main_grad.amax.zero_()

    def nbytes(self) -> int:
        scales = sum(8 for p in self.params if isinstance(p.main_grad, Fp8Tensor))  # scale_inv + amax
        return sum(f.numel() * f.element_size() for f in self.flat.values()) + scales
