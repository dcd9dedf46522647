"""Hugging Face import/export (``tools/convert_checkpoint.py --hf-import DIR`` / ``--hf-export DIR``).

Both go through the universal form: import maps a local GPT-2, Llama, Mistral or Qwen2 directory to full float32
tensors under our global names (empty optimizer state, iteration 0) and writes any target layout and
precision level with ``write_layout``; export reads any checkpoint with ``read_universal`` and saves an
HF model (safetensors) with ``save_pretrained``. Nothing is downloaded; ``transformers`` is imported only
here, when a conversion runs.
"""

import os
import shutil
from dataclasses import asdict
from types import SimpleNamespace

import torch

from ..config import Config, ModelConfig, PrecisionConfig
from ..fsutil import naming_write_errors, remove_quietly
from . import hf_gpt2, hf_llama, hf_tokenizer
from .hf_common import (
    check_shapes,
    load_hf_config,
    read_hf_weights,
    require_transformers,
)
from .hf_verify import verify_import
from .lock import SaveDirLock
from .state import config_summary
from .tracker import read_tracker
from .universal import prepare_target, read_universal, write_layout

ARCHITECTURES = (hf_gpt2, hf_llama.LLAMA, hf_llama.QWEN2, hf_llama.MISTRAL)  # export prefers the first that fits
PROGRESS = {"iteration": 0, "consumed_samples": 0, "skipped_iterations": 0, "nan_iterations": 0}


def _architecture_of(hf_config, source: str):
    for arch in ARCHITECTURES:
        if hf_config.model_type == arch.MODEL_TYPE:
            return arch
    supported = ", ".join(f"{a.MODEL_TYPE} ({a.ARCHITECTURE})" for a in ARCHITECTURES)
    raise ValueError(f"{source}: model_type={hf_config.model_type!r} is not supported; supported: {supported}")


def import_hf(src: str, save: str, tp: int = 1, pp: int = 1, dp: int = 1, distributed_optimizer: bool = False,
              fp8_level: str = "off", log=print, verify: bool = False) -> str:
    """Write a megatron_fp8 checkpoint of the HF model in ``src`` under ``save``; returns its directory.
    ``verify``: first compare our model's logits with transformers' on the converted weights (nothing is
    written when they differ)."""
    if read_tracker(save) is not None:
        raise ValueError(f"--save {save} already holds a checkpoint; import into a new directory")
    source = os.path.join(src, "config.json")
    hf_config = load_hf_config(src)
    arch = _architecture_of(hf_config, source)
    vocab = hf_config.vocab_size
    model = ModelConfig(vocab_size=vocab, **arch.model_fields(hf_config, source))
    m = asdict(model)  # the unpadded shapes of the HF tensors
    config = Config(model=model, precision=PrecisionConfig(fp8_level=fp8_level))
    prepare_target(config, {"vocab_size": vocab}, tp, pp, dp, distributed_optimizer)  # fails before any reading
    params, unused = arch.to_megatron(read_hf_weights(src), m, src)
    if unused:
        raise ValueError(f"{src}: {len(unused)} tensors have no place in a {arch.ARCHITECTURE} "
                         f"(e.g. {sorted(unused)[0]!r}): not a plain {arch.ARCHITECTURE}")
    check_shapes(params, m, src)
    if verify:
        verify_import(src, params, m, log)
    with_tokenizer = hf_tokenizer.plan_import(src, vocab)
    os.makedirs(save, exist_ok=True)
    section = hf_tokenizer.copy_import_files(src, save, with_tokenizer)
    config.data = SimpleNamespace(**section) if section else None  # recorded in the checkpoint's config
    # no optimizer state: write_layout seeds every master (where a level keeps one) from the exact values
    universal = {"config": config_summary(config), "progress": dict(PROGRESS), "iteration": 0, "params": params,
                 "optim": {}, "step": 0, "fp8": {}}
    with SaveDirLock(save):
        out = write_layout(universal, config, tp, pp, dp, save, distributed_optimizer)
    log(f" > imported {arch.ARCHITECTURE} from {src}: {model.num_layers} layers, hidden {model.hidden_size}, "
        f"vocab {vocab} (padded to {config.model.vocab_size}), TP{tp} PP{pp}, --fp8-level {fp8_level}, "
        f"tokenizer: {section['tokenizer_type'] if section else 'none'}")
    return out


def _export_architecture(m: dict, source: str, preferred: str | None = None):
    """The architecture the model was imported from when it still fits, else the first that fits."""
    blockers = {}
    for arch in sorted(ARCHITECTURES, key=lambda a: a.MODEL_TYPE != preferred):
        blockers[arch.ARCHITECTURE] = arch.export_blockers(m)
        if not blockers[arch.ARCHITECTURE]:
            return arch
    why = "; ".join(f"not {name}: {', '.join(b)}" for name, b in blockers.items())
    raise ValueError(f"{source}: this model has no Hugging Face architecture to export to ({why})")


def _export_vocab(m: dict, base: dict, tokenizer, source: str) -> int:
    """The real vocabulary size: the imported config's, else the tokenizer's, else the padded size."""
    padded = m["vocab_size"]
    for size in (base.get("vocab_size"), getattr(tokenizer, "vocab_size", None)):
        if size is not None and size <= padded:
            return size
    hf_tokenizer.warn(f"{source}: no tokenizer or imported config tells the real vocabulary size; exporting all "
                      f"{padded} rows, padding included")
    return padded


def _save_pretrained(arch, hf_config, state: dict, directory: str) -> None:
    """Build the HF model without allocating random weights, give it ours, and save it (safetensors)."""
    with torch.device("meta"):
        model = arch.model_class()(hf_config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if hf_config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{arch.ARCHITECTURE} mapping is out of date: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    model.save_pretrained(directory)


def export_hf(load: str, dest: str, log=print) -> str:
    """Save the newest checkpoint under ``load`` as a Hugging Face model directory ``dest``."""
    if os.path.isdir(dest) and os.listdir(dest):
        raise ValueError(f"--hf-export {dest} is not empty; export into a new directory")
    require_transformers()  # fail before the (long) read when the extra is missing
    universal = read_universal(load)
    m = universal["config"]["model"]
    section = hf_tokenizer.relocated(universal["config"].get("tokenizer") or {}, load)
    tokenizer = hf_tokenizer.build(section)
    base_dir = hf_tokenizer.source_dir(load, section)
    base = hf_tokenizer.read_json(os.path.join(base_dir, "config.json")) if base_dir else {}
    arch = _export_architecture(m, load, base.get("model_type"))
    if base.get("model_type") != arch.MODEL_TYPE:
        base_dir, base = None, {}
    vocab = _export_vocab(m, base, tokenizer, load)
    params = {name: universal["optim"].get(name, {}).get("master", value)  # the precise copy where kept
              for name, value in universal["params"].items()}
    if m.get("apply_layernorm_1p"):  # zero-centred weights: HF norms multiply by the weight itself
        params.update({n: t + 1 for n, t in params.items() if n.endswith("layernorm.weight")})
    kwargs = arch.hf_config_kwargs(m, vocab, base)
    if not base:  # the HF defaults name ids of the original GPT-2/Llama vocabularies
        eod = tokenizer.eod if tokenizer is not None else None
        kwargs.update(bos_token_id=eod, eos_token_id=eod)
    dropped = {"model_type", "transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype",
               *arch.BASE_FIELDS_REPLACED}
    fields = {**{k: v for k, v in base.items() if k not in dropped}, **kwargs}
    hf_config = arch.model_class().config_class(**fields)
    hf_config.architectures = [arch.ARCHITECTURE]
    staged = os.path.normpath(dest) + ".tmp"
    remove_quietly(staged)
    try:
        with naming_write_errors(staged):
            _save_pretrained(arch, hf_config, arch.to_hf(params, m, vocab), staged)
            if base_dir and os.path.isfile(os.path.join(base_dir, "generation_config.json")):
                shutil.copy2(os.path.join(base_dir, "generation_config.json"), staged)
            written = hf_tokenizer.copy_export_files(section, staged)
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty (checked above)
        os.replace(staged, dest)
    except BaseException:
        remove_quietly(staged)  # no half-written export left behind
        raise
    log(f" > exported {arch.ARCHITECTURE} (vocab {vocab}) to {dest}; tokenizer files: {', '.join(written) or 'none'}")
    return dest


def run(args) -> str:
    """Entry point for tools/convert_checkpoint.py: errors become one-line messages naming the input."""
    try:
        if args.hf_import and args.hf_export:
            raise ValueError("--hf-import and --hf-export are separate runs; give one of them")
        if args.hf_import:
            if not args.save:
                raise ValueError("--hf-import needs --save DIR (where to write the megatron_fp8 checkpoint)")
            return import_hf(args.hf_import, args.save, args.target_tensor_parallel_size or 1,
                             args.target_pipeline_parallel_size or 1, args.target_data_parallel_size,
                             args.target_use_distributed_optimizer, args.target_fp8_level or "off",
                             verify=args.verify)
        if not args.load:
            raise ValueError("--hf-export needs --load DIR (the megatron_fp8 checkpoint to export)")
        ignored = [flag for flag, value in (("--save", args.save), ("--target-fp8-level", args.target_fp8_level),
                                            ("--target-tensor-parallel-size", args.target_tensor_parallel_size),
                                            ("--target-pipeline-parallel-size", args.target_pipeline_parallel_size),
                                            ("--verify", args.verify))
                   if value]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} do not apply to --hf-export (it writes one float32 HF model)")
        return export_hf(args.load, args.hf_export)
    except (ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"convert_checkpoint.py: {err}") from err
