"""Llama (``LlamaForCausalLM``) <-> megatron_fp8: config fields and tensor names.

Llama is our ``--position-embedding-type rope --normalization RMSNorm --swiglu --disable-bias-linear
--untie-embeddings-and-output-weights`` model. Its separate q/k/v projections become our per-head fused
QKV rows; gate and up become SwiGLU's stacked ``[gate; up]`` fc1. Transformers already stores q and k in
the rotate-half (non-interleaved) order our RoPE uses, so no row permutation within a head is needed.
Grouped-query attention (fewer KV heads) is refused: our attention has one K/V head per query head.
"""

import torch

from .hf_common import qkv_per_head, refuse, split_qkv, take, take_head

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
BASE_FIELDS_REPLACED = ("rope_parameters", "rope_scaling", "rope_theta")  # export sets rope_theta itself


def model_class():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM


def _rope(cfg, source: str) -> float:
    """RoPE base from a transformers 5 (``rope_parameters``) or 4 (``rope_theta``/``rope_scaling``) config."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict):
        field, theta, kind = "rope_parameters", params.get("rope_theta", 10000.0), params.get("rope_type", "default")
        partial = params.get("partial_rotary_factor", 1.0)
    else:
        scaling = getattr(cfg, "rope_scaling", None) or {}
        field, theta = "rope_scaling", getattr(cfg, "rope_theta", 10000.0)
        kind, partial = scaling.get("rope_type", scaling.get("type", "default")), 1.0
    if kind != "default":
        refuse(source, field, params if field == "rope_parameters" else cfg.rope_scaling,
               f"RoPE scaling ({kind}) is not implemented; only plain RoPE with a base (rope_theta)")
    if partial != 1.0:
        refuse(source, "partial_rotary_factor", partial, "RoPE rotates the whole head dimension")
    return int(theta) if float(theta).is_integer() else float(theta)


def model_fields(cfg, source: str) -> dict:
    """ModelConfig fields for a Llama config; refuses options our model does not compute."""
    heads, h = cfg.num_attention_heads, cfg.hidden_size
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if kv_heads != heads:
        refuse(source, "num_key_value_heads", kv_heads, f"grouped-query attention (num_attention_heads={heads}) "
               "is not supported: megatron_fp8's attention has one key/value head per query head")
    if cfg.hidden_act != "silu":
        refuse(source, "hidden_act", cfg.hidden_act, "megatron_fp8's gated MLP is SwiGLU (silu)")
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    if head_dim * heads != h:
        refuse(source, "head_dim", head_dim, f"it must equal hidden_size / num_attention_heads = {h / heads:g}")
    attention_bias, mlp_bias = bool(getattr(cfg, "attention_bias", False)), bool(getattr(cfg, "mlp_bias", False))
    if attention_bias != mlp_bias:
        refuse(source, "attention_bias", attention_bias, f"with mlp_bias={mlp_bias}: megatron_fp8 has biases on "
               "all linears or on none (--disable-bias-linear)")
    return dict(num_layers=cfg.num_hidden_layers, hidden_size=h, num_attention_heads=heads,
                ffn_hidden_size=cfg.intermediate_size, seq_length=cfg.max_position_embeddings,
                max_position_embeddings=cfg.max_position_embeddings, position_embedding_type="rope",
                rotary_base=_rope(cfg, source), normalization="RMSNorm", layernorm_epsilon=cfg.rms_norm_eps,
                swiglu=True, add_bias_linear=attention_bias,
                untie_embeddings_and_output_weights=not getattr(cfg, "tie_word_embeddings", False),
                hidden_dropout=0.0, attention_dropout=float(getattr(cfg, "attention_dropout", 0.0)),
                init_method_std=cfg.initializer_range)


def to_megatron(state: dict, m: dict, source: str) -> tuple[dict, dict]:
    """(our global name -> tensor, the HF tensors left unused)."""
    state = {k: v for k, v in state.items() if "rotary_emb." not in k}  # inv_freq buffers of older saves
    heads, bias = m["num_attention_heads"], m["add_bias_linear"]
    params = ("weight", "bias") if bias else ("weight",)
    out = {"embedding.word_embeddings.weight": take(state, "model.embed_tokens.weight", source)}
    for i in range(m["num_layers"]):
        src, dst = f"model.layers.{i}", f"decoder.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = take(state, f"{src}.input_layernorm.weight", source)
        out[f"{dst}.pre_mlp_layernorm.weight"] = take(state, f"{src}.post_attention_layernorm.weight", source)
        for p in params:
            q, k, v = (take(state, f"{src}.self_attn.{n}_proj.{p}", source) for n in "qkv")
            out[f"{dst}.self_attention.linear_qkv.{p}"] = qkv_per_head(q, k, v, heads)
            out[f"{dst}.self_attention.linear_proj.{p}"] = take(state, f"{src}.self_attn.o_proj.{p}", source)
            gate, up = (take(state, f"{src}.mlp.{n}_proj.{p}", source) for n in ("gate", "up"))
            out[f"{dst}.mlp.linear_fc1.{p}"] = torch.cat([gate, up], dim=0)
            out[f"{dst}.mlp.linear_fc2.{p}"] = take(state, f"{src}.mlp.down_proj.{p}", source)
    out["decoder.final_layernorm.weight"] = take(state, "model.norm.weight", source)
    take_head(out, state, m, source)
    return out, state


def export_blockers(m: dict) -> list[str]:
    """Why a megatron_fp8 model cannot be a LlamaForCausalLM (empty when it can)."""
    blockers = []
    if m["position_embedding_type"] != "rope":
        blockers.append(f"--position-embedding-type {m['position_embedding_type']} (Llama uses rope)")
    if m["normalization"] != "RMSNorm":
        blockers.append(f"--normalization {m['normalization']} (Llama uses RMSNorm)")
    if not m["swiglu"]:
        blockers.append("no --swiglu (Llama's MLP is SwiGLU)")
    return blockers


def hf_config_kwargs(m: dict, vocab_size: int, base: dict) -> dict:
    """LlamaConfig arguments for our model (``base``, the imported config, only fills what we lack)."""
    h, heads, bias = m["hidden_size"], m["num_attention_heads"], m["add_bias_linear"]
    return dict(vocab_size=vocab_size, hidden_size=h, intermediate_size=m["ffn_hidden_size"],
                num_hidden_layers=m["num_layers"], num_attention_heads=heads, num_key_value_heads=heads,
                head_dim=h // heads, hidden_act="silu", max_position_embeddings=m["max_position_embeddings"],
                rms_norm_eps=m["layernorm_epsilon"], rope_theta=float(m["rotary_base"]), attention_bias=bias,
                mlp_bias=bias, attention_dropout=m["attention_dropout"], initializer_range=m["init_method_std"],
                tie_word_embeddings=not m["untie_embeddings_and_output_weights"])


def to_hf(params: dict, m: dict, vocab_size: int) -> dict:
    """HF state dict from our full tensors; the padded vocabulary rows are dropped."""
    heads, ffn = m["num_attention_heads"], m["ffn_hidden_size"]
    out = {"model.embed_tokens.weight": params["embedding.word_embeddings.weight"][:vocab_size].contiguous()}
    for i in range(m["num_layers"]):
        src, dst = f"decoder.layers.{i}", f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = params[f"{src}.input_layernorm.weight"].contiguous()
        out[f"{dst}.post_attention_layernorm.weight"] = params[f"{src}.pre_mlp_layernorm.weight"].contiguous()
        for p in ("weight", "bias") if m["add_bias_linear"] else ("weight",):
            q, k, v = split_qkv(params[f"{src}.self_attention.linear_qkv.{p}"], heads)
            out.update({f"{dst}.self_attn.q_proj.{p}": q, f"{dst}.self_attn.k_proj.{p}": k,
                        f"{dst}.self_attn.v_proj.{p}": v})
            out[f"{dst}.self_attn.o_proj.{p}"] = params[f"{src}.self_attention.linear_proj.{p}"].contiguous()
            fc1 = params[f"{src}.mlp.linear_fc1.{p}"]
            out[f"{dst}.mlp.gate_proj.{p}"] = fc1[:ffn].contiguous()
            out[f"{dst}.mlp.up_proj.{p}"] = fc1[ffn:].contiguous()
            out[f"{dst}.mlp.down_proj.{p}"] = params[f"{src}.mlp.linear_fc2.{p}"].contiguous()
    out["model.norm.weight"] = params["decoder.final_layernorm.weight"].contiguous()
    if m["untie_embeddings_and_output_weights"]:
        out["lm_head.weight"] = params["output_layer.weight"][:vocab_size].contiguous()
    return out
