"""The Llama family (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``) <-> megatron_fp8.

All three are our ``--position-embedding-type rope --normalization RMSNorm --swiglu`` model with the same
tensor names; they differ in biases (Llama: on all linears or none; Qwen2: on q/k/v only, our
``--add-qkv-bias --disable-bias-linear``; Mistral: none) and in what their configs may ask for that we do not
compute (Mistral's and Qwen2's sliding window). Separate q/k/v projections become our per-group fused QKV
rows (grouped-query attention: ``num_key_value_heads`` is ``--num-query-groups``); gate and up become
SwiGLU's stacked ``[gate; up]`` fc1. Transformers stores q and k in the rotate-half (non-interleaved) order
our RoPE uses, so no row permutation within a head is needed. RoPE: plain, or Llama 3.1's ``llama3``
scaling (``--use-rope-scaling``), read from transformers 5's ``rope_parameters`` or 4's
``rope_theta``/``rope_scaling``.
"""

import inspect
from dataclasses import dataclass

import torch

from ..model.rope import HIGH_FREQ_FACTOR, LOW_FREQ_FACTOR, ORIGINAL_MAX_POSITIONS
from .hf_common import qkv_per_group, refuse, split_qkv, take, take_head
from .state import model_config_of

# Fields of the imported config that export must not carry over (it sets the RoPE itself)
BASE_FIELDS_REPLACED = ("rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor")
LLAMA3_FIXED = {"low_freq_factor": LOW_FREQ_FACTOR, "high_freq_factor": HIGH_FREQ_FACTOR,
                "original_max_position_embeddings": ORIGINAL_MAX_POSITIONS}


def _rope(cfg, source: str) -> dict:
    """RoPE fields from a transformers 5 (``rope_parameters``) or 4 (``rope_theta``/``rope_scaling``) config."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict):
        field, shown, theta, scaling = "rope_parameters", params, params.get("rope_theta", 10000.0), params
    else:
        scaling = getattr(cfg, "rope_scaling", None) or {}
        field, shown, theta = "rope_scaling", scaling, getattr(cfg, "rope_theta", 10000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    partial = scaling.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    if partial != 1.0:
        refuse(source, "partial_rotary_factor", partial, "the Llama family's RoPE rotates the whole head")
    out = dict(rotary_base=int(theta) if float(theta).is_integer() else float(theta))
    if kind == "llama3":
        for key, fixed in LLAMA3_FIXED.items():
            if scaling.get(key) != fixed:
                refuse(source, f"{field}[{key!r}]", scaling.get(key), f"Llama 3.1's RoPE scaling is implemented "
                       f"(as Megatron's --use-rope-scaling) with {key}={fixed:g} only")
        return dict(out, use_rope_scaling=True, rope_scaling_factor=float(scaling["factor"]))
    if kind != "default":
        refuse(source, field, shown, f"RoPE scaling ({kind}) is not implemented; only plain RoPE and Llama 3.1's "
               "llama3 scaling")
    return out


def _sliding_window(cfg) -> int | None:
    """The attention window some layer really uses (Mistral: ``sliding_window``; Qwen2: only with
    ``use_sliding_window``, on the layers ``layer_types`` marks), else None."""
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return window if getattr(cfg, "use_sliding_window", True) else None


def _has_field(config_class, name: str) -> bool:
    """Whether the installed transformers' config class declares ``name`` (5: dataclass fields; 4: __init__)."""
    return name in getattr(config_class, "__dataclass_fields__", {}) or \
        name in inspect.signature(config_class.__init__).parameters


def _rope_kwargs(config_class, m: dict) -> dict:
    """Our RoPE in the config fields of the installed transformers (5: rope_parameters; 4: rope_theta and
    rope_scaling)."""
    scaling = dict(rope_type="llama3", factor=float(m["rope_scaling_factor"]), **LLAMA3_FIXED) \
        if m.get("use_rope_scaling") else None
    theta = float(m["rotary_base"])
    if _has_field(config_class, "rope_parameters"):
        return dict(rope_parameters=dict(scaling or dict(rope_type="default"), rope_theta=theta))
    return dict(rope_theta=theta, rope_scaling=scaling)


@dataclass(frozen=True)
class LlamaFamily:
    """One Hugging Face architecture of the family: what differs is its biases and its config class."""

    MODEL_TYPE: str
    ARCHITECTURE: str
    biases: str  # "llama" (attention_bias/mlp_bias), "qkv" (Qwen2) or "none" (Mistral)
    BASE_FIELDS_REPLACED: tuple = BASE_FIELDS_REPLACED

    def model_class(self):
        import transformers

        return getattr(transformers, self.ARCHITECTURE)

    def _biases(self, cfg, source: str) -> dict:
        if self.biases == "qkv":
            return dict(add_bias_linear=False, add_qkv_bias=True)
        if self.biases == "none":
            return dict(add_bias_linear=False)
        attention, mlp = bool(getattr(cfg, "attention_bias", False)), bool(getattr(cfg, "mlp_bias", False))
        if attention != mlp:
            refuse(source, "attention_bias", attention, f"with mlp_bias={mlp}: megatron_fp8 has biases on all "
                   "linears or on none (--disable-bias-linear), or on q/k/v only (--add-qkv-bias)")
        return dict(add_bias_linear=attention)

    def model_fields(self, cfg, source: str) -> dict:
        """ModelConfig fields for the config; refuses options our model does not compute."""
        heads, h, positions = cfg.num_attention_heads, cfg.hidden_size, cfg.max_position_embeddings
        groups = getattr(cfg, "num_key_value_heads", None) or heads
        if heads % groups:
            refuse(source, "num_key_value_heads", groups, f"it must divide num_attention_heads={heads}")
        if cfg.hidden_act != "silu":
            refuse(source, "hidden_act", cfg.hidden_act, "megatron_fp8's gated MLP is SwiGLU (silu)")
        window = _sliding_window(cfg)
        if window is not None and window < positions:
            refuse(source, "sliding_window", window, f"it is shorter than the sequence (max_position_embeddings="
                   f"{positions}): megatron_fp8's attention sees every earlier token, not a sliding window")
        head_dim = getattr(cfg, "head_dim", None) or h // heads
        return dict(num_layers=cfg.num_hidden_layers, hidden_size=h, num_attention_heads=heads,
                    group_query_attention=groups != heads, num_query_groups=groups if groups != heads else None,
                    kv_channels=head_dim if head_dim * heads != h else None,
                    ffn_hidden_size=cfg.intermediate_size, seq_length=positions, max_position_embeddings=positions,
                    position_embedding_type="rope", **_rope(cfg, source), normalization="RMSNorm",
                    layernorm_epsilon=cfg.rms_norm_eps, swiglu=True, **self._biases(cfg, source),
                    untie_embeddings_and_output_weights=not getattr(cfg, "tie_word_embeddings", False),
                    hidden_dropout=0.0, attention_dropout=float(getattr(cfg, "attention_dropout", 0.0)),
                    init_method_std=cfg.initializer_range)

    def to_megatron(self, state: dict, m: dict, source: str) -> tuple[dict, dict]:
        """(our global name -> tensor, the HF tensors left unused)."""
        state = {k: v for k, v in state.items() if "rotary_emb." not in k}  # inv_freq buffers of older saves
        groups, bias, qkv_bias = model_config_of(m).query_groups, m["add_bias_linear"], _qkv_bias(m)
        out = {"embedding.word_embeddings.weight": take(state, "model.embed_tokens.weight", source)}
        for i in range(m["num_layers"]):
            src, dst = f"model.layers.{i}", f"decoder.layers.{i}"
            out[f"{dst}.input_layernorm.weight"] = take(state, f"{src}.input_layernorm.weight", source)
            out[f"{dst}.pre_mlp_layernorm.weight"] = take(state, f"{src}.post_attention_layernorm.weight", source)
            for p in ("weight", "bias") if qkv_bias else ("weight",):
                q, k, v = (take(state, f"{src}.self_attn.{n}_proj.{p}", source) for n in "qkv")
                out[f"{dst}.self_attention.linear_qkv.{p}"] = qkv_per_group(q, k, v, groups)
            for p in ("weight", "bias") if bias else ("weight",):
                out[f"{dst}.self_attention.linear_proj.{p}"] = take(state, f"{src}.self_attn.o_proj.{p}", source)
                gate, up = (take(state, f"{src}.mlp.{n}_proj.{p}", source) for n in ("gate", "up"))
                out[f"{dst}.mlp.linear_fc1.{p}"] = torch.cat([gate, up], dim=0)
                out[f"{dst}.mlp.linear_fc2.{p}"] = take(state, f"{src}.mlp.down_proj.{p}", source)
        out["decoder.final_layernorm.weight"] = take(state, "model.norm.weight", source)
        take_head(out, state, m, source)
        return out, state

    def export_blockers(self, m: dict) -> list[str]:
        """Why a megatron_fp8 model cannot be this architecture (empty when it can)."""
        blockers = []
        if m["position_embedding_type"] != "rope":
            blockers.append(f"--position-embedding-type {m['position_embedding_type']} ({self.MODEL_TYPE} uses rope)")
        if m["normalization"] != "RMSNorm":
            blockers.append(f"--normalization {m['normalization']} ({self.MODEL_TYPE} uses RMSNorm)")
        if not m["swiglu"]:
            blockers.append(f"no --swiglu ({self.MODEL_TYPE}'s MLP is SwiGLU)")
        if m.get("rotary_percent", 1.0) != 1.0:
            blockers.append(f"--rotary-percent {m['rotary_percent']} ({self.MODEL_TYPE}'s RoPE rotates whole heads)")
        qkv_only = _qkv_bias(m) and not m["add_bias_linear"]
        if self.biases == "llama" and qkv_only:
            blockers.append("--add-qkv-bias without linear biases (Llama's attention_bias also biases o_proj)")
        if self.biases == "qkv" and not qkv_only:
            blockers.append("biases on o_proj and the MLP (Qwen2 has biases on q/k/v only)" if m["add_bias_linear"]
                            else "no --add-qkv-bias (Qwen2's q/k/v projections have biases)")
        if self.biases == "none" and _qkv_bias(m):
            blockers.append("linear biases (Mistral has none)")
        return blockers

    def hf_config_kwargs(self, m: dict, vocab_size: int, base: dict) -> dict:
        """Config arguments for our model (``base``, the imported config, only fills what we lack)."""
        dims, config_class = model_config_of(m), self.model_class().config_class
        kwargs = dict(vocab_size=vocab_size, hidden_size=m["hidden_size"], intermediate_size=m["ffn_hidden_size"],
                      num_hidden_layers=m["num_layers"], num_attention_heads=dims.num_attention_heads,
                      num_key_value_heads=dims.query_groups, hidden_act="silu",
                      max_position_embeddings=m["max_position_embeddings"], rms_norm_eps=m["layernorm_epsilon"],
                      attention_dropout=m["attention_dropout"], initializer_range=m["init_method_std"],
                      tie_word_embeddings=not m["untie_embeddings_and_output_weights"],
                      **_rope_kwargs(config_class, m))
        if _has_field(config_class, "head_dim") or dims.head_dim * dims.num_attention_heads != m["hidden_size"]:
            kwargs.update(head_dim=dims.head_dim)  # Qwen2's attention reads it when given, else hidden / heads
        if self.biases == "llama":
            kwargs.update(attention_bias=m["add_bias_linear"], mlp_bias=m["add_bias_linear"])
        if self.MODEL_TYPE != "llama":  # our attention sees the whole sequence: a window no shorter is the same
            window = base.get("sliding_window")
            kwargs.update(sliding_window=window if window and window >= m["max_position_embeddings"] else None)
        return kwargs

    def to_hf(self, params: dict, m: dict, vocab_size: int) -> dict:
        """HF state dict from our full tensors; the padded vocabulary rows are dropped."""
        dims, ffn = model_config_of(m), m["ffn_hidden_size"]
        bias, qkv_bias = m["add_bias_linear"], _qkv_bias(m)
        out = {"model.embed_tokens.weight": params["embedding.word_embeddings.weight"][:vocab_size].contiguous()}
        for i in range(m["num_layers"]):
            src, dst = f"decoder.layers.{i}", f"model.layers.{i}"
            out[f"{dst}.input_layernorm.weight"] = params[f"{src}.input_layernorm.weight"].contiguous()
            out[f"{dst}.post_attention_layernorm.weight"] = params[f"{src}.pre_mlp_layernorm.weight"].contiguous()
            for p in ("weight", "bias") if qkv_bias else ("weight",):
                q, k, v = split_qkv(params[f"{src}.self_attention.linear_qkv.{p}"], dims.query_groups,
                                    dims.num_attention_heads)
                out.update({f"{dst}.self_attn.q_proj.{p}": q, f"{dst}.self_attn.k_proj.{p}": k,
                            f"{dst}.self_attn.v_proj.{p}": v})
            for p in ("weight", "bias") if bias else ("weight",):
                out[f"{dst}.self_attn.o_proj.{p}"] = params[f"{src}.self_attention.linear_proj.{p}"].contiguous()
                fc1 = params[f"{src}.mlp.linear_fc1.{p}"]
                out[f"{dst}.mlp.gate_proj.{p}"] = fc1[:ffn].contiguous()
                out[f"{dst}.mlp.up_proj.{p}"] = fc1[ffn:].contiguous()
                out[f"{dst}.mlp.down_proj.{p}"] = params[f"{src}.mlp.linear_fc2.{p}"].contiguous()
        out["model.norm.weight"] = params["decoder.final_layernorm.weight"].contiguous()
        if m["untie_embeddings_and_output_weights"]:
            out["lm_head.weight"] = params["output_layer.weight"][:vocab_size].contiguous()
        return out


def _qkv_bias(m: dict) -> bool:
    return bool(m["add_bias_linear"] or m.get("add_qkv_bias"))


LLAMA = LlamaFamily("llama", "LlamaForCausalLM", biases="llama")
QWEN2 = LlamaFamily("qwen2", "Qwen2ForCausalLM", biases="qkv")
MISTRAL = LlamaFamily("mistral", "MistralForCausalLM", biases="none")
