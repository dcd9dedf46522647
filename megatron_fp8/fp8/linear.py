"""The FP8 linear: ``y = x @ W.T + b`` with FP8 operands in all three GEMMs.

Forward: x and W in E4M3. Backward: the output gradient in E5M2 (``hybrid``) or E4M3; dgrad =
``g @ W``, wgrad = ``g.T @ x``, both FP8 GEMMs with float32 accumulation. The weight gradient either
returns to autograd in high precision (``gemm`` level) or is added into ``weight.main_grad``: a float
tensor (Megatron's fused gradient accumulation) or an :class:`Fp8Tensor`, accumulated in FP8 with a
fresh scale (dequantize-add-requantize, O1-O3). Only FP8 x is kept for backward.

GEMMs that need both operands row-major in K (cuBLASLt's "TN", and blockwise scaling, whose 1x128 tiles
run along each GEMM's K) get FP8 transposes of W, x and g, made in the same pass as the casts
(cast_transpose), and backward keeps x's transpose. The CPU's decoded GEMMs read an operand stored
transposed as it is (:mod:`.cpu_gemm`), so there, with tensorwise scales, nothing is transposed: the
casts write one copy, the weight cache holds one, and backward keeps x as cast (:func:`needs_transposes`).
"""

from typing import Protocol

import torch
import torch.nn as nn

from . import cpu_gemm, stats_points
from .blockwise import TILE_1x128, BlockwiseFp8Tensor
from .formats import E4M3, is_fp8, is_scaled
from .gemm import blockwise_gemm, fp8_gemm
from .quantizer import AmaxReduce, TensorQuantizer, weight_operands
from .scaling import Fp8Recipe
from .stats import RECORDER
from .tensor import Fp8Tensor


class SequenceParallelOps(Protocol):
    """Collectives over the TP group, injected by the parallel layers (this package stays distributed-free)."""

    def gather(self, t: torch.Tensor) -> torch.Tensor: ...  # concatenate every rank's rows

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor: ...  # sum, keep this rank's rows


def _gemm(a, b, out_dtype, a_transposed=False, b_transposed=False):
    if isinstance(a, BlockwiseFp8Tensor):
        return blockwise_gemm(a, b, out_dtype)
    return fp8_gemm(a, b, out_dtype, a_transposed, b_transposed)


def needs_transposes(device: torch.device, blockwise: bool) -> bool:
    """Whether the FP8 linear on ``device`` makes FP8 transposes (see the module docstring)."""
    return blockwise or not cpu_gemm.use_decode(device)


class Fp8LinearState:
    """Per-layer FP8 state: the input and output-gradient quantizers and the cached FP8 weight.

    The FP8 weight is cast once per optimizer step, not per micro-batch: it is rebuilt only when the
    parameter's version counter shows an in-place update.
    """

    def __init__(self, recipe: Fp8Recipe, device=None, amax_reduce: AmaxReduce | None = None,
                 sequence_parallel: "SequenceParallelOps | None" = None):
        self.recipe, self.sequence_parallel = recipe, sequence_parallel
        self.input_quantizer = TensorQuantizer(E4M3, recipe, device, amax_reduce)
        self.grad_quantizer = TensorQuantizer(recipe.grad_dtype, recipe, device, amax_reduce)
        self._weight_key = None
        self._weight = None
        self.stats_name: str | None = None  # the layer's name once statistics are on (--fp8-stats-interval)

    def set_stats_name(self, layer: str) -> None:
        self.stats_name = layer
        self.input_quantizer.stats_name, self.grad_quantizer.stats_name = f"{layer}.input", f"{layer}.grad_output"

    def weight_operands(self, weight: torch.Tensor, scale_inv: torch.Tensor | None, with_transpose: bool = True):
        key = (weight.data_ptr(), weight._version, with_transpose)
        if key != self._weight_key:
            self._weight = weight_operands(weight, scale_inv, E4M3, self.recipe.recipe == "blockwise",
                                           self.recipe.margin, with_transpose)
            self._weight_key = key
            if RECORDER.active and self.stats_name and weight.dtype != E4M3:  # O3: the optimizer cast it
                stats_points.weight_operand(self.stats_name, weight, scale_inv, self._weight[0])
        return self._weight

    def quantize_input(self, x2d: torch.Tensor, need_transpose: bool):
        """FP8 operands of the input; under sequence parallelism the local rows are cast with the scale
        agreed over the TP group and all-gathered as FP8 bytes, so the GEMM consumes them directly."""
        sp = self.sequence_parallel
        if sp is None:
            return self.input_quantizer.quantize(x2d, with_transpose=need_transpose)
        local, _ = self.input_quantizer.quantize(x2d, with_transpose=False)
        if isinstance(local, BlockwiseFp8Tensor):
            xq = BlockwiseFp8Tensor(sp.gather(local.data), sp.gather(local.scale_inv), local.block)
            xq_t = BlockwiseFp8Tensor.quantize(xq.dequantize().t(), TILE_1x128, E4M3, self.recipe.margin) \
                if need_transpose else None
            return xq, xq_t
        xq = Fp8Tensor(sp.gather(local.data), local.scale_inv, local.amax)
        return xq, (xq.t() if need_transpose else None)

    def state_dict(self) -> dict:
        return {"input": self.input_quantizer.state_dict(), "grad": self.grad_quantizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.input_quantizer.load_state_dict(state["input"])
        self.grad_quantizer.load_state_dict(state["grad"])


def accumulate_weight_grad(weight: torch.Tensor, wgrad: torch.Tensor, margin: int):
    """Add ``wgrad`` into ``weight.main_grad`` if it has one (returning None), else return it for autograd."""
    main_grad = getattr(weight, "main_grad", None)
    if main_grad is None:
        if is_fp8(weight.dtype) or is_scaled(weight.dtype):
            raise RuntimeError("an FP8/FP16-with-scale weight needs a main_grad buffer for its gradient")
        return wgrad.to(weight.dtype)
    if isinstance(main_grad, Fp8Tensor):
        if RECORDER.active:
            stats_points.wgrad(weight, main_grad, wgrad, margin)
        main_grad.accumulate_(wgrad, margin)
    else:
        main_grad.add_(wgrad.to(main_grad.dtype))
    notify = getattr(weight, "on_main_grad", None)  # lets a gradient buffer start reducing early
    if notify is not None:
        notify(weight)
    return None


class _Fp8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, state: Fp8LinearState, weight_scale_inv):
        in_features = x.shape[-1]
        x2d = x.reshape(-1, in_features)
        transposes = needs_transposes(x.device, state.recipe.recipe == "blockwise")
        w, w_t = state.weight_operands(weight, weight_scale_inv, transposes)
        need_wgrad = ctx.needs_input_grad[1]  # False under no_grad / for frozen weights
        xq, xq_t = state.quantize_input(x2d, need_wgrad and transposes)
        out = _gemm(xq, w, x.dtype)
        if bias is not None:
            out = out + bias
        gathered = xq.shape[0] // max(1, x2d.shape[0])  # TP size under sequence parallelism, else 1
        # FP8 x (or its transpose) is the only activation kept; save_for_backward lets memory meters see it.
        kept = (xq_t if transposes else xq) if need_wgrad else None
        ctx.save_for_backward(*((kept.data, kept.scale_inv) if kept is not None else ()))
        ctx.xq_t_kind = (type(kept), getattr(kept, "block", None))
        ctx.state, ctx.w_t, ctx.weight, ctx.transposes = state, (w_t if transposes else w), weight, transposes
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return out.reshape(x.shape[0] * gathered, *x.shape[1:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        state, weight = ctx.state, ctx.weight
        g2d = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        need_wgrad = ctx.needs_input_grad[1]
        flip = not ctx.transposes  # operands stored transposed, read through the GEMM's flags
        gq, gq_t = state.grad_quantizer.quantize(g2d, with_transpose=need_wgrad and ctx.transposes)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _gemm(gq, ctx.w_t, grad_out.dtype, b_transposed=flip)
            if state.sequence_parallel is not None:  # adjoint of the input all-gather
                dx = state.sequence_parallel.reduce_scatter(dx)
            dx = dx.reshape(ctx.x_shape)
        dw = None
        if need_wgrad:
            wgrad = _gemm(gq if flip else gq_t, _saved_operand(ctx), torch.float32, flip, flip)
            dw = accumulate_weight_grad(weight, wgrad, state.recipe.margin)
        db = g2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        ctx.w_t = None
        return dx, dw, db, None, None


def _saved_operand(ctx):
    data, scale_inv = ctx.saved_tensors
    kind, block = ctx.xq_t_kind
    return kind(data, scale_inv, block) if kind is BlockwiseFp8Tensor else kind(data, scale_inv)


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: Fp8LinearState,
               weight_scale_inv: torch.Tensor | None = None):
    """Functional FP8 linear (see module docstring); ``state`` carries the layer's scaling state and
    ``weight_scale_inv`` the storage scale of an FP16/FP8 weight (None for a plain float weight)."""
    return _Fp8LinearFunction.apply(x, weight, bias, state, weight_scale_inv)


class Fp8Linear(nn.Module):
    """A stand-alone FP8 linear layer with a high-precision weight (the ``gemm`` mode).

    The precision levels give ``weight`` other storage (FP16 + scale, FP8) and a ``main_grad``; the
    function above handles all of them, this module is the simplest user.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: Fp8Recipe | None = None, device=None, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.normal_(self.weight, std=0.02)
        self.fp8_state = Fp8LinearState(recipe or Fp8Recipe(), device)

    def forward(self, x):
        return fp8_linear(x, self.weight, self.bias, self.fp8_state)
