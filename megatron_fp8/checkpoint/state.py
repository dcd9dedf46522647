"""What a rank's checkpoint holds and how it is checked: model shard with its layout, RNG, config.

Everything needed for a bit-identical resume is saved: parameters in their storage dtype with their
scales, the FP8 scaling state of every linear (scales and amax histories), RNG states, and (beside this
module) the optimizer's master weights and moments with their scales, the iteration and data position.
Each parameter also records its layout-free name and how it is split, so tools can reshard it.
"""

import random
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
                "layernorm_epsilon")
PRECISION_FIELDS = ("fp8_level", "bf16", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype")


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


def rng_state(pstate: ParallelState) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if pstate.rng is not None:
        state["tp_tracker"] = pstate.rng.state
    return state


def set_rng_state(state: dict, pstate: ParallelState) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "tp_tracker" in state and pstate.rng is not None:
        pstate.rng.state = state["tp_tracker"]


TOKENIZER_FIELDS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size")


def config_summary(config: Config) -> dict:
    """What a checkpoint records of its run: enough to check a resume and to rebuild the model alone."""
    data = config.data
    return {"model": asdict(config.model),
            "precision": {**{k: getattr(config.precision, k) for k in PRECISION_FIELDS},
                          "recipe": asdict(config.precision.recipe)},
            "parallel": asdict(config.parallel),
            "tokenizer": {k: getattr(data, k, None) for k in TOKENIZER_FIELDS} if data is not None else {}}


def check_config(saved: dict, config: Config, source: str) -> None:
    """Fail with the first field where the checkpoint and the current flags disagree."""
    current = config_summary(config)
    defaults = {"model": ModelConfig.__dataclass_fields__, "precision": PrecisionConfig.__dataclass_fields__}
    for section, keys in (("model", MODEL_FIELDS), ("precision", PRECISION_FIELDS)):
        for key in keys:
            value = current[section][key]
            old = saved[section].get(key, defaults[section][key].default)  # fields newer than the checkpoint
            if old != value:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{source}: checkpoint was saved with {flag}={old!r}, "
                                 f"but this run has {flag}={value!r}")


def config_from_summary(summary: dict, fp8_level: str | None = None) -> Config:
    """Rebuild the model/precision/parallel config a checkpoint was written with (optionally at another
    precision level; explicit dtype overrides are dropped then, so the level's defaults apply)."""
    precision = dict(summary["precision"])
    recipe = Fp8Recipe(**precision.pop("recipe"))
    if fp8_level is not None and fp8_level != precision["fp8_level"]:
        precision = {"fp8_level": fp8_level, "bf16": precision["bf16"]}
    return Config(model=ModelConfig(**summary["model"]), parallel=ParallelConfig(**summary["parallel"]),
                  precision=PrecisionConfig(recipe=recipe, **precision))
