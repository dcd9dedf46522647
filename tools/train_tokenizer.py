r"""Train a tokenizer offline from text or JSONL files.

    python tools/train_tokenizer.py --input corpus.jsonl --tokenizer-type SentencePieceTokenizer \
        --vocab-size 8192 --output-dir tok/          # writes tok/tokenizer.model
    python tools/train_tokenizer.py --input corpus.jsonl --tokenizer-type GPT2BPETokenizer \
        --vocab-size 8192 --output-dir tok/          # writes tok/vocab.json and tok/merges.txt
"""

import argparse
import os
import sys
import time


from megatron_fp8.data.tokenizer_training import iter_texts, train_gpt2_bpe, train_sentencepiece


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help=".jsonl/.json(.gz) files (one document per line) or plain text files")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--tokenizer-type", choices=["SentencePieceTokenizer", "GPT2BPETokenizer"], required=True)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="SentencePiece only")
    parser.add_argument("--min-frequency", type=int, default=2, help="GPT-2 BPE only: rarest pair merged")
    parser.add_argument("--num-threads", type=int, default=os.cpu_count() or 1, help="SentencePiece only")
    args = parser.parse_args(argv)
    if args.vocab_size < 300:
        parser.error("--vocab-size: must be at least 300")
    start = time.perf_counter()
    texts = iter_texts(args.input, args.json_key)
    try:
        if args.tokenizer_type == "SentencePieceTokenizer":
            path = train_sentencepiece(texts, os.path.join(args.output_dir, "tokenizer.model"), args.vocab_size,
                                       args.model_type, args.num_threads)
            print(f"wrote {path}")
        else:
            vocab_file = os.path.join(args.output_dir, "vocab.json")
            merge_file = os.path.join(args.output_dir, "merges.txt")
            size = train_gpt2_bpe(texts, vocab_file, merge_file, args.vocab_size, args.min_frequency)
            print(f"wrote {vocab_file} ({size} tokens) and {merge_file}")
    except (ValueError, FileNotFoundError) as err:
        print(f"train_tokenizer.py: error: {err}", file=sys.stderr)
        return 1
    print(f"trained in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
