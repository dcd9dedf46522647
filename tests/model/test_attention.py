"""Grouped-query attention, partial and Llama-3.1-scaled RoPE and zero-centred norms against plain references
written out here (repeat_interleave of K/V heads, a hand-written causal softmax), and the flags' rules.

Everything runs at ``off`` in float32, where our layers and the references do the same arithmetic in a
different order: 1e-5 relative is a few float32 roundings over the 24-64 term sums involved.
"""

import math

import pytest
import torch

from megatron_fp8.config import Config, ModelConfig, PrecisionConfig
from megatron_fp8.layers.norm import Norm
from megatron_fp8.model.attention import SelfAttention
from megatron_fp8.model.rope import inverse_frequencies, rope_tables
from megatron_fp8.parallel.state import ParallelState

SEQ, BATCH, HIDDEN = 12, 2, 64


def config(**model) -> Config:
    fields = dict(num_layers=1, hidden_size=HIDDEN, num_attention_heads=4, seq_length=SEQ, vocab_size=128,
                  hidden_dropout=0.0, attention_dropout=0.0)
    return Config(model=ModelConfig(**{**fields, **model}), precision=PrecisionConfig(fp8_level="off"))


def rotate(x, cos, sin):
    """RoPE on [s, b, heads, d] written out: the first ``rot`` channels as (x1, x2) halves, the rest kept."""
    rot = cos.shape[-1]
    x1, x2, rest = x[..., : rot // 2], x[..., rot // 2: rot], x[..., rot:]
    c, s = cos[: x.shape[0], ..., : rot // 2], sin[: x.shape[0], ..., : rot // 2]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def reference_attention(layer: SelfAttention, x: torch.Tensor, m: ModelConfig, rope=None) -> torch.Tensor:
    """Separate Q, K, V from Megatron's per-group rows of the layer's own parameters, K/V heads repeated for
    their query heads, causal softmax(q k^T / sqrt(d)) v by hand, then the output projection."""
    heads, groups, d = m.num_attention_heads, m.query_groups, m.head_dim
    per_group = heads // groups
    qkv_bias = layer.linear_qkv.bias if layer.linear_qkv.bias is not None else torch.zeros(m.qkv_size)
    w = layer.linear_qkv.weight.view(groups, (per_group + 2) * d, HIDDEN)
    b = qkv_bias.view(groups, (per_group + 2) * d)
    wq, wk, wv = w.split([per_group * d, d, d], dim=1)
    bq, bk, bv = b.split([per_group * d, d, d], dim=1)
    q = (x @ wq.reshape(-1, HIDDEN).T + bq.reshape(-1)).view(SEQ, BATCH, heads, d)
    k = (x @ wk.reshape(-1, HIDDEN).T + bk.reshape(-1)).view(SEQ, BATCH, groups, d)
    v = (x @ wv.reshape(-1, HIDDEN).T + bv.reshape(-1)).view(SEQ, BATCH, groups, d)
    if rope is not None:
        q, k = rotate(q, *rope), rotate(k, *rope)
    k, v = k.repeat_interleave(per_group, dim=2), v.repeat_interleave(per_group, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v).reshape(SEQ, BATCH, heads * d)
    proj = layer.linear_proj
    return out @ proj.weight.T + (proj.bias if proj.bias is not None else 0)


def perturbed_layer(cfg: Config) -> SelfAttention:
    layer = SelfAttention(cfg, ParallelState(), "decoder.layers.0.self_attention")
    with torch.no_grad():  # non-zero biases, so a misplaced bias row shows
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return layer


@pytest.mark.parametrize("model", [
    pytest.param(dict(group_query_attention=True, num_query_groups=2), id="gqa-2-groups"),
    pytest.param(dict(group_query_attention=True, num_query_groups=1), id="mqa"),
    pytest.param(dict(), id="mha"),
    pytest.param(dict(group_query_attention=True, num_query_groups=2, kv_channels=24, add_qkv_bias=True,
                      add_bias_linear=False), id="gqa-kv-channels-qkv-bias"),
    pytest.param(dict(group_query_attention=True, num_query_groups=2, kv_channels=24, position_embedding_type="rope",
                      rotary_percent=0.5, use_rope_scaling=True, rope_scaling_factor=4.0),
                 id="gqa-partial-scaled-rope"),
])
def test_attention_matches_plain_reference(model):
    cfg = config(**model)
    m = cfg.model
    layer = perturbed_layer(cfg)
    assert layer.linear_qkv.weight.shape == (m.qkv_size, HIDDEN)
    assert (layer.linear_qkv.bias is not None) == (m.add_bias_linear or m.add_qkv_bias)
    assert (layer.linear_proj.bias is not None) == m.add_bias_linear
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=torch.Generator().manual_seed(3))
    rope = rope_tables(SEQ, m.rotary_dim, m.rotary_base, scaling_factor=m.rope_scaling_factor
                       if m.use_rope_scaling else None) if m.position_embedding_type == "rope" else None
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rope), reference_attention(layer, x, m, rope), rtol=1e-5, atol=1e-5)


def test_gqa_gradients_match_reference():
    """Every parameter's gradient (K/V rows of a group get the sum over the group's query heads) against
    autograd through the repeat_interleave reference."""
    cfg = config(group_query_attention=True, num_query_groups=2, position_embedding_type="rope")
    layer = perturbed_layer(cfg)
    rope = rope_tables(SEQ, cfg.model.rotary_dim, cfg.model.rotary_base)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=torch.Generator().manual_seed(4))
    params = list(layer.parameters())
    ours = torch.autograd.grad(layer(x, rope).square().sum(), params)
    theirs = torch.autograd.grad(reference_attention(layer, x, cfg.model, rope).square().sum(), params)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor,dim,base", [(8.0, 128, 500000.0), (32.0, 64, 500000.0), (4.0, 16, 10000.0)])
def test_llama3_rope_scaling_matches_transformers(factor, dim, base):
    """Our Llama-3.1 frequencies against transformers' own llama3 rope initialiser (Llama 3.1: factor 8,
    Llama 3.2: 32; low/high frequency factors 1 and 4, original context 8192)."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    hf = transformers.LlamaConfig(hidden_size=dim * 2, num_attention_heads=2, head_dim=dim, rope_theta=base,
                                  rope_scaling=scaling, max_position_embeddings=131072)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = inverse_frequencies(dim, base, factor)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    plain = inverse_frequencies(dim, base)
    assert torch.equal(ours[0], plain[0]) and torch.allclose(ours[-1], plain[-1] / factor)  # both ends of the band


@pytest.mark.parametrize("kind", ["LayerNorm", "RMSNorm"])
def test_layernorm_1p_stores_w_minus_one(kind):
    cfg = config(normalization=kind, apply_layernorm_1p=True)
    norm = Norm(HIDDEN, cfg)
    assert torch.count_nonzero(norm.weight) == 0  # zero-centred: the stored weight starts at 0 (scale 1)
    with torch.no_grad():
        norm.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, HIDDEN)
    plain = Norm(HIDDEN, config(normalization=kind))
    with torch.no_grad():
        plain.weight.copy_(norm.weight + 1)
        torch.testing.assert_close(norm(x), plain(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("model,message", [
    (dict(group_query_attention=True, num_query_groups=3), "--num-attention-heads 4 is not divisible by "
                                                           "--num-query-groups 3"),
    (dict(num_query_groups=2), "--num-query-groups 2 needs --group-query-attention"),
    (dict(hidden_size=66), "--hidden-size 66 must be divisible by --num-attention-heads 4"),
    (dict(position_embedding_type="rope", kv_channels=10, rotary_percent=0.3), "even, non-zero rotary dimension"),
    (dict(use_rope_scaling=True), "--use-rope-scaling needs --position-embedding-type rope"),
    (dict(rotary_percent=0.0), "--rotary-percent must be in (0, 1]"),
])
def test_model_flag_rules(model, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        config(**model)


def test_kv_channels_frees_hidden_from_heads():
    m = config(hidden_size=66, kv_channels=16, group_query_attention=True, num_query_groups=2).model
    assert (m.head_dim, m.query_groups, m.qkv_size) == (16, 2, (4 + 4) * 16)
    assert config(group_query_attention=True).model.query_groups == 1  # Megatron's default: one group


def test_tensor_parallel_must_divide_query_groups():
    cfg = config(num_attention_heads=8, group_query_attention=True, num_query_groups=2)
    cfg.parallel.tensor_model_parallel_size = 4
    with pytest.raises(ValueError, match="--num-query-groups 2 is not divisible by --tensor-model-parallel-size 4"):
        cfg.validate_layout(4, batch=False)
    cfg.parallel.tensor_model_parallel_size = 2
    assert cfg.validate_layout(4, batch=False) == 2


def test_checkpoints_compare_the_resolved_attention_shape():
    """A checkpoint that left --kv-channels and --num-query-groups to their defaults loads into a run that
    spells the same shape out, and not into one with another shape (the error names the flag)."""
    from megatron_fp8.checkpoint.state import check_config, config_summary

    saved = config_summary(config())
    check_config(saved, config(kv_channels=16, group_query_attention=True, num_query_groups=4), "ckpt")
    with pytest.raises(ValueError, match="ckpt: checkpoint was saved with --kv-channels=16, but this run has "
                                         "--kv-channels=8"):
        check_config(saved, config(kv_channels=8), "ckpt")
    with pytest.raises(ValueError, match="--num-query-groups=4, but this run has --num-query-groups=2"):
        check_config(saved, config(group_query_attention=True, num_query_groups=2), "ckpt")
