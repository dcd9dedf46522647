"""The universal (layout- and precision-free) form of a checkpoint, and conversion through it.

``read_universal`` turns any distributed checkpoint into full float32 tensors under global names:
parameters, master weights and both moments (dequantized with their scales), plus progress and FP8
scaling state. ``write_layout`` builds every rank's files for any target TP/PP/DP and precision level:
values are sharded and requantized with fresh scales into whatever storage the target level uses.
"""

import os

import torch

from ..config import Config
from ..fp8.reference import load as load_stored
from ..fsutil import remove_quietly
from ..layers.embedding import padded_vocab_size
from ..layers.weights import assign_value, param_info, stored_copy
from ..model import GPTModel
from ..optim.adamw import AdamWSettings, Fp8AdamW
from ..optim.ownership import assign_param_owners
from ..parallel.state import ParallelState
from .distributed import _write, model_file, optim_file, read_file, read_metadata, write_metadata
from .names import global_name, resize_vocab, shard, unshard
from .paths import no_checkpoint_message
from .state import FORMAT, as_converter_flags, config_summary, model_state
from .tracker import iteration_dir, publish, staging_dir

VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")
STATE_KEYS = ("master", "exp_avg", "exp_avg_sq")
MOMENTS = ("exp_avg", "exp_avg_sq")  # the master is seeded by assign_value in assign_model


def _real(stored: dict, key: str) -> torch.Tensor | None:
    if key not in stored:
        return None
    return load_stored(stored[key], stored.get(f"{key}_sinv", torch.ones(())))


def read_universal(root: str) -> dict:
    """Full float32 model and optimizer state of the newest checkpoint under ``root``."""
    found = read_metadata(root)
    if found is None:
        raise FileNotFoundError(no_checkpoint_message(root))
    directory, metadata = found
    layout = metadata["layout"]
    sharded_opt = layout["distributed_optimizer"] and layout["dp"] > 1
    pieces: dict[str, dict] = {}  # global name -> {"dim", "stacked", "param": {tp: t}, state key: {tp: t}}
    fp8, step = {}, 0
    for pp_rank in range(layout["pp"]):
        for tp_rank in range(layout["tp"]):
            model = read_file(directory, metadata, model_file(tp_rank, pp_rank))
            optim_params = {}
            for dp_rank in range(layout["dp"] if sharded_opt else 1):
                if optim_file(tp_rank, pp_rank, dp_rank) not in metadata["files"]:
                    continue  # saved with --no-save-optim: the weights alone
                optim = read_file(directory, metadata, optim_file(tp_rank, pp_rank, dp_rank))
                optim_params.update(optim["params"])
                step = optim["step"]
            for local, info in model["layout"].items():
                name = info["global"]
                if name is None:
                    continue
                entry = pieces.setdefault(name, {"dim": info["dim"], "stacked": info["stacked"]})
                value = load_stored(model["params"][local], model["params"].get(f"{local}:scale_inv"))
                entry.setdefault("param", {})[tp_rank] = value
                for key in STATE_KEYS:
                    real = _real(optim_params.get(local, {}), key)
                    if real is not None:
                        entry.setdefault(key, {})[tp_rank] = real
            if tp_rank == 0:
                for module, state in model["fp8"].items():
                    num_layers = metadata["config"]["model"]["num_layers"]
                    fp8[_global_module(module, _stage(layout, pp_rank), num_layers)] = state
    params, optim = {}, {}
    for name, entry in pieces.items():
        full = {key: unshard([entry[key][r] for r in sorted(entry[key])], entry["dim"], entry["stacked"])
                for key in ("param",) + STATE_KEYS if key in entry}
        params[name] = full.pop("param")
        optim[name] = full
    return {"config": metadata["config"], "progress": metadata["progress"], "iteration": metadata["iteration"],
            "params": params, "optim": optim, "step": step, "fp8": fp8}


def _stage(layout: dict, pp_rank: int) -> ParallelState:
    return ParallelState(tp_size=layout["tp"], pp_size=layout["pp"], pp_rank=pp_rank)


def _store_state(stored: torch.Tensor, sinv: torch.Tensor | None, values: torch.Tensor) -> None:
    data, scale_inv = stored_copy(values, stored.dtype)
    stored.copy_(data)
    if sinv is not None:
        sinv.copy_(scale_inv)


def _full_value(universal: dict, name: str, rows: int, key: str | None = None) -> torch.Tensor | None:
    """A full float32 tensor (the parameter, or one of its optimizer states) with the target's vocab rows."""
    full = universal["params"][name] if key is None else universal["optim"].get(name, {}).get(key)
    if full is not None and name in VOCAB_ROWS:
        full = resize_vocab(full, rows)
    return full


def prepare_target(config: Config, saved_model: dict, tp: int, pp: int, dp: int,
                   distributed_optimizer: bool) -> None:
    """Set the target layout and its padded vocabulary on ``config`` and validate it (before any work)."""
    m = config.model
    m.unpadded_vocab_size = saved_model.get("unpadded_vocab_size") or saved_model["vocab_size"]
    m.vocab_size = padded_vocab_size(m.unpadded_vocab_size, m.make_vocab_size_divisible_by, tp)
    p = config.parallel
    p.tensor_model_parallel_size, p.pipeline_model_parallel_size = tp, pp
    p.use_distributed_optimizer = distributed_optimizer
    p.sequence_parallel = p.sequence_parallel and tp > 1
    try:
        config.validate_layout(tp * pp * dp, batch=False)
    except ValueError as err:  # name the converter's flags, not the training ones
        raise ValueError(as_converter_flags(str(err))) from None


def write_layout(universal: dict, config: Config, tp: int, pp: int, dp: int, root: str,
                 distributed_optimizer: bool = False) -> str:
    """Write a checkpoint of ``universal`` for the target layout and ``config``'s precision level."""
    prepare_target(config, universal["config"]["model"], tp, pp, dp, distributed_optimizer)
    iteration = universal["iteration"]
    os.makedirs(root, exist_ok=True)
    staged = staging_dir(root, iteration)
    remove_quietly(staged)
    os.makedirs(staged)
    try:
        files = _write_shards(universal, config, tp, pp, dp, distributed_optimizer, staged)
        summary = config_summary(config)
        if config.data is None:  # keep the source's tokenizer: generate.py and resumed runs need it
            summary["tokenizer"] = universal["config"].get("tokenizer", {})
        write_metadata(staged, {"format": FORMAT, "iteration": iteration, "progress": universal["progress"],
                                "config": summary, "files": files,
                                "layout": {"tp": tp, "pp": pp, "dp": dp,
                                           "distributed_optimizer": distributed_optimizer}})
        publish(root, iteration, staged)
    except BaseException:
        remove_quietly(staged)  # a failed conversion (a full disk, say) leaves no litter behind
        raise
    return iteration_dir(root, iteration)


def _write_shards(universal, config, tp, pp, dp, distributed_optimizer, staged) -> dict:
    """Every rank's model and optimizer files of the target layout, written into ``staged``."""
    m = config.model
    files = {}
    tied = not m.untie_embeddings_and_output_weights
    for pp_rank in range(pp):
        for tp_rank in range(tp):
            pstate = ParallelState(tp_size=tp, tp_rank=tp_rank, pp_size=pp, pp_rank=pp_rank, dp_size=dp)
            model = GPTModel(config, pstate)
            named = list(model.named_parameters())
            assign_model(model, universal, config, pstate)
            files[model_file(tp_rank, pp_rank)] = _write(os.path.join(staged, model_file(tp_rank, pp_rank)),
                                                         model_state(model, pstate, config))
            owners = assign_param_owners([p for _, p in named], dp if distributed_optimizer else 1)
            for dp_rank in range(dp if distributed_optimizer else 1):
                owned = [(n, p) for n, p in named if owners[id(p)] == dp_rank]
                opt = _optimizer_for(universal, config, owned, pstate, m.num_layers, tied)
                files[optim_file(tp_rank, pp_rank, dp_rank)] = _write(
                    os.path.join(staged, optim_file(tp_rank, pp_rank, dp_rank)), opt.state_dict())
    return files


def local_values(universal: dict, config: Config, pstate: ParallelState, named) -> dict[str, torch.Tensor]:
    """This rank's shard of every parameter in ``named`` as float32, from the master copy where the
    source kept one (it is more precise than the model weight), with this layout's vocabulary rows."""
    m, tied = config.model, not config.model.untie_embeddings_and_output_weights
    out = {}
    for local, p in named:
        name = global_name(local, pstate, m.num_layers, tied) or "embedding.word_embeddings.weight"
        full = _full_value(universal, name, m.vocab_size, "master")
        full = full if full is not None else _full_value(universal, name, m.vocab_size)
        info = param_info(p)
        out[local] = shard(full, info.partition_dim, pstate.tp_rank, pstate.tp_size, info.tp_stacked)
    return out


def assign_model(model: GPTModel, universal: dict, config: Config, pstate: ParallelState) -> None:
    """Store the universal form's weights (requantized into this level's storage) and FP8 scaling state in
    ``model``, a stage of ``pstate``'s layout. The float32 values assigned also seed the masters of the
    optimizer built next, where this level keeps one (an `off` FP32 weight seeds O3's FP16 master)."""
    values = local_values(universal, config, pstate, list(model.named_parameters()))
    for local, p in model.named_parameters():
        assign_value(p, values[local])
    for module, mod in model.named_modules():
        saved = universal["fp8"].get(_global_module(module, pstate, config.model.num_layers))
        if getattr(mod, "fp8_state", None) is not None and saved is not None:
            try:
                mod.fp8_state.load_state_dict(saved)
            except ValueError:  # another --fp8-amax-history-len: start the history afresh
                pass


def _global_module(module: str, pstate: ParallelState, num_layers: int) -> str:
    return global_name(f"{module}.weight", pstate, num_layers, False)[: -len(".weight")]


def _optimizer_for(universal, config, owned, pstate, num_layers, tied) -> Fp8AdamW:
    opt = Fp8AdamW(owned, config.precision.policy, AdamWSettings.from_config(config))
    opt.step_count = universal["step"]
    for local, p in owned:
        name = global_name(local, pstate, num_layers, tied) or "embedding.word_embeddings.weight"
        st = opt.state[local]
        dim, stacked = param_info(p).partition_dim, param_info(p).tp_stacked
        for key in MOMENTS:
            stored = getattr(st, key)
            full = _full_value(universal, name, config.model.vocab_size, key)
            if full is None:
                continue  # none saved (an HF import): the moments start at zero
            _store_state(stored, getattr(st, f"{key}_sinv"), shard(full, dim, pstate.tp_rank, pstate.tp_size, stacked))
    return opt
