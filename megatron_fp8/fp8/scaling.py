"""Scale rule and per-tensor scaling state (delayed and current recipes).

A scale maps real values into the FP8 range: ``stored = cast(clamp(x * scale))``, ``x ~ stored * scale_inv``.
Scales are powers of two, ``2^(floor(log2(fmax / amax)) - margin)``, so multiplying by them is exact and
every implementation (torch reference, C++, CUDA) gets the same bits. An amax of 0, inf or NaN keeps the
previous scale; it is counted in ``ScalingMeta.bad_amax_count`` and never turns into a NaN scale.
"""

import math
from dataclasses import dataclass

import torch

from ..flagspec import NON_NEGATIVE, POSITIVE, check_fields, flag

RECIPES = ("delayed", "current", "tensorwise", "blockwise", "mxfp8")

# Exponent range that keeps both scale and 1/scale normal float32 numbers.
MIN_EXP, MAX_EXP = -126, 126


def scale_exponent(amax: float, fmax: float, margin: int) -> int:
    """floor(log2(fmax/amax)) - margin, evaluated as float32 does (the kernels use the same steps)."""
    ratio = float(torch.tensor(fmax, dtype=torch.float32) / torch.tensor(amax, dtype=torch.float32))
    if math.isinf(ratio):
        return MAX_EXP
    _, exp = math.frexp(ratio)  # ratio = m * 2^exp with m in [0.5, 1)
    return max(MIN_EXP, min(MAX_EXP, exp - 1 - margin))


def amax_is_usable(amax: float) -> bool:
    return math.isfinite(amax) and amax > 0.0


def compute_scale(amax: float, fmax: float, margin: int = 0, previous: float = 1.0) -> float:
    """The power-of-two scale for ``amax``; ``previous`` when amax is 0, inf or NaN."""
    if not amax_is_usable(amax):
        return previous
    return math.ldexp(1.0, scale_exponent(amax, fmax, margin))


def compute_scale_tensor(amax: torch.Tensor, fmax: float, margin: int, previous: torch.Tensor) -> torch.Tensor:
    """Tensor form of :func:`compute_scale` that stays on the device (no host sync on CUDA)."""
    amax = amax.float()
    ratio = torch.tensor(fmax, dtype=torch.float32, device=amax.device) / amax
    _, exp = torch.frexp(ratio)
    exp = torch.where(torch.isinf(ratio), torch.full_like(exp, MAX_EXP + 1 + margin), exp)
    exp = (exp - 1 - margin).clamp(MIN_EXP, MAX_EXP)
    scale = torch.ldexp(torch.ones_like(amax), exp)
    usable = torch.isfinite(amax) & (amax > 0)
    return torch.where(usable, scale, previous.float())


def keep_overflow_visible(scale_inv: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """``scale_inv``, made NaN where the cast saw an inf/NaN (``amax``): the cast saturates such values to
    finite FP8 ones, and a GEMM with this operand must not turn an overflow into finite numbers (loss
    scaling and the skipped-step rule rely on seeing it). Adds an exact 0 otherwise; no host sync."""
    return scale_inv + (amax - amax)


@dataclass
class Fp8Recipe:
    """How activations and output gradients of the FP8 GEMMs are scaled (docs/design.md §2).

    ``format``: ``hybrid`` (E4M3 forward, E5M2 gradients) or ``e4m3``. ``recipe``: ``delayed`` (scale
    from an amax history), ``current`` (scale from this tensor), ``blockwise`` (1x128 tiles, 128x128
    weight blocks). Weights, weight gradients and optimizer states always use current scaling.
    """

    format: str = flag("hybrid", "hybrid (E4M3 forward, E5M2 gradients) | e4m3", name="--fp8-format",
                       choices=("hybrid", "e4m3"))
    recipe: str = flag("delayed", "how activations and output gradients are scaled; tensorwise is "
                       "Megatron's name for current", name="--fp8-recipe", choices=RECIPES)
    amax_history_len: int = flag(16, "amax history of the delayed recipe", name="--fp8-amax-history-len",
                                 bounds=POSITIVE)
    amax_compute_algo: str = flag("max", name="--fp8-amax-compute-algo", choices=("max", "most_recent"))
    margin: int = flag(0, "extra power-of-two headroom of every scale", name="--fp8-margin", bounds=NON_NEGATIVE)

    def __post_init__(self):
        if self.recipe == "tensorwise":  # Megatron-LM's name for per-tensor current scaling
            self.recipe = "current"
        if self.recipe == "mxfp8":
            raise ValueError("--fp8-recipe mxfp8 (MX block scaling on Blackwell GPUs) is not implemented; use "
                             "blockwise (1x128 / 128x128 power-of-two block scales), current or delayed")
        check_fields(self)

    @property
    def grad_dtype(self) -> torch.dtype:
        from .formats import E4M3, E5M2

        return E5M2 if self.format == "hybrid" else E4M3


class ScalingMeta:
    """Scaling state of one tensor role (e.g. the input of one linear layer).

    ``delayed``: the scale used now comes from the amax history of earlier casts; each cast pushes its
    amax. ``current``: the scale comes from the amax of the tensor being cast. All state lives in
    float32 tensors on the tensor's device, so updates never wait on the host.
    """

    def __init__(self, fmax: float, recipe: str = "delayed", history_len: int = 16,
                 compute_algo: str = "max", margin: int = 0, device=None):
        if recipe not in ("delayed", "current"):
            raise ValueError(f"ScalingMeta recipe must be delayed or current, got {recipe!r}")
        self.fmax, self.recipe, self.compute_algo, self.margin = fmax, recipe, compute_algo, margin
        self.scale = torch.ones((), dtype=torch.float32, device=device)
        self.scale_inv = torch.ones((), dtype=torch.float32, device=device)
        self.amax_history = torch.zeros(history_len, dtype=torch.float32, device=device)
        # Casts whose amax was 0, inf or NaN: their scale was kept and their amax left out of the history.
        self.skipped_amax = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def delayed(self) -> bool:
        return self.recipe == "delayed"

    def history_amax(self) -> torch.Tensor:
        """The amax a delayed scale is derived from: the max over the history, or the newest entry."""
        if self.compute_algo == "most_recent":
            return self.amax_history[0]
        return self.amax_history.max()

    def scale_for(self, amax: torch.Tensor) -> torch.Tensor:
        """Power-of-two scale for ``amax``, the current scale where amax is unusable."""
        return compute_scale_tensor(amax, self.fmax, self.margin, self.scale)

    def set_scale(self, scale: torch.Tensor) -> None:
        self.scale.copy_(scale)
        self.scale_inv.copy_(1.0 / scale)

    def record_amax(self, amax: torch.Tensor) -> None:
        """Push the amax of a finished cast; with ``delayed`` the next cast uses the updated history."""
        amax = amax.detach().float().reshape(())
        usable = torch.isfinite(amax) & (amax > 0)
        pushed = torch.cat([amax.reshape(1), self.amax_history[:-1]])
        self.amax_history = torch.where(usable, pushed, self.amax_history)
        self.skipped_amax += (~usable).long()
        if self.delayed:
            self.set_scale(self.scale_for(self.history_amax()))

    def state_dict(self) -> dict:
        return {"scale": self.scale.clone(), "scale_inv": self.scale_inv.clone(),
                "amax_history": self.amax_history.clone(), "skipped_amax": self.skipped_amax.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["amax_history"].shape != self.amax_history.shape:
            raise ValueError(f"amax history length {tuple(state['amax_history'].shape)} does not match "
                             f"--fp8-amax-history-len {self.amax_history.numel()}")
        self.scale.copy_(state["scale"])
        self.scale_inv.copy_(state["scale_inv"])
        self.amax_history = state["amax_history"].to(self.amax_history.device).clone()
        self.skipped_amax.copy_(state["skipped_amax"])
