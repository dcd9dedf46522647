"""Model-state bytes (weights, gradient buffers, master weights, moments, FP8 weight cache) of one rank.

Storage follows the code that allocates it: layers/weights.make_parameter (FP8-eligible weights take
``policy.weight``, the rest the compute dtype; scaled storage carries a 4-byte scale_inv),
optim/grad_buffer (one buffer slot per parameter; FP8 gradients add scale_inv + amax), optim/adamw.ParamState
(master/moments, FP32 for non-eligible parameters, a master only when their storage is not FP32) and
optim/ownership (the distributed optimizer keeps state for the whole tensors a rank owns).
"""

import torch

from ..config import PrecisionPolicy
from ..fp8.blockwise import BLOCK
from ..fp8.formats import E4M3, is_fp8, is_scaled
from ..layers.weights import master_dtype, param_info
from ..optim.grad_buffer import grad_dtype
from ..optim.ownership import assign_param_owners
from .inventory import ParamSpec

STATE_KEYS = ("weights", "grads", "master", "exp_avg", "exp_avg_sq")
SCALE_BYTES = 4  # one float32 scale_inv per scaled tensor


def stored_bytes(numel: int, dtype: torch.dtype | None) -> int:
    """Bytes of a tensor in ``dtype`` plus its scale_inv when the dtype is a scaled one (0 for None)."""
    if dtype is None:
        return 0
    return numel * dtype.itemsize + (SCALE_BYTES if is_scaled(dtype) else 0)


def state_dtypes(spec: ParamSpec, policy: PrecisionPolicy) -> dict:
    """Storage dtype of each model state of one parameter (None: no separate master)."""
    eligible = param_info(spec).fp8_eligible
    if eligible:
        weight, exp_avg, exp_avg_sq = policy.weight, policy.exp_avg, policy.exp_avg_sq
    else:
        weight, exp_avg, exp_avg_sq = policy.compute, torch.float32, torch.float32
    master = master_dtype(policy, eligible)
    return {"weights": weight, "grads": grad_dtype(spec, policy), "master": master,
            "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def _param_bytes(spec: ParamSpec, policy: PrecisionPolicy) -> dict:
    dtypes, n = state_dtypes(spec, policy), spec.numel()
    out = {k: stored_bytes(n, d) for k, d in dtypes.items()}
    # compute-dtype weights carry no scale, FP16 ones with --fp16 included (layers/weights.make_parameter)
    scaled = policy.stores_scale(param_info(spec).fp8_eligible)
    out["weights"] = n * dtypes["weights"].itemsize + (SCALE_BYTES if scaled else 0)
    # the gradient buffer's FP8 views carry scale_inv and amax but no storage-level scale (8 bytes in all)
    out["grads"] = n * dtypes["grads"].itemsize + (2 * SCALE_BYTES if is_fp8(dtypes["grads"]) else 0)
    return out


def model_states(params: list[ParamSpec], policy: PrecisionPolicy, dp_size: int, distributed: bool,
                 only: str | None = None) -> list[dict]:
    """Bytes per state key for each data-parallel rank of one (TP rank, PP stage).

    Weights and gradient buffers are whole on every rank; without the distributed optimizer (or with
    one data-parallel rank) every rank also keeps all optimizer state. ``only`` names a boolean ParamInfo
    field (``fp8_eligible``, ``high_precision_layer``): count only the parameters that have it.
    """
    sharded = distributed and dp_size > 1
    owners = assign_param_owners(params, dp_size) if sharded else {}
    replicated = dict.fromkeys(STATE_KEYS, 0)
    owned = [dict.fromkeys(STATE_KEYS, 0) for _ in range(dp_size)]
    for spec in params:
        if only is not None and not getattr(param_info(spec), only):
            continue
        for key, nbytes in _param_bytes(spec, policy).items():
            if key in ("weights", "grads") or not sharded:
                replicated[key] += nbytes
            else:
                owned[owners[id(spec)]][key] += nbytes
    return [{k: replicated[k] + mine[k] for k in STATE_KEYS} for mine in owned]


def fp8_weight_cache(params: list[ParamSpec], policy: PrecisionPolicy, blockwise: bool,
                     transposes: bool = True) -> int:
    """The FP8 operands each FP8 linear caches between optimizer steps (fp8/quantizer.weight_operands).

    A weight already in E4M3 (O3) is its own row-major operand and only the transpose is made; any
    other storage gets both an FP8 copy and its transpose (plus scale_inv and amax). Blockwise scaling
    always makes both, each with one scale per 128x128 block. Without ``transposes`` (the CPU's decoded
    GEMMs, fp8/linear.needs_transposes) only the FP8 copy is made, and an E4M3 weight caches nothing.
    """
    if not policy.fp8_gemm:
        return 0
    total = 0
    for spec in params:
        if not param_info(spec).fp8_eligible:
            continue
        n = spec.numel()
        if blockwise:
            rows, cols = spec.shape
            total += 2 * (n + -(-rows // BLOCK) * -(-cols // BLOCK) * SCALE_BYTES)
        elif policy.weight == E4M3:
            total += n if transposes else 0
        else:
            total += (2 * n if transposes else n) + 2 * SCALE_BYTES
    return total


def fp8_scaling_state(params: list[ParamSpec], policy: PrecisionPolicy, history_len: int) -> int:
    """Per FP8 linear, the input and output-gradient ScalingMeta: scale, scale_inv, amax history, skip count."""
    if not policy.fp8_gemm:
        return 0
    linears = sum(1 for spec in params if param_info(spec).fp8_eligible)
    return linears * 2 * (2 * SCALE_BYTES + history_len * 4 + 8)
