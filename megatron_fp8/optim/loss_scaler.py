"""Loss scaling for FP16 compute (Megatron's ConstantGradScaler / DynamicGradScaler semantics).

The loss is multiplied by ``scale`` before backward; the optimizer folds ``1/scale`` into the factor it
already applies to every gradient (with the clip coefficient), so no extra pass unscales them. A step
whose gradients hold inf/NaN is skipped. The dynamic scaler then counts down its hysteresis and, once
that is spent, halves the scale (never below ``--min-loss-scale``); after ``--loss-scale-window``
successful steps in a row it doubles the scale and refills the hysteresis.
"""

from dataclasses import dataclass


@dataclass
class ConstantLossScaler:
    """``--loss-scale S``: the same scale on every step."""

    scale: float

    def update(self, found_overflow: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        pass  # the flag decides a static scale


@dataclass
class DynamicLossScaler:
    scale: float
    min_scale: float = 1.0
    window: int = 1000
    hysteresis: int = 2
    growth_factor: float = 2.0
    backoff_factor: float = 0.5

    def __post_init__(self):
        self.growth_tracker = 0
        self.hysteresis_tracker = self.hysteresis

    def update(self, found_overflow: bool) -> None:
        """Adjust the scale after a step (``found_overflow``: its gradients held inf/NaN, it was skipped)."""
        if found_overflow:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.window:
            self.growth_tracker = 0
            self.hysteresis_tracker = self.hysteresis
            self.scale *= self.growth_factor

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "hysteresis_tracker": self.hysteresis_tracker}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.hysteresis_tracker = int(state["hysteresis_tracker"])


def make_loss_scaler(precision) -> ConstantLossScaler | DynamicLossScaler | None:
    """From a PrecisionConfig: static with --loss-scale, dynamic with --fp16, else none (scale 1)."""
    if precision.loss_scale is not None:
        return ConstantLossScaler(precision.loss_scale)
    if precision.fp16:
        return DynamicLossScaler(precision.initial_loss_scale, precision.min_loss_scale,
                                 precision.loss_scale_window, precision.hysteresis)
    return None
