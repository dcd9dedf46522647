"""Throughput of tools/preprocess_data.py on the default corpus (MB of JSONL per second).

Runs the tool as a subprocess with 1 and 2 workers for GPT-2 byte-level BPE (vocab.json + merges.txt
trained here on the corpus, 8192 entries) and for the corpus's SentencePiece BPE (8192). Where the
Hugging Face `tokenizers` library is installed, the same vocab/merges are loaded into it and measured on
the same files in the same run, two ways: inside the same tool (--tokenizer-type HuggingFaceTokenizer)
and as bare `encode_batch` calls with 1 and 2 Rayon threads (no JSON, no file writing), and its ids are
compared with ours. Figures go to stdout and bench/results/preprocess.json.

    python bench/preprocess.py [--repeats 2] [--data-cache-path DIR]
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from megatron_fp8.data import default_corpus as dc
from megatron_fp8.data.tokenizer_training import iter_texts, train_gpt2_bpe

HF_ENCODE = r"""
import json, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers
tok = Tokenizer(models.BPE.from_file(sys.argv[1], sys.argv[2]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
texts = [json.loads(line)["text"] for line in open(sys.argv[3], encoding="utf-8")]
start = time.perf_counter()
ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
print(json.dumps({"seconds": time.perf_counter() - start, "ids": ids}))
"""


def gpt2_files(corpus_folder: str):
    """vocab.json + merges.txt trained once on the corpus and kept next to it."""
    folder = os.path.join(corpus_folder, "bench_gpt2_bpe_8192")
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if not (os.path.isfile(vocab) and os.path.isfile(merges)):
        start = time.perf_counter()
        train_gpt2_bpe(iter_texts([os.path.join(corpus_folder, dc.CORPUS)]), vocab, merges, 8192)
        print(f"trained GPT-2 BPE (8192) in {time.perf_counter() - start:.1f} s")
    return vocab, merges


def run_tool(corpus: str, out_prefix: str, workers: int, tokenizer_flags) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", corpus,
           "--output-prefix", out_prefix, "--append-eod", "--workers", str(workers), "--log-interval", "0",
           *tokenizer_flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    inner = float(re.search(r"\(([\d.]+) MB/s\)", proc.stdout).group(1))
    return {"wall_s": wall, "tool_MBps": inner}


def hf_encode(vocab, merges, corpus, threads) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    proc = subprocess.run([sys.executable, "-c", HF_ENCODE, vocab, merges, corpus], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout)


def write_hf_json(vocab, merges, path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept (this machine is noisy)")
    parser.add_argument("--data-cache-path", default=None)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "preprocess.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    folder = dc.ensure_default_corpus(args.data_cache_path)
    corpus_build_s = time.perf_counter() - start
    corpus = os.path.join(folder, dc.CORPUS)
    mb = os.path.getsize(corpus) / 1e6
    vocab, merges = gpt2_files(folder)
    settings = {
        "GPT2BPETokenizer": ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges],
        "SentencePieceTokenizer": ["--tokenizer-type", "SentencePieceTokenizer",
                                   "--tokenizer-model", os.path.join(folder, dc.MODEL)],
    }
    results = {"corpus_MB": round(mb, 2), "corpus": folder, "cpu_count": os.cpu_count(),
               "python": platform.python_version(), "corpus_cached_or_built_s": round(corpus_build_s, 2),
               "tool": {}, "hf_tokenizers": None}
    with tempfile.TemporaryDirectory() as work:
        try:
            import tokenizers
            settings["HuggingFaceTokenizer (tokenizers, same BPE files)"] = [
                "--tokenizer-type", "HuggingFaceTokenizer",
                "--tokenizer-model", write_hf_json(vocab, merges, os.path.join(work, "tokenizer.json"))]
        except ImportError:
            tokenizers = None
        for name, flags in settings.items():
            for workers in (1, 2):
                runs = [run_tool(corpus, os.path.join(work, "out"), workers, flags) for _ in range(args.repeats)]
                best = min(runs, key=lambda r: r["wall_s"])
                entry = {"wall_s": round(best["wall_s"], 2), "MBps_wall": round(mb / best["wall_s"], 2),
                         "MBps_tool": best["tool_MBps"]}
                results["tool"][f"{name} workers={workers}"] = entry
                print(f"{name:52s} workers={workers}: {entry['MBps_wall']:6.2f} MB/s end to end "
                      f"({entry['MBps_tool']:.2f} MB/s inside the tool, {entry['wall_s']:.1f} s)", flush=True)
        if tokenizers is not None:
            from megatron_fp8.data.gpt2_bpe import ByteLevelBPE

            texts = list(iter_texts([corpus]))
            ours = ByteLevelBPE.from_files(vocab, merges)
            t0 = time.perf_counter()
            our_ids = [ours.encode(t) for t in texts]
            ours_s = time.perf_counter() - t0
            hf = {"version": tokenizers.__version__,
                  "ours_encode_only_MBps": round(mb / ours_s, 2)}
            for threads in (1, 2):
                out = hf_encode(vocab, merges, corpus, threads)
                hf[f"encode_batch_threads={threads}_MBps"] = round(mb / out["seconds"], 2)
                hf["documents_with_different_ids"] = sum(a != b for a, b in zip(our_ids, out["ids"]))
            results["hf_tokenizers"] = hf
            print(f"GPT-2 BPE encode only (no JSON, no writing): ours {hf['ours_encode_only_MBps']} MB/s, "
                  f"HF tokenizers {tokenizers.__version__} encode_batch "
                  f"{hf['encode_batch_threads=1_MBps']} MB/s (1 thread), "
                  f"{hf['encode_batch_threads=2_MBps']} MB/s (2 threads); "
                  f"documents with different ids: {hf['documents_with_different_ids']}")
        else:
            print("Hugging Face `tokenizers` not installed: no reference figures (pip install tokenizers)")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        json.dump(results, out, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
