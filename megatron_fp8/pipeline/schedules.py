"""Forward and backward over the micro-batches of one global batch: no pipelining, or 1F1B.

Each micro-batch's loss is the sum of its masked token losses; backward runs on that sum times
``loss_scale``, which the caller sets to (data-parallel size / unmasked tokens in the global batch) so
that, after the data-parallel gradient average, the gradient is that of the masked token mean over the
whole global batch (Megatron's --calculate-per-token-loss); FP16 loss scaling is folded into the same
factor. The masked sums are returned only where they exist: on the last pipeline stage.
"""

from contextlib import nullcontext

import torch

from .p2p import StageLink


def masked_loss_sum(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    return (token_loss.float() * loss_mask).sum()


def _forward(model, mb: dict, input_tensor, meter):
    model.set_input_tensor(input_tensor)
    with meter.measure() if meter is not None else nullcontext():
        out = model(mb["tokens"], mb["position_ids"], mb["labels"], mb.get("document_ids"))
    if model.post_process:
        return masked_loss_sum(out, mb["loss_mask"])
    return out


def _backward(input_tensor, output, output_grad, loss_scale: float):
    if output_grad is None:  # last stage: output is the loss
        (output * loss_scale).backward()
    else:
        torch.autograd.backward(output, grad_tensors=output_grad)
    return input_tensor.grad if input_tensor is not None else None


def forward_backward_no_pipelining(model, micro_batches: list[dict], meter=None, forward_only: bool = False,
                                   loss_scale: float = 1.0):
    """Run every micro-batch through ``model`` (and backward unless ``forward_only``); returns the masked
    loss sums."""
    losses = []
    for mb in micro_batches:
        loss = _forward(model, mb, None, meter)
        if not forward_only:
            _backward(None, loss, None, loss_scale)
        losses.append(loss.detach())
    return losses


def forward_backward_1f1b(model, micro_batches: list[dict], pstate, activation_shape, dtype, device,
                          meter=None, forward_only: bool = False, loss_scale: float = 1.0):
    """Non-interleaved 1F1B: ``pp - rank - 1`` warm-up forwards, then one forward and one backward in turn,
    then the remaining backwards. Keeps at most ``pp`` micro-batches of activations alive per stage."""
    link = StageLink(pstate, activation_shape, dtype, device)
    n = len(micro_batches)
    warmup = n if forward_only else min(pstate.pp_size - pstate.pp_rank - 1, n)
    losses, inputs, outputs = [], [], []

    def forward(i, x):
        if x is not None:
            x.requires_grad_(not forward_only)
        y = _forward(model, micro_batches[i], x, meter)
        if model.post_process:
            losses.append(y.detach())
        return y

    def backward(grad):
        x, y = inputs.pop(0), outputs.pop(0)
        return _backward(x, y, grad, loss_scale)

    for i in range(warmup):
        x = link.recv_forward()
        y = forward(i, x)
        link.send_forward(y)  # no-op on the last stage
        if not forward_only:
            inputs.append(x)
            outputs.append(y)
    if forward_only:
        return losses
    x = link.recv_forward() if warmup < n else None
    for i in range(warmup, n):
        y = forward(i, x)
        inputs.append(x)
        outputs.append(y)
        grad = link.send_forward_recv_backward(y)  # None on the last stage
        dx = backward(grad)
        x = link.send_backward_recv_forward(dx) if i < n - 1 else link.send_backward(dx)
    for _ in range(warmup):
        dx = backward(link.recv_backward())
        link.send_backward(dx)
    return losses
