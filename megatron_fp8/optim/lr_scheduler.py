"""Learning rate: linear warmup, then constant, linear or cosine decay to ``--min-lr`` (Megatron's rule)."""

import math

from ..config import TrainingConfig


class LRScheduler:
    def __init__(self, cfg: TrainingConfig):
        self.max_lr, self.min_lr = cfg.lr, cfg.min_lr
        self.warmup, self.decay_iters, self.style = cfg.lr_warmup_iters, cfg.lr_decay_iters, cfg.lr_decay_style

    def lr(self, iteration: int) -> float:
        """The learning rate used by (1-based) ``iteration``."""
        if self.warmup > 0 and iteration <= self.warmup:
            return self.max_lr * iteration / self.warmup
        if self.style == "constant":
            return self.max_lr
        if iteration >= self.decay_iters:
            return self.min_lr
        ratio = (iteration - self.warmup) / max(1, self.decay_iters - self.warmup)
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0) if self.style == "cosine" else 1.0 - ratio
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def state_dict(self) -> dict:
        return {"max_lr": self.max_lr, "min_lr": self.min_lr, "warmup": self.warmup,
                "decay_iters": self.decay_iters, "style": self.style}
