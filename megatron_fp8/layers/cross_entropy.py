"""Language-model loss per token, in float32 whatever the compute dtype."""

import torch
import torch.nn.functional as F


def vocab_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss ``[s, b]`` from logits ``[s, b, V]`` and labels ``[s, b]``."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, labels.reshape(-1), reduction="none").reshape(labels.shape)
