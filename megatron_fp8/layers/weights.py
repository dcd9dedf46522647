"""Model parameters in the storage the precision policy asks for, and the one record of what they mean.

Weights are always initialised in float32 at full size from a generator seeded by the parameter's
name, then split for tensor parallelism and only then converted: every parallel layout and every
precision level of the same model starts from the same numbers. This happens one tensor at a time
(each layer's constructor makes its parameters, and each float32 tensor is dropped once stored), so
building a model never holds the whole model in float32: the construction peak is the stored states
plus the temporaries of the one tensor being made (tests/model/test_init_memory.py).

Every parameter carries one :class:`ParamInfo`, attached by :func:`make_parameter` and read through
:func:`param_info`; its real value is read through :func:`real_value` and written through
:func:`assign_value`.
"""

import zlib
from dataclasses import dataclass

import torch
from torch import nn

from ..config import PrecisionPolicy
from ..fp8.formats import is_scaled
from ..fp8.reference import load as load_stored
from ..fp8.tensor import Fp8Tensor

Stored = tuple[torch.Tensor, torch.Tensor | None]  # payload and its scale_inv (None when unscaled)


@dataclass(eq=False)
class ParamInfo:
    """What the framework knows about one parameter beyond its values.

    ``fp8_eligible``: a linear layer's weight (DESIGN §1), stored in the policy's weight dtype; not the
    linears of the layers --first-last-layers-bf16 keeps out of FP8, which are stored like every other
    parameter (compute dtype, FP32 gradient and moments: `off`'s states).
    ``high_precision_layer``: such a linear weight, kept out of FP8 by --first-last-layers-bf16.
    ``partition_dim``: the dimension split across TP ranks; None when every TP rank holds all of it.
    ``tp_stacked``: how many stacked blocks (SwiGLU's gate and up) each TP shard holds a slice of.
    ``no_weight_decay``: AdamW skips its decoupled weight decay.
    ``sequence_parallel``: used on sequence shards, so each TP rank holds part of its gradient.
    ``shared_embedding``: one stage's copy of the word embedding tied across pipeline stages.
    ``embedding_or_output``: the word embedding or output layer, which take --decoupled-lr (Megatron's
    ``is_embedding_or_output_parameter``).
    ``scale_inv``: the storage scale of FP16/FP8 weights at O1-O3 (real = stored * scale_inv); None for
    every other storage (plain FP16 with --fp16 included).
    ``master_dtype``: storage of the optimizer's separate master copy; None where the parameter is its
    own master.
    ``initial_master``: the full-precision value the parameter was last given (initialisation, import,
    conversion), already in the master's storage, until the optimizer takes it as its master (see
    :meth:`take_initial_master`): a master starts from the value, not from its rounding to the
    parameter's storage (issue 18). Held only between building the model and building the optimizer.
    """

    fp8_eligible: bool = False
    high_precision_layer: bool = False
    partition_dim: int | None = None
    tp_stacked: int = 1
    no_weight_decay: bool = False
    sequence_parallel: bool = False
    shared_embedding: bool = False
    embedding_or_output: bool = False
    scale_inv: torch.Tensor | None = None
    master_dtype: torch.dtype | None = None
    initial_master: Stored | None = None

    def take_initial_master(self) -> Stored | None:
        """Hand the initial master over (the optimizer keeps it as its master); the record drops it."""
        value, self.initial_master = self.initial_master, None
        return value


def param_info(param) -> ParamInfo:
    """The record of a parameter made by :func:`make_parameter` (a plain default for any other tensor)."""
    info = getattr(param, "info", None)
    return info if info is not None else ParamInfo()


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A generator whose stream depends only on the seed and the parameter's (layout-free) name."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def init_normal(shape, std: float, seed: int, name: str) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=seeded_generator(seed, name))


def master_dtype(policy: PrecisionPolicy, fp8_eligible: bool) -> torch.dtype | None:
    """Storage of a separate master copy, or None where the parameter itself is the master (DESIGN §1)."""
    return policy.master if fp8_eligible else policy.other_master


def stored_copy(values: torch.Tensor, dtype: torch.dtype, scaled: bool | None = None) -> Stored:
    """Float ``values`` in new ``dtype`` storage; scaled storage (by default every FP16/FP8 dtype) gets a
    fresh current scale."""
    if is_scaled(dtype) if scaled is None else scaled:
        q = Fp8Tensor.quantize_current(values, dtype)
        return q.data, q.scale_inv
    return values.to(dtype, copy=True), None


def make_parameter(full: torch.Tensor, *, policy: PrecisionPolicy, fp8_eligible: bool, device=None,
                   partition_dim: int | None = None, tp_rank: int = 0, tp_size: int = 1, stacked: int = 1,
                   no_weight_decay: bool = False, sequence_parallel: bool = False,
                   shared_embedding: bool = False, embedding_or_output: bool = False,
                   high_precision_layer: bool = False) -> nn.Parameter:
    """Split ``full`` (float32, full size) for this TP rank and store it in the policy's dtype.

    FP8-eligible weights take ``policy.weight`` (FP16/FP8 storage at O1-O3 carries a scale_inv); everything
    else takes the compute dtype, plain (FP16 with ``--fp16`` too). ``stacked`` counts the blocks ``full``
    is made of along a split dimension 0 (see layers.linear).
    """
    local = full.chunk(tp_size, dim=partition_dim)[tp_rank] if partition_dim is not None else full
    # no float copy of its own: assign_value writes the storage (and the initial master) from this view,
    # so each tensor's construction holds the full float32 init once, plus the conversion's temporaries
    local = local.to(device=device).contiguous()
    dtype = policy.weight if fp8_eligible else policy.compute
    split = partition_dim if tp_size > 1 else None
    param = nn.Parameter(torch.empty(local.shape, dtype=dtype, device=device), requires_grad=True)
    param.info = ParamInfo(
        fp8_eligible=fp8_eligible, high_precision_layer=high_precision_layer, partition_dim=split, tp_stacked=stacked if split == 0 else 1,
        no_weight_decay=no_weight_decay, sequence_parallel=sequence_parallel, shared_embedding=shared_embedding,
        embedding_or_output=embedding_or_output,
        scale_inv=torch.ones((), dtype=torch.float32, device=device) if policy.stores_scale(fp8_eligible) else None,
        master_dtype=master_dtype(policy, fp8_eligible))
    assign_value(param, local)
    return param


def assign_value(param: nn.Parameter, values: torch.Tensor) -> None:
    """Store float ``values`` (initialisation, import, conversion) into the parameter's own storage with
    a fresh scale, and keep them in the master's storage as the master's starting point."""
    info = param_info(param)
    data, scale_inv = stored_copy(values, param.dtype, scaled=info.scale_inv is not None)
    with torch.no_grad():
        param.copy_(data)
        if scale_inv is not None:
            info.scale_inv.copy_(scale_inv)
    if info.master_dtype is not None:
        info.initial_master = stored_copy(values.to(param.device), info.master_dtype)


def seed_master_from_storage(param: nn.Parameter) -> None:
    """Where no full-precision value is at hand (--no-load-optim reads the model file only), the master
    built next starts from the parameter's stored value."""
    info = param_info(param)
    if info.master_dtype is not None:
        info.initial_master = stored_copy(real_value(param), info.master_dtype)


def real_value(param: torch.Tensor) -> torch.Tensor:
    """The parameter's value in float32, undoing the storage scale."""
    return load_stored(param.detach(), param_info(param).scale_inv)
