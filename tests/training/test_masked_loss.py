"""The masked loss (DESIGN §7): the global masked token mean, prompt tokens carry no gradient, and packed
documents never see each other (single process; the layouts are compared in tests/parallel/test_masked_loss.py).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_fp8 import batches
from megatron_fp8.fp8.tensor import Fp8Tensor
from megatron_fp8.optim.finalize_grads import finalize_model_grads
from megatron_fp8.training import Trainer

from ..helpers import SEQ, VOCAB, PackedPatternDataset, tiny_config


def _rope(config):
    config.model = replace(config.model, position_embedding_type="rope", normalization="RMSNorm", swiglu=True)
    return config


def _batches(trainer, data, start=0):
    t = trainer.config.training
    return batches.global_batch(data, start, t.global_batch_size, t.micro_batch_size, 0, 1, trainer.device)


def _grads(trainer, mbs):
    """Loss sums and finalized float32 gradients of one forward/backward over ``mbs``."""
    trainer.model.train()
    trainer.grads.zero(len(mbs))
    sums = trainer.forward_backward(mbs)
    trainer.grads.reduce()
    finalize_model_grads(trainer.params, trainer.pstate)
    grads = {}
    for name, p in trainer.model.named_parameters():
        g = p.main_grad
        grads[name] = (g.dequantize() if isinstance(g, Fp8Tensor) else g.float()).clone()
    return sums, grads


def test_loss_and_gradient_are_the_global_masked_mean():
    """At ``off``: the step's loss and every gradient equal those of a plain PyTorch masked mean over all
    unmasked tokens of the global batch (not the mean of per-micro-batch means)."""
    config = tiny_config("off", micro_batch_size=2, global_batch_size=8)
    data = PackedPatternDataset()
    trainer = Trainer(config)
    mbs = _batches(trainer, data)
    counts = [float(mb["loss_mask"].sum()) for mb in mbs]
    assert len(set(counts)) > 1  # per-micro-batch means would weight tokens differently

    reference = Trainer(config)  # same seed: same weights; gradients land in main_grad as in training
    reference.model.train()
    reference.grads.zero(len(mbs))
    total, tokens = 0.0, 0.0
    for mb in mbs:
        logits = reference.model(mb["tokens"], mb["position_ids"], None, mb["document_ids"])[..., :VOCAB]
        token_loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), mb["labels"].reshape(-1), reduction="none")
        total = total + (token_loss * mb["loss_mask"].reshape(-1)).sum()
        tokens += float(mb["loss_mask"].sum())
    (total / tokens).backward()
    reference.grads.reduce()
    finalize_model_grads(reference.params, reference.pstate)
    want = {name: p.main_grad.float() for name, p in reference.model.named_parameters()}
    total = float(total)

    sums, grads = _grads(trainer, mbs)
    assert trainer._global_loss(sums, trainer.loss_tokens(mbs)) == pytest.approx(float(total / tokens), rel=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=1e-4, atol=1e-7, msg=name)
    per_micro = float(np.mean([float(s) / c for s, c in zip(sums, counts)]))
    assert abs(per_micro - float(total / tokens)) > 1e-3  # the test can tell the two reductions apart
    result = trainer.train_step(mbs, lr=1e-3)
    assert result.loss == pytest.approx(float(total / tokens), rel=1e-6)


@pytest.mark.parametrize("level", ["off", "O2"])
def test_masked_labels_and_prompt_predictions_carry_no_gradient(level):
    """Changing any label where the loss mask is 0 (prompt and padding targets) changes neither the loss
    nor any gradient, bit for bit; the gradient reaching the logits is zero exactly there."""
    config = tiny_config(level, micro_batch_size=2, global_batch_size=4)
    data = PackedPatternDataset()
    mbs = _batches(Trainer(config), data)
    changed = [dict(mb) for mb in mbs]
    for mb in changed:
        masked = mb["loss_mask"] == 0
        mb["labels"] = torch.where(masked, (mb["labels"] + 17) % VOCAB, mb["labels"])
        assert masked.any()
    sums_a, grads_a = _grads(Trainer(config), mbs)
    sums_b, grads_b = _grads(Trainer(config), changed)
    assert [float(s) for s in sums_a] == [float(s) for s in sums_b]
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name

    trainer, mb = Trainer(config), mbs[0]  # the gradient reaching the logits of each position
    logits = trainer.model(mb["tokens"], mb["position_ids"], None, mb["document_ids"]).float()
    logits.retain_grad()
    token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mb["labels"].reshape(-1), reduction="none")
    (token_loss * mb["loss_mask"].reshape(-1)).sum().backward()
    per_token = logits.grad.abs().sum(-1)
    assert torch.all(per_token[mb["loss_mask"] == 0] == 0) and torch.all(per_token[mb["loss_mask"] == 1] > 0)


def _two_documents(seed=3):
    rng = np.random.RandomState(seed)
    a, b = rng.randint(0, VOCAB, 13), rng.randint(0, VOCAB, SEQ - 13)
    return a, b


@pytest.mark.parametrize("variant", ["learned", "rope"])
def test_packed_document_logits_equal_the_document_alone(variant):
    """With document ids (packing, --reset-attention-mask) and restarted positions, the second document's
    logits are those it gets alone: no attention crosses the boundary (``off``: FP32, exact up to SDPA's
    summation order)."""
    config = tiny_config("off")
    config = _rope(config) if variant == "rope" else config
    model = Trainer(config).model.eval()
    a, b = _two_documents()
    tokens = torch.tensor(np.concatenate([a, b]))[None]
    positions = torch.tensor(np.concatenate([np.arange(a.size), np.arange(b.size)]))[None]
    documents = torch.tensor([0] * a.size + [1] * b.size)[None]
    with torch.no_grad():
        packed = model(tokens, positions, None, documents)[0]
        alone_b = model(torch.tensor(b)[None], torch.arange(b.size)[None])[0]
        alone_a = model(torch.tensor(a)[None], torch.arange(a.size)[None])[0]
        other = tokens.clone()
        other[0, : a.size] = (other[0, : a.size] + 5) % VOCAB  # another first document
        repacked = model(other, positions, None, documents)[0]
        causal = model(tokens, positions)[0]  # no document ids: the second one sees the first
    torch.testing.assert_close(packed[a.size:], alone_b, rtol=0, atol=2e-5)
    torch.testing.assert_close(packed[: a.size], alone_a, rtol=0, atol=2e-5)
    torch.testing.assert_close(repacked[a.size:], packed[a.size:], rtol=0, atol=2e-5)
    assert (causal[a.size:] - alone_b).abs().max() > 1e-2


def test_plain_batches_keep_the_causal_path(monkeypatch):
    """Without document ids attention runs SDPA's is_causal path (no mask is built)."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(("attn_mask" in kwargs, kwargs.get("is_causal", False)))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = Trainer(tiny_config("off")).model
    with torch.no_grad():
        model(torch.zeros(1, 8, dtype=torch.long), torch.arange(8)[None])
        model(torch.zeros(1, 8, dtype=torch.long), torch.arange(8)[None], None, torch.zeros(1, 8, dtype=torch.long))
    assert calls == [(False, True)] * 2 + [(True, False)] * 2
