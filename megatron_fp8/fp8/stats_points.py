"""The statistics of each quantization point that is not a :class:`TensorQuantizer` cast.

Each function is called only while ``RECORDER.active`` (so never with ``--fp8-stats-interval 0``) and
*before* the kernel that quantizes, with what the kernel receives; it recomputes the float32 values the
kernel is about to store (in the kernels' operation order, ``reference.py``) and the scale it will use,
and records their counts under ``<parameter or layer>.<role>``.
"""

import torch

from .blockwise import BlockwiseFp8Tensor
from .formats import dtype_max, is_scaled
from .reference import AdamWHyper, AdamWTensors, adamw_math, amax, load
from .scaling import compute_scale_tensor
from .stats import RECORDER
from .tensor import Fp8Tensor


def _fresh_scale(values: torch.Tensor, dtype: torch.dtype, margin: int, scale_inv: torch.Tensor) -> torch.Tensor:
    """The current-scaling scale a kernel derives for ``values`` (the previous one for an unusable amax)."""
    return compute_scale_tensor(amax(values), dtype_max(dtype), margin, 1.0 / scale_inv)


def weight_operand(layer: str, weight: torch.Tensor, storage_scale_inv: torch.Tensor | None,
                   operand: "Fp8Tensor | BlockwiseFp8Tensor") -> None:
    """``<layer>.weight``: the cast of the real weight values (``weight`` with its storage scale, None for
    plain float storage) into the FP8 GEMM operand (tensorwise, or 128x128 blocks with one scale each)."""
    real = load(weight, storage_scale_inv)
    scale_inv = operand.element_scale_inv() if isinstance(operand, BlockwiseFp8Tensor) else operand.scale_inv
    RECORDER.record(f"{layer}.weight", real, 1.0 / scale_inv, operand.dtype)


def wgrad(weight: torch.Tensor, acc: Fp8Tensor, grad: torch.Tensor, margin: int) -> None:
    """``<parameter>.wgrad``: the FP8 main_grad after adding ``grad`` (``fp8_accumulate``)."""
    name = RECORDER.name_of(weight)
    if name is None:
        return
    total = acc.dequantize() + grad.float().reshape(acc.shape)
    RECORDER.record(f"{name}.wgrad", total, _fresh_scale(total, acc.dtype, margin, acc.scale_inv), acc.dtype)


def adamw(params: list[tuple[torch.Tensor, AdamWTensors]], hyper: AdamWHyper) -> None:
    """``<parameter>.exp_avg`` / ``.exp_avg_sq`` / ``.master`` and, where the optimizer writes a separate FP8
    model weight (O3), ``<parameter>`` itself (``<layer>.weight``): every scaled state the step stores."""
    constants = hyper.constants()
    for param, t in params:
        name = RECORDER.name_of(param)
        stores = (t.exp_avg, t.exp_avg_sq, t.master, t.weight)
        if name is None or not any(x is not None and is_scaled(x.dtype) for x in stores):
            continue  # plain float states (embeddings, norms, biases) are not quantized
        p, m, v = adamw_math(t, constants)
        for role, stored, sinv, values in (("exp_avg", t.exp_avg, t.exp_avg_sinv, m),
                                           ("exp_avg_sq", t.exp_avg_sq, t.exp_avg_sq_sinv, v),
                                           ("master", t.master, t.master_sinv, p),
                                           (None, t.weight, t.weight_sinv, p)):
            if stored is None or not is_scaled(stored.dtype) or sinv is None:
                continue
            label = name if role is None else f"{name}.{role}"
            RECORDER.record(label, values, _fresh_scale(values, stored.dtype, hyper.margin, sinv), stored.dtype)


def dp_grad(grad: torch.Tensor, shards: torch.Tensor, scale_invs: torch.Tensor, factor: float,
            dtype: torch.dtype, margin: int, prev_scale_inv: torch.Tensor) -> None:
    """``<parameter>.dp_grad``: the owner's requantization of the summed FP8 gradient (``sum_shards``)."""
    name = RECORDER.name_of(grad)
    if name is None:
        return
    total = torch.zeros(shards.shape[1:], dtype=torch.float32, device=shards.device)
    for i in range(shards.shape[0]):  # rank order, as the kernel sums
        total = total + load(shards[i], scale_invs[i])
    total = total * float(torch.tensor(factor, dtype=torch.float32))
    RECORDER.record(f"{name}.dp_grad", total, _fresh_scale(total, dtype, margin, prev_scale_inv), dtype)
