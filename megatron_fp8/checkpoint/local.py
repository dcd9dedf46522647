"""Single-process checkpoints in Megatron's layout: ``{dir}/iter_XXXXXXX/mp_rank_00/model_optim_rng.pt``.

Everything needed for a bit-identical resume is saved: parameters in their storage dtype with their
scales, the FP8 scaling state of every linear (scales and amax histories), the optimizer's master
weights and moments with their scales, RNG states, the iteration and the data position.
"""

import io
import os
import random
from dataclasses import asdict

import numpy as np
import torch

from ..config import Config
from .atomic import iteration_dir, publish, read_tracker, staging_dir

FORMAT = "megatron_fp8/local/v1"
SHARD = os.path.join("mp_rank_00", "model_optim_rng.pt")
# Fields that must agree between a checkpoint and the model that loads it.
MODEL_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
                "max_position_embeddings", "position_embedding_type", "normalization", "swiglu",
                "untie_embeddings_and_output_weights", "add_bias_linear")
PRECISION_FIELDS = ("fp8_level", "bf16", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype")


def model_state(model: torch.nn.Module) -> dict:
    state = {}
    for name, p in model.named_parameters():
        state[name] = p.detach().clone()
        if getattr(p, "scale_inv", None) is not None:
            state[f"{name}:scale_inv"] = p.scale_inv.clone()
    fp8 = {name: mod.fp8_state.state_dict() for name, mod in model.named_modules()
           if getattr(mod, "fp8_state", None) is not None}
    return {"params": state, "fp8": fp8}


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
        if getattr(p, "scale_inv", None) is not None:
            p.scale_inv.copy_(params[f"{name}:scale_inv"])
    for name, mod in model.named_modules():
        if getattr(mod, "fp8_state", None) is not None:
            mod.fp8_state.load_state_dict(state["fp8"][name])


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    for section, keys in (("model", MODEL_FIELDS), ("precision", PRECISION_FIELDS)):
        for key in keys:
            value = current[section][key]
            if saved[section].get(key) != value:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{source}: checkpoint was saved with {flag}={saved[section].get(key)!r}, "
                                 f"but this run has {flag}={value!r}")


def save_checkpoint(root: str, iteration: int, state: dict, config: Config) -> str:
    """Write ``state`` (model/optimizer/progress entries) atomically; returns the final directory."""
    os.makedirs(root, exist_ok=True)
    staged = staging_dir(root, iteration)
    payload = {"format": FORMAT, "iteration": iteration, "config": config_summary(config),
               "rng": rng_state(), **state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    shard = os.path.join(staged, SHARD)
    os.makedirs(os.path.dirname(shard))
    with open(shard, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    publish(root, iteration, staged)
    return iteration_dir(root, iteration)


def load_checkpoint(root: str, config: Config) -> dict | None:
    """The newest checkpoint's payload (RNG restored), or None when ``root`` holds no checkpoint yet."""
    iteration = read_tracker(root)
    if iteration is None:
        return None
    path = os.path.join(iteration_dir(root, iteration), SHARD)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.path.join(root, 'latest_checkpointed_iteration.txt')} names iteration "
                                f"{iteration}, but {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated/corrupt files raise many kinds of errors
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    check_config(payload["config"], config, path)
    set_rng_state(payload["rng"])
    return payload
