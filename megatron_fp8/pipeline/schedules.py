"""Forward and backward over the micro-batches of one global batch.

Each micro-batch's loss is the mean over its unmasked tokens; gradients are scaled by 1/num_micro so
the accumulated gradient is that of the mean loss over the global batch (Megatron's convention).
"""

from contextlib import nullcontext

import torch


def masked_mean_loss(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return (token_loss * loss_mask).sum() / loss_mask.sum().clamp(min=1)


def forward_backward_no_pipelining(model, micro_batches: list[dict], meter=None, forward_only: bool = False):
    """Run every micro-batch through ``model`` (and backward unless ``forward_only``); returns the losses."""
    losses = []
    for mb in micro_batches:
        with meter.measure() if meter is not None else nullcontext():
            token_loss = model(mb["tokens"], mb["position_ids"], mb["labels"])
        loss = masked_mean_loss(token_loss, mb["loss_mask"])
        if not forward_only:
            (loss / len(micro_batches)).backward()
        losses.append(loss.detach())
    return losses
