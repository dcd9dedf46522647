"""Activation recomputation is bit-identical to keeping activations: losses, every gradient and every FP8
scaling state (delayed amax histories advance once per real forward), with dropout on (masks replayed)."""

import pytest
import torch

from megatron_fp8.config import ModelConfig, TrainingConfig
from megatron_fp8.fp8.scaling import Fp8Recipe
from megatron_fp8.metrics import ActivationMeter
from megatron_fp8.training import Trainer
from tests.helpers import VOCAB, PatternDataset, run_steps, tiny_config

RECOMPUTE = {
    "full-uniform": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
    "full-uniform-2": dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2),
    "full-block": dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1),
    "selective": dict(recompute_activations=True),
}


def _config(level: str, recipe: str, tp: int = 1, **recompute):
    cfg = tiny_config(level, tp, sp=tp > 1, micro_batch_size=2, global_batch_size=4, **recompute)
    cfg.model = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=VOCAB,
                            make_vocab_size_divisible_by=64, hidden_dropout=0.1, attention_dropout=0.1)  # masks replay
    cfg.precision.recipe = Fp8Recipe(recipe=recipe)
    return cfg


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _grads(trainer) -> dict:
    out = {}
    for name, p in trainer.model.named_parameters():
        g = p.main_grad
        out[name] = [_bits(g.data), _bits(g.scale_inv)] if hasattr(g, "scale_inv") else [_bits(g)]
    return out


def _fp8_states(trainer) -> dict:
    return {name: m.fp8_state.state_dict() for name, m in trainer.model.named_modules()
            if getattr(m, "fp8_state", None) is not None}


def _run(cfg, steps: int = 2, pstate=None):
    trainer = Trainer(cfg, pstate)
    losses = run_steps(trainer, PatternDataset(seq=cfg.model.seq_length), steps)
    return trainer, losses


def _assert_same(a, b):
    (ta, la), (tb, lb) = a, b
    assert la == lb
    ga, gb = _grads(ta), _grads(tb)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert all(torch.equal(x, y) for x, y in zip(ga[name], gb[name])), name
    sa, sb = _fp8_states(ta), _fp8_states(tb)
    for name in sa:
        for role in ("input", "grad"):
            for key, value in sa[name][role].items():
                assert torch.equal(value, sb[name][role][key]), (name, role, key)
    for pa, pb in zip(ta.model.parameters(), tb.model.parameters()):
        assert torch.equal(_bits(pa), _bits(pb))


@pytest.mark.parametrize("level,recipe,kinds", [
    ("off", "delayed", ("full-uniform", "selective")), ("O2", "delayed", ("full-uniform", "selective")),
    ("O3", "delayed", ("full-block",)), ("O2", "current", ("full-uniform-2",)), ("O3", "current", ("full-uniform",)),
])
def test_recompute_is_bit_identical(level, recipe, kinds):
    plain = _run(_config(level, recipe))
    for kind in kinds:
        recomputed = _run(_config(level, recipe, **RECOMPUTE[kind]))
        _assert_same(plain, recomputed)
        assert recomputed[0].activations.rebuilt_peak > 0


@pytest.mark.parametrize("kind", ["full-uniform-2", "full-block", "selective"])
def test_first_last_layers_bf16_recompute_is_bit_identical(kind):
    """--first-last-layers-bf16 with layer 0 out of FP8 and layer 1 in FP8 (one recomputed region may hold both)."""
    def config(**recompute):
        cfg = _config("O2", "delayed", **recompute)
        cfg.precision.first_last_layers_bf16, cfg.precision.num_layers_at_end_in_bf16 = True, 0
        return cfg

    plain, recomputed = _run(config()), _run(config(**RECOMPUTE[kind]))
    assert plain[0].model.decoder.layers[0].self_attention.linear_qkv.fp8_state is None
    _assert_same(plain, recomputed)


def test_meter_counts_what_recomputation_keeps():
    plain, _ = _run(_config("O2", "delayed"), steps=1)
    full, _ = _run(_config("O2", "delayed", **RECOMPUTE["full-uniform"]), steps=1)
    # kept: every layer's input instead of its activations; rebuilt: one layer's activations in backward
    assert full.activations.peak < plain.activations.peak
    assert plain.activations.rebuilt_peak == 0
    assert 0 < full.activations.rebuilt_peak < plain.activations.peak
    layers = plain.config.model.num_layers
    assert plain.activations.peak - full.activations.peak >= (layers - 1) * full.activations.rebuilt_peak // 2


def test_recompute_flags_follow_megatron():
    assert TrainingConfig(recompute_activations=True).recompute_granularity == "selective"
    with pytest.raises(ValueError, match="--recompute-method uniform|block"):
        TrainingConfig(recompute_granularity="full")
    with pytest.raises(ValueError, match="--recompute-num-layers needs --recompute-granularity full"):
        TrainingConfig(recompute_activations=True, recompute_num_layers=2)
    with pytest.raises(ValueError, match="between 1 and the layers per pipeline stage"):
        _config("O2", "delayed", recompute_granularity="full", recompute_method="block",
                recompute_num_layers=3).validate_layout(1)
    assert ActivationMeter.current() is None
