"""GPT-2 (``GPT2LMHeadModel``) <-> megatron_fp8: config fields and tensor names.

GPT-2's linears are ``Conv1D`` modules whose weights are stored transposed ([in, out]), and its fused
``c_attn`` columns are ``[q_all | k_all | v_all]``; ours hold ``[out, in]`` rows in the per-head order
``[heads, (q, k, v), head_dim]``. Everything else maps one to one.
"""

import torch

from .hf_common import qkv_per_group, refuse, split_qkv, take, take_head
from .state import model_config_of

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"
BASE_FIELDS_REPLACED = ()  # fields of the imported config that export must not carry over
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # one formula, 0.5x(1+tanh(...)); --openai-gelu
EXACT_GELU = ("gelu", "gelu_python")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers that older saves include


def model_class():
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel


def model_fields(cfg, source: str) -> dict:
    """ModelConfig fields for a GPT-2 config; refuses options our model does not compute."""
    act = cfg.activation_function
    if act not in TANH_GELU + EXACT_GELU:
        refuse(source, "activation_function", act, f"megatron_fp8 has {', '.join(EXACT_GELU)} and the tanh "
               f"approximation {', '.join(TANH_GELU)}")
    if not cfg.scale_attn_weights:
        refuse(source, "scale_attn_weights", False, "attention scores are always scaled by 1/sqrt(head_dim)")
    if cfg.scale_attn_by_inverse_layer_idx:
        refuse(source, "scale_attn_by_inverse_layer_idx", True, "no per-layer attention scaling")
    if getattr(cfg, "add_cross_attention", False):
        refuse(source, "add_cross_attention", True, "decoder-only models have no cross-attention")
    return dict(num_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
                ffn_hidden_size=cfg.n_inner or 4 * cfg.n_embd, seq_length=cfg.n_positions,
                max_position_embeddings=cfg.n_positions, position_embedding_type="learned_absolute",
                normalization="LayerNorm", layernorm_epsilon=cfg.layer_norm_epsilon, swiglu=False,
                openai_gelu=act in TANH_GELU, add_bias_linear=True,
                untie_embeddings_and_output_weights=not getattr(cfg, "tie_word_embeddings", True),
                hidden_dropout=cfg.resid_pdrop, attention_dropout=cfg.attn_pdrop,
                init_method_std=cfg.initializer_range)


def _linear(out: dict, state: dict, src: str, dst: str, source: str) -> None:
    out[f"{dst}.weight"] = take(state, f"{src}.weight", source).t().contiguous()
    out[f"{dst}.bias"] = take(state, f"{src}.bias", source)


def to_megatron(state: dict, m: dict, source: str) -> tuple[dict, dict]:
    """(our global name -> tensor, the HF tensors left unused). Accepts keys with or without the
    ``transformer.`` prefix (older saves of the bare ``GPT2Model`` lack it)."""
    state = {k.removeprefix("transformer."): v for k, v in state.items() if not k.endswith(_BUFFERS)}
    heads = m["num_attention_heads"]
    out = {"embedding.word_embeddings.weight": take(state, "wte.weight", source),
           "embedding.position_embeddings.weight": take(state, "wpe.weight", source)}
    for i in range(m["num_layers"]):
        src, dst = f"h.{i}", f"decoder.layers.{i}"
        for a, b in (("ln_1", "input_layernorm"), ("ln_2", "pre_mlp_layernorm")):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = take(state, f"{src}.{a}.{p}", source)
        qkv_w = take(state, f"{src}.attn.c_attn.weight", source).t()
        qkv_b = take(state, f"{src}.attn.c_attn.bias", source)
        out[f"{dst}.self_attention.linear_qkv.weight"] = qkv_per_group(*qkv_w.chunk(3, dim=0), heads)
        out[f"{dst}.self_attention.linear_qkv.bias"] = qkv_per_group(*qkv_b.chunk(3, dim=0), heads)
        _linear(out, state, f"{src}.attn.c_proj", f"{dst}.self_attention.linear_proj", source)
        _linear(out, state, f"{src}.mlp.c_fc", f"{dst}.mlp.linear_fc1", source)
        _linear(out, state, f"{src}.mlp.c_proj", f"{dst}.mlp.linear_fc2", source)
    for p in ("weight", "bias"):
        out[f"decoder.final_layernorm.{p}"] = take(state, f"ln_f.{p}", source)
    take_head(out, state, m, source)
    return out, state


def export_blockers(m: dict) -> list[str]:
    """Why a megatron_fp8 model cannot be a GPT2LMHeadModel (empty when it can)."""
    blockers = []
    if m["position_embedding_type"] != "learned_absolute":
        blockers.append(f"--position-embedding-type {m['position_embedding_type']} (GPT-2 learns absolute positions)")
    if m["normalization"] != "LayerNorm":
        blockers.append(f"--normalization {m['normalization']} (GPT-2 uses LayerNorm)")
    if m["swiglu"]:
        blockers.append("--swiglu (GPT-2's MLP is GeLU)")
    if not m["add_bias_linear"]:
        blockers.append("--disable-bias-linear (GPT-2's linears have biases)")
    dims = model_config_of(m)
    if dims.query_groups != dims.num_attention_heads or dims.head_dim * dims.num_attention_heads != m["hidden_size"]:
        blockers.append("grouped-query attention or --kv-channels (GPT-2 has hidden/heads-sized heads, one K/V each)")
    return blockers


def hf_config_kwargs(m: dict, vocab_size: int, base: dict) -> dict:
    """GPT2Config arguments for our model (``base``: the config it was imported from, if any)."""
    h, ffn, tanh = m["hidden_size"], m["ffn_hidden_size"], m.get("openai_gelu", False)
    act = base.get("activation_function")
    if act not in (TANH_GELU if tanh else EXACT_GELU):
        act = "gelu_new" if tanh else "gelu"
    n_inner = base.get("n_inner") if (base.get("n_inner") or 4 * h) == ffn else ffn  # None means 4 x hidden
    return dict(vocab_size=vocab_size, n_positions=m["max_position_embeddings"], n_embd=h, n_layer=m["num_layers"],
                n_head=m["num_attention_heads"], n_inner=n_inner,
                activation_function=act, layer_norm_epsilon=m["layernorm_epsilon"],
                resid_pdrop=m["hidden_dropout"], embd_pdrop=base.get("embd_pdrop", m["hidden_dropout"]),
                attn_pdrop=m["attention_dropout"], initializer_range=m["init_method_std"],
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
                tie_word_embeddings=not m["untie_embeddings_and_output_weights"])


def _fused_qkv(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head QKV rows -> ``[q_all; k_all; v_all]`` (GPT-2's fused order, before transposing)."""
    return torch.cat(split_qkv(qkv, heads, heads), dim=0)


def _conv1d(out: dict, params: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = params[f"{src}.weight"].t().contiguous()
    out[f"{dst}.bias"] = params[f"{src}.bias"].contiguous()


def to_hf(params: dict, m: dict, vocab_size: int) -> dict:
    """HF state dict from our full tensors; the padded vocabulary rows are dropped."""
    heads = m["num_attention_heads"]
    out = {"transformer.wte.weight": params["embedding.word_embeddings.weight"][:vocab_size].contiguous(),
           "transformer.wpe.weight": params["embedding.position_embeddings.weight"].contiguous()}
    for i in range(m["num_layers"]):
        src, dst = f"decoder.layers.{i}", f"transformer.h.{i}"
        for a, b in (("ln_1", "input_layernorm"), ("ln_2", "pre_mlp_layernorm")):
            for p in ("weight", "bias"):
                out[f"{dst}.{a}.{p}"] = params[f"{src}.{b}.{p}"].contiguous()
        qkv = f"{src}.self_attention.linear_qkv"
        out[f"{dst}.attn.c_attn.weight"] = _fused_qkv(params[f"{qkv}.weight"], heads).t().contiguous()
        out[f"{dst}.attn.c_attn.bias"] = _fused_qkv(params[f"{qkv}.bias"], heads)
        _conv1d(out, params, f"{src}.self_attention.linear_proj", f"{dst}.attn.c_proj")
        _conv1d(out, params, f"{src}.mlp.linear_fc1", f"{dst}.mlp.c_fc")
        _conv1d(out, params, f"{src}.mlp.linear_fc2", f"{dst}.mlp.c_proj")
    for p in ("weight", "bias"):
        out[f"transformer.ln_f.{p}"] = params[f"decoder.final_layernorm.{p}"].contiguous()
    if m["untie_embeddings_and_output_weights"]:
        out["lm_head.weight"] = params["output_layer.weight"][:vocab_size].contiguous()
    return out
