"""Pieces shared by the Hugging Face mappings: the optional import, reading weights, the QKV layout.

`transformers` is an optional extra, imported only when a conversion runs, so the package (and every
other tool) works without it.
"""

import json
import os
from typing import NoReturn

import torch

from .state import model_config_of

INSTALL_HINT = "pip install 'megatron_fp8[hf]'"


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError(f"Hugging Face import/export needs the `transformers` package ({INSTALL_HINT})") from None
    return transformers


def load_hf_config(directory: str):
    """The model's config from ``directory``/config.json, through transformers (fills in its defaults)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--hf-import: {path} does not exist (not a Hugging Face model directory)")
    transformers = require_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{path}: transformers cannot read this config ({err})") from None


def _weight_files(directory: str) -> list[str]:
    """The weight files of a saved model: one file or the shards named by an index, safetensors first."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if os.path.isfile(os.path.join(directory, single)):
            return [os.path.join(directory, single)]
        index_path = os.path.join(directory, index)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(directory, s) for s in shards]
    raise FileNotFoundError(f"--hf-import: {directory} holds no model.safetensors or pytorch_model.bin "
                            "(nor a sharded index of them)")


def read_hf_weights(directory: str) -> dict[str, torch.Tensor]:
    """Every tensor of a saved Hugging Face model, in float32 (the universal checkpoint's dtype)."""
    state = {}
    for path in _weight_files(directory):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--hf-import: shard {path} named by the index does not exist")
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ImportError(f"reading {path} needs the `safetensors` package ({INSTALL_HINT})") from None
            part = load_file(path)
        else:
            part = torch.load(path, map_location="cpu", weights_only=True)
        state.update({k: v.float() for k, v in part.items()})
    return state


def take(state: dict, key: str, source: str) -> torch.Tensor:
    """Remove and return one tensor, with an error naming it when the checkpoint lacks it."""
    if key not in state:
        raise ValueError(f"{source}: the weights have no tensor {key!r}")
    return state.pop(key)


def take_head(out: dict, state: dict, m: dict, source: str) -> None:
    """The untied output head, if the model has one; a tied copy some saves keep is dropped."""
    if m["untie_embeddings_and_output_weights"]:
        out["output_layer.weight"] = take(state, "lm_head.weight", source)
    else:
        state.pop("lm_head.weight", None)


def qkv_per_group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """Stack separate Q/K/V rows (q: [heads * head_dim, ...], k and v: [groups * head_dim, ...]) into our
    per-group layout [groups, (q_per_group + 2) * head_dim] (the group's query heads, its key head, its
    value head; with one group per head: [heads, (q, k, v), head_dim]). A TP split hands each rank whole
    groups."""
    blocks = [t.reshape(groups, -1, *t.shape[1:]) for t in (q, k, v)]
    return torch.cat(blocks, dim=1).reshape(-1, *q.shape[1:]).contiguous()


def split_qkv(qkv: torch.Tensor, groups: int, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`qkv_per_group`: separate, contiguous Q, K, V."""
    head_dim = qkv.shape[0] // (heads + 2 * groups)
    per_group = heads // groups
    blocks = qkv.reshape(groups, (per_group + 2) * head_dim, *qkv.shape[1:])
    parts = blocks.split([per_group * head_dim, head_dim, head_dim], dim=1)
    return tuple(t.reshape(-1, *qkv.shape[1:]).contiguous() for t in parts)


def refuse(source: str, field: str, value, why: str) -> NoReturn:
    raise ValueError(f"{source}: {field}={value!r} is not supported: {why}")


def expected_shapes(m: dict) -> dict[str, tuple]:
    """Global name -> full (unpadded) shape of every parameter of the model ``m`` describes."""
    h, f, v = m["hidden_size"], m["ffn_hidden_size"], m["vocab_size"]
    dims = model_config_of(m)
    attn = dims.num_attention_heads * dims.head_dim
    norm = ("weight", "bias") if m["normalization"] == "LayerNorm" else ("weight",)
    shapes = {"embedding.word_embeddings.weight": (v, h)}
    if m["position_embedding_type"] == "learned_absolute":
        shapes["embedding.position_embeddings.weight"] = (m["max_position_embeddings"], h)
    linears = {"self_attention.linear_qkv": (dims.qkv_size, h), "self_attention.linear_proj": (h, attn),
               "mlp.linear_fc1": ((2 if m["swiglu"] else 1) * f, h), "mlp.linear_fc2": (h, f)}
    for i in range(m["num_layers"]):
        for name, shape in linears.items():
            shapes[f"decoder.layers.{i}.{name}.weight"] = shape
            if m["add_bias_linear"] or (name.endswith("qkv") and m.get("add_qkv_bias")):
                shapes[f"decoder.layers.{i}.{name}.bias"] = shape[:1]
        for n in ("input_layernorm", "pre_mlp_layernorm"):
            shapes.update({f"decoder.layers.{i}.{n}.{p}": (h,) for p in norm})
    shapes.update({f"decoder.final_layernorm.{p}": (h,) for p in norm})
    if m["untie_embeddings_and_output_weights"]:
        shapes["output_layer.weight"] = (v, h)
    return shapes


def check_shapes(params: dict, m: dict, source: str) -> None:
    """Fail, naming the tensor, where the weights do not fit the model the config describes."""
    for name, shape in expected_shapes(m).items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{source}: weights give {name} the shape {tuple(params[name].shape)}, "
                             f"but config.json implies {shape}")
