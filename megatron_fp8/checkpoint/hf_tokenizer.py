"""Tokenizer files across a Hugging Face conversion, and the tokenizer section of our checkpoints.

Import copies the model's config and tokenizer files into ``<checkpoint>/hf/`` and points the checkpoint's
tokenizer at them (``HuggingFaceTokenizer`` for a tokenizer.json, else ``GPT2BPETokenizer`` for
vocab.json + merges.txt, else ``SentencePieceTokenizer`` for tokenizer.model), so the checkpoint is
self-contained. Export copies whatever HF-loadable files our checkpoint's tokenizer has.
"""

import json
import os
import shutil
import sys
from types import SimpleNamespace

from ..data.tokenizer import build_tokenizer
from .state import TOKENIZER_FIELDS

HF_DIR = "hf"  # under a checkpoint root: the imported model's config.json and tokenizer files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
SIDE_FILES = ("config.json", "generation_config.json")  # kept so export can restore what we do not model
HF_DIRECTORY_TYPES = ("HuggingFaceTokenizer", "SFTTokenizer")  # tokenizers read from an HF file or directory


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def section_for(directory: str) -> dict | None:
    """Our tokenizer fields for the tokenizer files in ``directory`` (None when it has none)."""
    def has(name):
        return os.path.isfile(os.path.join(directory, name))

    section = dict.fromkeys(TOKENIZER_FIELDS)
    if has("tokenizer.json"):
        section.update(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=directory)
    elif has("vocab.json") and has("merges.txt"):
        section.update(tokenizer_type="GPT2BPETokenizer", vocab_file=os.path.join(directory, "vocab.json"),
                       merge_file=os.path.join(directory, "merges.txt"))
    elif has("tokenizer.model"):
        section.update(tokenizer_type="SentencePieceTokenizer",
                       tokenizer_model=os.path.join(directory, "tokenizer.model"))
    else:
        return None
    return section


def build(section: dict | None):
    """The tokenizer a section describes, or None (with a warning) when it cannot be built."""
    if not section or not section.get("tokenizer_type"):
        return None
    try:
        return build_tokenizer(SimpleNamespace(**{k: section.get(k) for k in TOKENIZER_FIELDS}))
    except (ValueError, OSError, ImportError) as err:
        warn(f"tokenizer {section['tokenizer_type']} could not be loaded: {err}")
        return None


def plan_import(src: str, vocab_size: int) -> bool:
    """Whether the tokenizer in ``src`` is usable with a model of ``vocab_size`` rows (warns if not)."""
    section = section_for(src)
    if section is None:
        warn(f"{src} has no tokenizer files; the checkpoint gets no tokenizer (pass --tokenizer-* flags to train)")
        return False
    tokenizer = build(section)
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        warn(f"{src}: tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}; not imported")
        return False
    return tokenizer is not None


def copy_import_files(src: str, root: str, with_tokenizer: bool) -> dict | None:
    """Copy config (and tokenizer) files into ``root``/hf; returns the checkpoint's tokenizer section."""
    dest = os.path.abspath(os.path.join(root, HF_DIR))
    staged = dest + ".tmp"
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    for name in SIDE_FILES + (TOKENIZER_FILES if with_tokenizer else ()):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(staged, name))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staged, dest)
    return section_for(dest) if with_tokenizer else None


def relocated(section: dict, root: str) -> dict:
    """The tokenizer section, re-pointed at ``root``/hf when the checkpoint was moved after its import
    (the recorded paths are absolute)."""
    paths = [section.get(k) for k in ("tokenizer_model", "vocab_file", "merge_file") if section.get(k)]
    local = os.path.join(root, HF_DIR)
    if paths and not all(os.path.exists(p) for p in paths) and os.path.isdir(local):
        return section_for(os.path.abspath(local)) or section
    return section


def source_dir(root: str, section: dict) -> str | None:
    """Where the config of the HF model a checkpoint was imported from lives, if anywhere."""
    candidates = [os.path.join(root, HF_DIR)]
    if section.get("tokenizer_type") in HF_DIRECTORY_TYPES and section.get("tokenizer_model"):
        candidates.append(section["tokenizer_model"])
    for d in candidates:
        if os.path.isfile(os.path.join(d, "config.json")):
            return d
    return None


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def copy_export_files(section: dict, dest: str) -> list[str]:
    """Copy the checkpoint tokenizer's files into an HF directory; returns the names written."""
    kind, written = section.get("tokenizer_type"), []

    def put(path, name):
        if path and os.path.isfile(path):
            shutil.copy2(path, os.path.join(dest, name))
            written.append(name)
        else:
            warn(f"tokenizer file {path} is missing; not exported")

    if kind in HF_DIRECTORY_TYPES:
        path = section.get("tokenizer_model") or ""
        if os.path.isdir(path):  # a tokenizer directory: every tokenizer file it has
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(path, name)):
                    put(os.path.join(path, name), name)
        else:  # a tokenizer.json file, with the tokenizer_config.json beside it if there is one
            put(path, "tokenizer.json")
            beside = os.path.join(os.path.dirname(path), "tokenizer_config.json")
            if os.path.isfile(beside):
                put(beside, "tokenizer_config.json")
    elif kind == "GPT2BPETokenizer":
        put(section.get("vocab_file"), "vocab.json")
        put(section.get("merge_file"), "merges.txt")
        if len(written) == 2:
            special = "<|endoftext|>"
            with open(os.path.join(dest, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": special, "eos_token": special,
                           "unk_token": special}, f, indent=2)
            written.append("tokenizer_config.json")
    elif kind == "SentencePieceTokenizer":
        put(section.get("tokenizer_model"), "tokenizer.model")
    elif kind:
        warn(f"--tokenizer-type {kind} has no Hugging Face form; no tokenizer exported")
    return written
