"""SFT parity: fine-tune one imported Hugging Face checkpoint at `off`, O2 and O3 on the same chat data in
the same order; report each level's final validation loss against `off`. Writes
bench/results/sft_parity.json and, with matplotlib installed, bench/results/sft_parity.png.

    python bench/sft_parity.py [--hf-model DIR] [--train-iters 150] [--levels off,O2,O3]

The checkpoint is imported once at `off` (tools/convert_checkpoint.py --hf-import) and every level
fine-tunes it with --finetune, which converts it on load. Without --hf-model (no weights can be downloaded
here) a small Llama is built at random with a byte-level BPE tokenizer trained on standard-library text
and a chat template. The chat data is real text from the running interpreter: for each documented public
function or class of some standard-library modules, the user asks what it does and the assistant answers
with the first sentence of its docstring; 5% of the conversations are held out for validation.
"""

import argparse
import importlib
import inspect
import json
import os
import re
import tempfile

from megatron_fp8.arguments import parse_config
from megatron_fp8.checkpoint.hf import import_hf
from megatron_fp8.training import pretrain

from results_io import RESULTS_DIR, plot_curves, save_results

MODULES = ("argparse", "base64", "bisect", "calendar", "collections", "colorsys", "configparser", "copy", "csv",
           "datetime", "decimal", "difflib", "email.utils", "fnmatch", "fractions", "functools", "glob", "gzip",
           "hashlib", "heapq", "html", "inspect", "ipaddress", "itertools", "json", "logging", "math", "operator",
           "os", "os.path", "pathlib", "pickle", "pprint", "queue", "random", "re", "shlex", "shutil",
           "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
           "typing", "unicodedata", "urllib.parse", "uuid", "warnings", "zipfile", "zlib")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def docstring_chats() -> list[dict]:
    """Chat rows asking what a standard-library function or class does, answered by its docstring."""
    rows, seen = [], set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            doc = inspect.getdoc(obj) if not name.startswith("_") and callable(obj) else None
            if not doc or id(obj) in seen:
                continue
            seen.add(id(obj))
            first = re.split(r"(?<=\.)\s", " ".join(doc.split("\n\n")[0].split()), maxsplit=1)[0][:240]
            if len(first) > 12:
                rows.append({"messages": [{"role": "user", "content": f"What does {module_name}.{name} do?"},
                                          {"role": "assistant", "content": first}]})
    return rows


def small_llama(directory: str, vocab: int, hidden: int, layers: int, heads: int, seq: int) -> str:
    """A random Llama with a BPE tokenizer trained on standard-library source and a chat template."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = [inspect.getsource(importlib.import_module(m)) for m in ("json.decoder", "textwrap", "string", "argparse")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>",
                                                unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                      num_key_value_heads=heads, intermediate_size=4 * hidden,
                                      vocab_size=len(fast), max_position_embeddings=seq, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def model_flags(hf_dir: str, seq: int) -> list[str]:
    """Megatron flags of the imported Llama (read from its config.json)."""
    c = json.load(open(os.path.join(hf_dir, "config.json")))
    flags = ["--num-layers", str(c["num_hidden_layers"]), "--hidden-size", str(c["hidden_size"]),
             "--num-attention-heads", str(c["num_attention_heads"]), "--ffn-hidden-size", str(c["intermediate_size"]),
             "--seq-length", str(seq), "--max-position-embeddings", str(c["max_position_embeddings"]),
             "--position-embedding-type", "rope", "--rotary-base", str(int(c.get("rope_theta", 10000))),
             "--normalization", "RMSNorm", "--norm-epsilon", str(c["rms_norm_eps"]), "--swiglu",
             "--disable-bias-linear", "--hidden-dropout", "0", "--attention-dropout", "0"]
    return flags + ([] if c.get("tie_word_embeddings") else ["--untie-embeddings-and-output-weights"])


def run_level(level: str, ckpt: str, data: str, a, work: str) -> dict:
    log = os.path.join(work, f"sft_{level}.jsonl")
    flags = model_flags(os.path.join(ckpt, "hf"), a.seq) + [
        "--sft", "--data-path", data, "--tokenizer-type", "SFTTokenizer", "--tokenizer-model", os.path.join(ckpt, "hf"),
        "--split", "95,5,0", "--finetune", "--load", ckpt, "--fp8-level", level, "--seed", "1234",
        "--micro-batch-size", str(a.batch), "--train-iters", str(a.train_iters), "--lr", str(a.lr),
        "--min-lr", str(a.lr / 10), "--lr-warmup-iters", str(max(1, a.train_iters // 20)), "--weight-decay", "0.0",
        "--log-interval", str(a.log_interval), "--eval-interval", str(a.train_iters), "--eval-iters",
        str(a.eval_iters), "--log-json", log, "--data-cache-path", os.path.join(work, "cache")]
    summary = pretrain(parse_config(flags), printer=lambda *x, **k: None)
    records = [json.loads(line) for line in open(log)]
    curve = [(r["iteration"], r["lm_loss"]) for r in records if "lm_loss" in r]
    step = sum(r["step_time_s"] for r in records if "step_time_s" in r) / max(1, len(curve))
    return {"curve": curve, "final_valid_loss": summary["valid_loss"], "skipped": summary["skipped"],
            "mean_step_time_s": step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-model", help="a local Hugging Face Llama directory with a chat template (default: built)")
    p.add_argument("--levels", default="off,O2,O3")
    p.add_argument("--lr", type=float, default=2e-3)
    for name, default in [("train_iters", 150), ("layers", 4), ("hidden", 128), ("heads", 4), ("vocab", 2048),
                          ("seq", 128), ("batch", 8), ("eval_iters", 8), ("log_interval", 5)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sft-parity-") as work:
        data = os.path.join(work, "docstrings.jsonl")
        rows = docstring_chats()
        with open(data, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"chat data: {len(rows)} conversations from {len(MODULES)} standard-library modules")
        hf_dir = a.hf_model or small_llama(os.path.join(work, "hf"), a.vocab, a.hidden, a.layers, a.heads, a.seq)
        ckpt = os.path.join(work, "ckpt")
        import_hf(hf_dir, ckpt, fp8_level="off")
        results = {}
        for level in a.levels.split(","):
            results[level] = run_level(level, ckpt, data, a, work)
            print(f"{level:4s} final validation loss {results[level]['final_valid_loss']:.5f} "
                  f"(skipped steps {results[level]['skipped']}, {results[level]['mean_step_time_s']:.2f} s/step)",
                  flush=True)
    if "off" in results:
        ref = results["off"]["final_valid_loss"]
        for level, r in results.items():
            r["valid_vs_off"] = (r["final_valid_loss"] - ref) / ref
            print(f"{level:4s} {100 * r['valid_vs_off']:+.3f}% vs off")
    config = dict(vars(a), conversations=len(rows), model=a.hf_model or "random Llama built by the bench")
    save_results(os.path.join(RESULTS_DIR, "sft_parity.json"), config, results)
    if plot_curves(results, os.path.join(RESULTS_DIR, "sft_parity.png"), "training loss (assistant tokens)",
                   "megatron_fp8 SFT: one imported checkpoint fine-tuned at each level"):
        print("wrote bench/results/sft_parity.png")


if __name__ == "__main__":
    main()
