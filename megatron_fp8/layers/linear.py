"""Column- and row-parallel linear layers (Megatron's split of a weight across the TP group).

``ColumnParallelLinear`` holds output rows ``[out/tp, in]``; ``RowParallelLinear`` holds input
columns ``[out, in/tp]``. The GEMM is the FP8 linear whenever the policy runs GEMMs in FP8, whatever the
weight's storage (compute dtype at ``gemm``, FP16 + scale at O1/O2, FP8 at O3), except in a layer kept out
of FP8 (``fp8=False``, --first-last-layers-bf16): its weight is not FP8-eligible and it runs ``F.linear``
in the compute dtype with `off`'s states.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..fp8.linear import Fp8LinearState, fp8_linear
from ..parallel import mappings
from ..parallel.fp8_comm import TPSequenceOps, tp_amax_reducer
from ..parallel.state import ParallelState
from .weights import init_normal, make_parameter, param_info


class _ParallelLinear(nn.Module):
    partition_dim: int  # weight dim split across TP ranks

    def __init__(self, in_features: int, out_features: int, config: Config, pstate: ParallelState, name: str,
                 bias: bool = True, init_std: float | None = None, stacked: int = 1, device=None,
                 fp8: bool = True):
        super().__init__()
        policy = config.precision.policy
        tp = pstate.tp_size  # the split is valid: Config.validate_layout checked it before any model exists
        std = config.model.init_method_std if init_std is None else init_std
        full = init_normal((out_features, in_features), std, config.training.seed, f"{name}.weight")
        full = _interleave_for_tp(full, stacked, tp) if self.partition_dim == 0 else full
        # shards hold a slice of every stacked block (see _interleave_for_tp)
        self.weight = make_parameter(full, policy=policy, fp8_eligible=fp8, high_precision_layer=not fp8,
                                     device=device, partition_dim=self.partition_dim, tp_rank=pstate.tp_rank,
                                     tp_size=tp, stacked=stacked)
        self.pstate = pstate
        self.sequence_parallel = config.parallel.sequence_parallel and tp > 1
        self.bias = None
        if bias:
            bias_dim = 0 if self.partition_dim == 0 else None
            full_bias = torch.zeros(out_features)
            full_bias = _interleave_for_tp(full_bias, stacked, tp) if self.partition_dim == 0 else full_bias
            # a row-parallel bias is added on sequence shards: its gradients are partial
            self.bias = make_parameter(full_bias, policy=policy, fp8_eligible=False,
                                       device=device, partition_dim=bias_dim, tp_rank=pstate.tp_rank,
                                       tp_size=tp, stacked=stacked, no_weight_decay=True,
                                       sequence_parallel=self.sequence_parallel and self.partition_dim == 1)
        gathers_input = self.sequence_parallel and self.partition_dim == 0
        self.fp8_state = Fp8LinearState(config.precision.recipe, device, tp_amax_reducer(pstate),
                                        TPSequenceOps(pstate) if gathers_input else None) \
            if policy.fp8_gemm and fp8 else None

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.fp8_state is not None:
            return fp8_linear(x, self.weight, bias, self.fp8_state, param_info(self.weight).scale_inv)
        return F.linear(x, self.weight, bias)


class ColumnParallelLinear(_ParallelLinear):
    """``y_local = x @ W_local.T``: each TP rank produces its slice of the output features.

    Under sequence parallelism the input arrives split along the sequence and is all-gathered first:
    in FP8 inside the FP8 linear (one byte per element on the wire), else in the compute dtype.
    """

    partition_dim = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            x = x if self.fp8_state is not None else mappings.gather_from_sp(x, self.pstate)
        else:
            x = mappings.copy_to_tp(x, self.pstate)
        return self._matmul(x, self.bias)


class RowParallelLinear(_ParallelLinear):
    """``y = sum over TP ranks of x_local @ W_local.T``; the bias is added once, after the sum."""

    partition_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._matmul(x, None)
        if self.sequence_parallel:
            out = mappings.reduce_scatter_to_sp(out, self.pstate)
        else:
            out = mappings.reduce_from_tp(out, self.pstate)
        return out + self.bias if self.bias is not None else out


def output_layer_std(config: Config) -> float:
    """Megatron's scaled init for layers that write into the residual stream: std / sqrt(2 L)."""
    return config.model.init_method_std / math.sqrt(2.0 * config.model.num_layers)


def _interleave_for_tp(full: torch.Tensor, stacked: int, tp: int) -> torch.Tensor:
    """Reorder rows so that splitting into ``tp`` chunks gives each rank its slice of every stacked block.

    A weight made of ``stacked`` blocks (e.g. SwiGLU's gate and up projections) must be split block by
    block: rank r holds ``[gate_r; up_r]``. Initialising the full blocks first keeps every layout equal.
    The bias of such a layer is reordered the same way, so that its shard lines up with the weight's rows.
    Parameters record ``tp_stacked`` (their ParamInfo) so shards can be put back together (tests, checkpoint conversion).
    """
    if stacked == 1 or tp == 1:
        return full
    rows, rest = full.shape[0], full.shape[1:]
    return full.reshape(stacked, tp, rows // (stacked * tp), *rest).transpose(0, 1).reshape(full.shape)
