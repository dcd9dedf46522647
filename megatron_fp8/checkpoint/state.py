"""What a rank's checkpoint holds and how it is checked: model shard with its layout, RNG, config.

Everything needed for a bit-identical resume is saved: parameters in their storage dtype with their
scales, the FP8 scaling state of every linear (scales and amax histories), RNG states, and (beside this
module) the optimizer's master weights and moments with their scales, the iteration and data position.
Each parameter also records its layout-free name and how it is split, so tools can reshard it.
"""

import random
import re
from dataclasses import asdict

import numpy as np
import torch

from ..config import Config, ModelConfig, ParallelConfig, PrecisionConfig
from ..fp8.scaling import Fp8Recipe
from ..layers.weights import param_info
from ..parallel.state import ParallelState
from .names import global_name

FORMAT = "megatron_fp8/v1"
# Fields that must agree between a checkpoint and the model that loads it.
MODEL_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
                "max_position_embeddings", "position_embedding_type", "normalization", "swiglu",
                "untie_embeddings_and_output_weights", "add_bias_linear", "openai_gelu", "rotary_base",
                "layernorm_epsilon", "add_qkv_bias", "rotary_percent", "use_rope_scaling",
                "rope_scaling_factor", "apply_layernorm_1p")
# The attention shape as resolved (--kv-channels and --num-query-groups default from the other fields).
RESOLVED_FIELDS = {"kv_channels": "head_dim", "num_query_groups": "query_groups"}
PRECISION_FIELDS = ("fp8_level", "bf16", "fp16", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype",
                    "first_last_layers_bf16", "num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16")
RECIPE_FIELDS = ("format", "recipe", "amax_history_len")  # Fp8Recipe fields, flags --fp8-<field>
# the precision fields tools/convert_checkpoint.py can change, with its flags
TARGET_FLAGS = {"fp8_level": "--target-fp8-level", "first_last_layers_bf16": "--target-first-last-layers-bf16",
                "num_layers_at_start_in_bf16": "--target-num-layers-at-start-in-bf16",
                "num_layers_at_end_in_bf16": "--target-num-layers-at-end-in-bf16"}
_CONVERTER_FLAGS = {"--tensor-model-parallel-size": "--target-tensor-parallel-size",
                    "--pipeline-model-parallel-size": "--target-pipeline-parallel-size",
                    **{"--" + k.replace("_", "-"): v for k, v in TARGET_FLAGS.items()}}


def as_converter_flags(message: str) -> str:
    """A validation message with the training flags it names renamed to the converter's --target-* ones."""
    return re.sub(r"(?<![\w-])--[a-z0-9-]+", lambda m: _CONVERTER_FLAGS.get(m.group(0), m.group(0)), message)


def model_state(model: torch.nn.Module, pstate: ParallelState, config: Config) -> dict:
    state, layout = {}, {}
    tied = not config.model.untie_embeddings_and_output_weights
    for name, p in model.named_parameters():
        info = param_info(p)
        state[name] = p.detach().clone()
        if info.scale_inv is not None:
            state[f"{name}:scale_inv"] = info.scale_inv.clone()
        layout[name] = {"global": global_name(name, pstate, config.model.num_layers, tied),
                        "dim": info.partition_dim, "stacked": info.tp_stacked, "fp8_eligible": info.fp8_eligible}
    fp8 = {name: mod.fp8_state.state_dict() for name, mod in model.named_modules()
           if getattr(mod, "fp8_state", None) is not None}
    return {"params": state, "fp8": fp8, "layout": layout}


def load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    params = state["params"]
    for name, p in model.named_parameters():
        if name not in params:
            raise ValueError(f"{source}: no tensor for parameter {name}")
        saved = params[name]
        if saved.shape != p.shape or saved.dtype != p.dtype:
            raise ValueError(f"{source}: parameter {name} is {saved.dtype} {tuple(saved.shape)}, "
                             f"the model expects {p.dtype} {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(saved)
        scale_inv = param_info(p).scale_inv
        if scale_inv is not None:
            scale_inv.copy_(params[f"{name}:scale_inv"])
    for name, mod in model.named_modules():
        if getattr(mod, "fp8_state", None) is not None:
            mod.fp8_state.load_state_dict(state["fp8"][name])


def _numpy_state() -> dict:
    """numpy's global RNG state as plain numbers and a tensor (no ndarray: files load with weights_only)."""
    key, words, pos, has_gauss, cached = np.random.get_state()
    return {"key": key, "words": torch.from_numpy(words.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(state) -> None:
    if isinstance(state, dict):
        state = (state["key"], state["words"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)  # a tuple with an ndarray: files written before the plain form


def rng_state(pstate: ParallelState) -> dict:
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if pstate.rng is not None:
        state["tp_tracker"] = pstate.rng.state
    return state


def set_rng_state(state: dict, pstate: ParallelState) -> None:
    random.setstate(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "tp_tracker" in state and pstate.rng is not None:
        # A generator state only fits a generator of the same kind: a CUDA (Philox) state saved on a GPU
        # cannot drive a CPU generator, so loading on another device keeps this run's freshly seeded stream.
        if state["tp_tracker"].numel() == pstate.rng.state.numel():
            pstate.rng.state = state["tp_tracker"]


TOKENIZER_FIELDS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size",
                    "sft_tokenizer_prompt_format")


def config_summary(config: Config) -> dict:
    """What a checkpoint records of its run: enough to check a resume and to rebuild the model alone."""
    data = config.data
    return {"model": asdict(config.model),
            "precision": {**{k: getattr(config.precision, k) for k in PRECISION_FIELDS},
                          "recipe": asdict(config.precision.recipe)},
            "parallel": asdict(config.parallel),
            "tokenizer": {k: getattr(data, k, None) for k in TOKENIZER_FIELDS} if data is not None else {}}


def model_config_of(model: dict) -> ModelConfig:
    """The ModelConfig a checkpoint's (or import's) model section describes; fields this version does not
    know are left out, fields older checkpoints lack take their defaults."""
    return ModelConfig(**{k: v for k, v in model.items() if k in ModelConfig.__dataclass_fields__})


def check_config(saved: dict, config: Config, source: str) -> None:
    """Fail with the first field where the checkpoint and the current flags disagree."""
    current = config_summary(config)
    defaults = {"model": ModelConfig.__dataclass_fields__, "precision": PrecisionConfig.__dataclass_fields__}
    resolved = {"model": (model_config_of(saved["model"]), config.model)}
    for section, keys in (("model", MODEL_FIELDS + tuple(RESOLVED_FIELDS)), ("precision", PRECISION_FIELDS)):
        for key in keys:
            if key in RESOLVED_FIELDS:  # compare what the model computes with, not how it was spelled
                old, value = (getattr(c, RESOLVED_FIELDS[key]) for c in resolved[section])
            else:
                value = current[section][key]
                old = saved[section].get(key, defaults[section][key].default)  # fields newer than the checkpoint
            if old != value:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{source}: checkpoint was saved with {flag}={old!r}, "
                                 f"but this run has {flag}={value!r}")
    saved_recipe = saved["precision"].get("recipe", {}) if config.precision.fp8_level != "off" else {}
    for key in RECIPE_FIELDS:  # what the saved FP8 scaling state (scales, amax histories) means
        value, old = current["precision"]["recipe"][key], saved_recipe.get(key)
        if old is not None and old != value:
            flag = "--fp8-" + key.replace("_", "-")
            raise ValueError(f"{source}: checkpoint was saved with {flag}={old!r}, but this run has "
                             f"{flag}={value!r}; resume with the checkpoint's {flag}")


def saved_precision(saved: dict, key: str):
    """A precision field of a checkpoint's config summary; fields newer than the checkpoint take their default."""
    return saved.get(key, PrecisionConfig.__dataclass_fields__[key].default)


def precision_differs(saved: dict, config: Config) -> list[str]:
    """The PRECISION_FIELDS in which a checkpoint's ``saved`` precision section and ``config`` disagree."""
    return [k for k in PRECISION_FIELDS if saved_precision(saved, k) != getattr(config.precision, k)]


def target_precision_flags(saved: dict, config: Config) -> str:
    """The converter's --target-* flags that turn a checkpoint of ``saved`` precision into ``config``'s."""
    out = ""
    for key in precision_differs(saved, config):
        value = getattr(config.precision, key)
        if key == "first_last_layers_bf16":
            out += f" {TARGET_FLAGS[key]}" if value else f" --no-{TARGET_FLAGS[key][2:]}"
        elif key in TARGET_FLAGS:
            out += f" {TARGET_FLAGS[key]} {value}"
    return out


def config_from_summary(summary: dict, fp8_level: str | None = None) -> Config:
    """Rebuild the model/precision/parallel config a checkpoint was written with (optionally at another
    precision level: ``PrecisionConfig.at_level``)."""
    precision = {k: v for k, v in summary["precision"].items() if k in PrecisionConfig.__dataclass_fields__}
    recipe = Fp8Recipe(**precision.pop("recipe"))
    config = PrecisionConfig(recipe=recipe, **precision)
    if fp8_level is not None and fp8_level != config.fp8_level:
        config = config.at_level(fp8_level)
    return Config(model=ModelConfig(**summary["model"]), parallel=ParallelConfig(**summary["parallel"]),
                  precision=config)
