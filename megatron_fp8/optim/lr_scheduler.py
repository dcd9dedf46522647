"""Learning rate: linear warm-up, then constant, linear or cosine decay to the minimum (Megatron's rule).

Megatron counts the schedule in samples: every successful iteration advances it by its global batch
size (an iteration skipped for an overflow does not), and iteration-based flags are converted with
``--global-batch-size`` (schedule.training_plan). The learning rate an iteration uses is the schedule at
the samples it brings the count to, which for a constant batch size is ``lr(iteration)``.

``--decoupled-lr`` / ``--decoupled-min-lr`` give the word embedding and the output layer a schedule of
the same shape with their own peak and minimum (Megatron's ``is_embedding_or_output_parameter``).
"""

import math


class LRScheduler:
    def __init__(self, max_lr: float, min_lr: float, warmup: float, decay: float, style: str):
        self.max_lr, self.min_lr, self.warmup, self.decay, self.style = max_lr, min_lr, warmup, decay, style

    def lr(self, samples: float) -> float:
        """The learning rate after ``samples`` samples of successful iterations."""
        if self.warmup > 0 and samples <= self.warmup:
            return self.max_lr * samples / self.warmup
        if self.style == "constant":
            return self.max_lr
        if samples >= self.decay:
            return self.min_lr
        ratio = (samples - self.warmup) / (self.decay - self.warmup)
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0) if self.style == "cosine" else 1.0 - ratio
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def state_dict(self) -> dict:
        return {"max_lr": self.max_lr, "min_lr": self.min_lr, "warmup_samples": self.warmup,
                "decay_samples": self.decay, "style": self.style}


def schedulers(t, plan) -> tuple[LRScheduler, LRScheduler | None]:
    """The main schedule and the decoupled one (None without --decoupled-lr) of TrainingConfig ``t``."""
    def make(max_lr, min_lr):
        return LRScheduler(max_lr, min_lr, plan.lr_warmup_samples, plan.lr_decay_samples, t.lr_decay_style)

    decoupled = None
    if t.decoupled_lr is not None:
        decoupled = make(t.decoupled_lr, t.decoupled_min_lr if t.decoupled_min_lr is not None else t.min_lr)
    return make(t.lr, t.min_lr), decoupled
