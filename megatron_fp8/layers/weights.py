"""Model parameters in the storage the precision policy asks for.

Weights are always initialised in float32 at full size from a generator seeded by the parameter's
name, then split for tensor parallelism and only then converted: every parallel layout and every
precision level of the same model starts from the same numbers.
"""

import zlib

import torch
import torch.nn as nn

from ..config import PrecisionPolicy
from ..fp8.formats import is_scaled
from ..fp8.tensor import Fp8Tensor


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A generator whose stream depends only on the seed and the parameter's (layout-free) name."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def init_normal(shape, std: float, seed: int, name: str) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=seeded_generator(seed, name))


def make_parameter(full: torch.Tensor, *, policy: PrecisionPolicy, fp8_eligible: bool, device=None,
                   partition_dim: int | None = None, tp_rank: int = 0, tp_size: int = 1,
                   no_weight_decay: bool = False) -> nn.Parameter:
    """Split ``full`` (float32, full size) for this TP rank and store it in the policy's dtype.

    FP8-eligible weights take ``policy.weight`` (FP16/FP8 storage at O1-O3 gets a ``scale_inv`` attribute);
    everything else takes the compute dtype, plain (FP16 with ``--fp16`` too).
    """
    local = full.chunk(tp_size, dim=partition_dim)[tp_rank] if partition_dim is not None else full
    local = local.to(device=device, copy=True)  # a copy: a chunk view would keep the whole tensor alive
    dtype = policy.weight if fp8_eligible else policy.compute
    if policy.stores_scale(fp8_eligible):
        q = Fp8Tensor.quantize_current(local, dtype)
        param = nn.Parameter(q.data, requires_grad=True)
        param.scale_inv = q.scale_inv
    else:
        param = nn.Parameter(local.to(dtype), requires_grad=True)
    param.fp8_eligible = fp8_eligible
    param.partition_dim = partition_dim if tp_size > 1 else None
    param.no_weight_decay = no_weight_decay
    return param


def real_value(param: torch.Tensor) -> torch.Tensor:
    """The parameter's value in float32, undoing the storage scale."""
    values = param.detach().float()
    scale_inv = getattr(param, "scale_inv", None)
    return values * scale_inv if scale_inv is not None and is_scaled(param.dtype) else values
