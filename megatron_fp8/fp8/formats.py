"""The low-precision storage formats and their largest finite values.

E4M3 (``float8_e4m3fn``) carries forward operands, weights, weight gradients and exp_avg; E5M2 carries
output gradients under the ``hybrid`` format. FP16 appears as a *scaled* format too (FP16 + scale for
master weights and exp_avg_sq), so it shares the same scale rule.
"""

import torch

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_DTYPES = (E4M3, E5M2)

# Largest finite magnitude of every dtype a scaled tensor may be stored in.
_MAX = {
    E4M3: 448.0,
    E5M2: 57344.0,
    torch.float16: 65504.0,
    torch.bfloat16: float(torch.finfo(torch.bfloat16).max),
    torch.float32: float(torch.finfo(torch.float32).max),
}

# Dtypes whose values carry a per-tensor scale; the others are stored as plain numbers.
SCALED_DTYPES = (E4M3, E5M2, torch.float16)

_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": E4M3,
          "e4m3": E4M3, "e5m2": E5M2}


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def is_scaled(dtype: torch.dtype) -> bool:
    """Whether values of this storage dtype travel with a per-tensor scale."""
    return dtype in SCALED_DTYPES


def dtype_max(dtype: torch.dtype) -> float:
    try:
        return _MAX[dtype]
    except KeyError:
        raise ValueError(f"no scaled storage for dtype {dtype}") from None


def dtype_from_name(name: str) -> torch.dtype:
    """Map a flag value such as ``fp16`` or ``fp8`` (meaning E4M3) to a torch dtype."""
    try:
        return _NAMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype name {name!r}; expected one of {sorted(_NAMES)}") from None
