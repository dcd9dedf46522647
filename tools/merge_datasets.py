"""Concatenate several .bin/.idx datasets (same token dtype) into one, in the order given.

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document --output-prefix data/ab
    python tools/merge_datasets.py --input data/shards/ --output-prefix data/all   (every prefix in the folder)
"""

import argparse
import os
import sys


from megatron_fp8.data.indexed_dataset import DataFormatError, IndexedDataset, IndexedDatasetBuilder


def expand_inputs(inputs):
    """Prefixes from the arguments; a folder stands for its *.idx prefixes in sorted order."""
    prefixes = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f[:-4]) for f in os.listdir(item) if f.endswith(".idx"))
            if not found:
                raise FileNotFoundError(f"{item}: folder holds no .idx files")
            prefixes.extend(found)
        else:
            prefixes.append(item[:-4] if item.endswith((".idx", ".bin")) else item)
    return prefixes


def merge(prefixes, output_prefix) -> IndexedDataset:
    if os.path.abspath(output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise ValueError(f"--output-prefix: {output_prefix} is also an input")
    first = IndexedDataset(prefixes[0])  # validates the first pair and fixes the dtype
    builder = IndexedDatasetBuilder(output_prefix, first.dtype)
    try:
        for prefix in prefixes:
            builder.add_index(prefix)
        builder.finalize()
    except BaseException:
        builder.abort()
        raise
    return IndexedDataset(output_prefix)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes or folders of them")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    try:
        merged = merge(expand_inputs(args.input), args.output_prefix)
    except (DataFormatError, FileNotFoundError, ValueError) as err:
        print(f"merge_datasets.py: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_prefix}.bin/.idx: {len(merged.document_indices) - 1} documents, "
          f"{merged.num_tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
