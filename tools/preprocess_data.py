r"""Tokenize JSONL into Megatron's .bin/.idx format (flags as in Megatron-LM's tools/preprocess_data.py).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type GPT2BPETokenizer --vocab-file vocab.json --merge-file merges.txt --append-eod --workers 2
"""

import argparse
import sys
import types


from megatron_fp8.data.arguments import add_tokenizer_args
from megatron_fp8.data.data_config import check_tokenizer_flags
from megatron_fp8.data.preprocess import PreprocessError, preprocess_jsonl
from megatron_fp8.fsutil import DiskFullError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input / output")
    group.add_argument("--input", nargs="+", required=True, help="JSONL file(s), optionally .gz")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize, one dataset each")
    group.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx")
    group.add_argument("--append-eod", action="store_true", help="end every document with the eod token")
    group.add_argument("--skip-bad-lines", action="store_true",
                       help="skip (and count) malformed lines instead of stopping at the first one")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    group.add_argument("--log-interval", type=int, default=1000, help="report progress every N documents (0: only at the end)")
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers: must be at least 1")
    if args.tokenizer_type is None:
        parser.error("--tokenizer-type: required")
    try:
        check_tokenizer_flags(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer_cfg = types.SimpleNamespace(
        tokenizer_type=args.tokenizer_type, vocab_file=args.vocab_file, merge_file=args.merge_file,
        tokenizer_model=args.tokenizer_model, vocab_size=args.vocab_size)
    try:
        result = preprocess_jsonl(args.input, args.output_prefix, tokenizer_cfg, json_keys=args.json_keys,
                                  append_eod=args.append_eod, workers=args.workers,
                                  log_interval=args.log_interval, skip_bad_lines=args.skip_bad_lines)
    except (PreprocessError, ValueError, FileNotFoundError, DiskFullError) as err:
        print(f"preprocess_data.py: error: {err}", file=sys.stderr)
        return 1
    for prefix in result.outputs:
        print(f"wrote {prefix}.bin and {prefix}.idx")
    print(f"{result.documents} documents, {result.tokens} tokens, {result.input_bytes / 1e6:.2f} MB in "
          f"{result.seconds:.2f} s ({result.input_bytes / max(result.seconds, 1e-9) / 1e6:.2f} MB/s), "
          f"{result.skipped} lines skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
