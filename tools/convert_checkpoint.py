"""Convert a megatron_fp8 checkpoint to another parallel layout or precision level (or to/from Hugging Face).

    python tools/convert_checkpoint.py --load ckpt --save ckpt_tp1 \\
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 1 [--target-data-parallel-size 2 \\
        --target-use-distributed-optimizer] [--target-fp8-level off] \
        [--target-first-last-layers-bf16 --target-num-layers-at-start-in-bf16 N | --no-target-first-last-layers-bf16]

Weights and optimizer states are read in full precision (dequantized with their scales), resharded,
and requantized with fresh scales into the target level's storage. The high-precision first/last layers
(--first-last-layers-bf16) carry over unless the --target-*-bf16 flags change them (or the target level is
``off``, which has none); their linears move between compute-dtype and FP8-level storage like any weight. Progress (iteration, consumed
samples) carries over, so training resumes on the same loss curve.
"""

import argparse
from dataclasses import replace

from megatron_fp8.checkpoint.distributed import read_metadata
from megatron_fp8.checkpoint.lock import SaveDirLock
from megatron_fp8.checkpoint.state import as_converter_flags, config_from_summary
from megatron_fp8.checkpoint.tracker import iteration_folders, read_tracker
from megatron_fp8.checkpoint.universal import prepare_target, read_universal, write_layout
from megatron_fp8.config import FP8_LEVELS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", help="source checkpoint directory")
    p.add_argument("--save", help="target checkpoint directory")
    p.add_argument("--target-tensor-parallel-size", type=int, default=None)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=None)
    p.add_argument("--target-data-parallel-size", type=int, default=1,
                   help="only matters with --target-use-distributed-optimizer (optimizer shards per DP rank)")
    p.add_argument("--target-use-distributed-optimizer", action="store_true")
    p.add_argument("--target-fp8-level", choices=FP8_LEVELS, default=None)
    p.add_argument("--target-first-last-layers-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="keep (or, with --no-..., stop keeping) the first/last transformer layers out of FP8 "
                        "(default: as the source)")
    p.add_argument("--target-num-layers-at-start-in-bf16", type=int, default=None)
    p.add_argument("--target-num-layers-at-end-in-bf16", type=int, default=None)
    p.add_argument("--hf-import", metavar="DIR", help="import a Hugging Face GPT-2, Llama, Mistral or Qwen2 directory")
    p.add_argument("--hf-export", metavar="DIR", help="export to a Hugging Face directory")
    p.add_argument("--verify", action="store_true",
                   help="with --hf-import: before writing, run our model (at off) and transformers on the same random "
                        "tokens and fail if the logits differ by more than 1e-3")
    return p


def convert(args) -> str:
    layers = [f for f, v in (("--[no-]target-first-last-layers-bf16", args.target_first_last_layers_bf16),
                              ("--target-num-layers-at-start-in-bf16", args.target_num_layers_at_start_in_bf16),
                              ("--target-num-layers-at-end-in-bf16", args.target_num_layers_at_end_in_bf16))
              if v is not None]
    if (args.hf_import or args.hf_export) and layers:
        raise SystemExit(f"convert_checkpoint.py: {', '.join(layers)} convert megatron_fp8 checkpoints; import "
                         "first, then convert the imported checkpoint")
    if args.hf_import or args.hf_export:
        from megatron_fp8.checkpoint import hf

        return hf.run(args)
    if args.verify:
        raise SystemExit("convert_checkpoint.py: --verify applies to --hf-import")
    if not args.load or not args.save:
        raise SystemExit("convert_checkpoint.py: --load and --save are required (or --hf-import / --hf-export)")
    if read_tracker(args.save) is not None or iteration_folders(args.save):
        raise SystemExit(f"convert_checkpoint.py: --save {args.save} already holds checkpoints; convert into a "
                         "new directory (nothing is overwritten)")
    found = read_metadata(args.load)
    if found is None:
        raise SystemExit(f"convert_checkpoint.py: --load {args.load} holds no checkpoint "
                         "(no latest_checkpointed_iteration.txt)")
    summary = found[1]["config"]
    try:
        config = config_from_summary(summary, args.target_fp8_level)
        config.precision = _target_layers(config.precision, args)
    except ValueError as err:
        raise SystemExit(f"convert_checkpoint.py: {err}") from None
    tp = args.target_tensor_parallel_size or config.parallel.tensor_model_parallel_size
    pp = args.target_pipeline_parallel_size or config.parallel.pipeline_model_parallel_size
    dp = args.target_data_parallel_size
    try:  # the target layout is checked before the (long) read
        prepare_target(config, summary["model"], tp, pp, dp, args.target_use_distributed_optimizer)
    except ValueError as err:
        raise SystemExit(f"convert_checkpoint.py: {err}") from None
    universal = read_universal(args.load)
    with SaveDirLock(args.save):
        return write_layout(universal, config, tp, pp, dp, args.save, args.target_use_distributed_optimizer)


def _target_layers(precision, args):
    """The source's (or target level's) precision with the --target-*-bf16 flags applied."""
    given = {"first_last_layers_bf16": args.target_first_last_layers_bf16,
             "num_layers_at_start_in_bf16": args.target_num_layers_at_start_in_bf16,
             "num_layers_at_end_in_bf16": args.target_num_layers_at_end_in_bf16}
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("first_last_layers_bf16") is False:  # back to every layer in FP8: counts at their defaults
        given.update(num_layers_at_start_in_bf16=1, num_layers_at_end_in_bf16=1)
    try:
        return replace(precision, **given)
    except ValueError as err:  # name the converter's flags, not the training ones
        raise ValueError(as_converter_flags(str(err))) from None


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(f" > wrote {convert(args)}")


if __name__ == "__main__":
    main()
