"""Contiguous gradient storage split into buckets, and its data-parallel reduction.

Every parameter's ``main_grad`` is a view into one flat buffer per gradient dtype. FP8 weight gradients
(O1-O3) are :class:`Fp8Tensor` views with their own scale, written by the FP8 linear's fused
accumulation; gradients that arrive through autograd's ``.grad`` (embeddings, norms, biases, every
weight at ``off``) are moved into ``main_grad`` by a post-accumulate hook, so micro-batches accumulate
in the buffer's dtype (FP32 for BF16 compute, as in Megatron).

Parameters are laid out in reverse registration order, roughly the order backward produces their
gradients, and cut into buckets. With ``overlap`` a bucket's reduction starts as soon as every one of its
gradients has received its last micro-batch, while backward goes on; the rest is finished before the
optimizer step.
"""

import torch
import torch.nn as nn

from ..config import PrecisionPolicy
from ..fp8.formats import is_fp8
from ..fp8.linear import accumulate_weight_grad
from ..fp8.tensor import Fp8Tensor
from ..layers.weights import param_info
from ..parallel.state import ParallelState
from .dp_reduce import BucketReduction


def grad_dtype(param: nn.Parameter, policy: PrecisionPolicy) -> torch.dtype:
    return policy.grad if param_info(param).fp8_eligible else torch.float32


class Bucket:
    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.arrivals = 0
        self.reduction: BucketReduction | None = None


class GradBuffers:
    def __init__(self, params: list[nn.Parameter], policy: PrecisionPolicy, margin: int = 0,
                 pstate: ParallelState | None = None, owners: dict | None = None, gather: bool = True,
                 bucket_elems: int = 1 << 22, overlap: bool = False):
        self.params, self.margin, self.policy = params, margin, policy
        self.pstate, self.owners, self.gather, self.overlap = pstate, owners, gather, overlap
        self.flat: dict[torch.dtype, torch.Tensor] = {}
        self.buckets: list[Bucket] = []
        self._bucket_of: dict[int, Bucket] = {}
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in reversed(params):
            by_dtype.setdefault(grad_dtype(p, policy), []).append(p)
        for dtype, group in by_dtype.items():
            self._allocate(dtype, group, bucket_elems)
        self.expected_arrivals = 1
        self._hooks = [p.register_post_accumulate_grad_hook(self._move_grad) for p in params]
        for p in params:
            p.on_main_grad = self._grad_arrived

    def _allocate(self, dtype: torch.dtype, group: list[nn.Parameter], bucket_elems: int) -> None:
        flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=group[0].device)
        self.flat[dtype] = flat
        offset, current = 0, []
        for p in group:
            view = flat[offset: offset + p.numel()].view(p.shape)
            offset += p.numel()
            p.main_grad = Fp8Tensor.zeros_like_view(view) if is_fp8(dtype) else view
            current.append(p)
            if sum(q.numel() for q in current) >= bucket_elems:
                self._add_bucket(current)
                current = []
        if current:
            self._add_bucket(current)

    def _add_bucket(self, params: list[nn.Parameter]) -> None:
        bucket = Bucket(params)
        self.buckets.append(bucket)
        for p in params:
            self._bucket_of[id(p)] = bucket

    # ---- gradient arrival ---------------------------------------------------------------------
    def _move_grad(self, param: nn.Parameter) -> None:
        if param.grad is None:  # the FP8 linear already wrote main_grad and returned no gradient
            return
        accumulate_weight_grad(param, param.grad, self.margin)
        param.grad = None

    def _grad_arrived(self, param: nn.Parameter) -> None:
        if not self.overlap or not self.reduces:
            return
        bucket = self._bucket_of[id(param)]
        bucket.arrivals += 1
        if bucket.arrivals == self.expected_arrivals * len(bucket.params):
            self._reduction(bucket).start()

    # ---- data-parallel reduction --------------------------------------------------------------
    @property
    def reduces(self) -> bool:
        return self.pstate is not None and self.pstate.dp_size > 1

    def _reduction(self, bucket: Bucket) -> BucketReduction:
        if bucket.reduction is None:
            grads = [p.main_grad for p in bucket.params]
            eligible = param_info(bucket.params[0]).fp8_eligible  # a bucket holds one grad dtype
            wire = self.policy.grad_reduce if eligible else self.policy.other_grad_reduce
            owners = [self.owners[id(p)] for p in bucket.params]
            bucket.reduction = BucketReduction(grads, owners, self.pstate, wire, self.gather, self.margin)
        return bucket.reduction

    def reduce(self) -> None:
        """Finish (or run) every bucket's data-parallel reduction; a no-op without data parallelism."""
        if not self.reduces:
            return
        for bucket in self.buckets:
            reduction = self._reduction(bucket)
            reduction.finish()
            bucket.reduction = None

    def zero(self, micro_batches: int = 1) -> None:
        """Clear the gradients before a step of ``micro_batches`` backward passes."""
        for flat in self.flat.values():
            flat.zero_()
        for p in self.params:
            if isinstance(p.main_grad, Fp8Tensor):
                p.main_grad.amax.zero_()
        for bucket in self.buckets:
            bucket.arrivals = 0
        self.expected_arrivals = micro_batches

    def nbytes(self) -> int:
        scales = sum(8 for p in self.params if isinstance(p.main_grad, Fp8Tensor))  # scale_inv + amax
        return sum(f.numel() * f.element_size() for f in self.flat.values()) + scales
