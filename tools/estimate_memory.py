r"""Per-GPU memory of a megatron_fp8 run, from the same flags as pretrain_gpt.py, without a GPU or data.

    python tools/estimate_memory.py --world-size 32 --num-layers 32 --hidden-size 4096 \
        --num-attention-heads 32 --seq-length 2048 --micro-batch-size 1 --global-batch-size 1024 \
        --bf16 --use-distributed-optimizer --fp8-level O2 --compare-levels
    python tools/estimate_memory.py --largest-fitting --world-size 8 --gpu-memory-gb 80 \
        --seq-length 2048 --micro-batch-size 1 --bf16 --use-distributed-optimizer

Prints weights, gradients, master weights, optimizer moments, the FP8 weight cache and activations (with
and without full-layer recomputation) of the fullest GPU, next to docs/design.md §1's bytes per parameter.
Data and tokenizer flags are accepted and ignored: give the vocabulary with --vocab-size.
"""

import copy
import json
import sys


from megatron_fp8.arguments import build_parser, config_from_args
from megatron_fp8.layers.embedding import padded_vocab_size
from megatron_fp8.memory import largest_fitting, plan_memory
from megatron_fp8.memory.report import describe, fitting_table, level_table
from megatron_fp8.parallel.groups import grid_coordinates

GPT2_VOCAB = 50257
COMPARED_LEVELS = ("off", "O1", "O2", "O3")


def parse_args(argv=None):
    parser = build_parser()
    parser.description = "megatron_fp8 per-GPU memory planner (no training, no data, no GPU)"
    g = parser.add_argument_group("memory planner")
    g.add_argument("--world-size", type=int, default=None, help="GPUs in the job (default: TP x PP)")
    g.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (2^30 bytes)")
    g.add_argument("--gpus-per-node", type=int, default=8, help="largest TP the --largest-fitting search tries")
    g.add_argument("--recompute", action="store_true", help="plan every layer recomputed (keep only layer inputs) "
                   "whatever --recompute-granularity/--recompute-method/--recompute-num-layers say (which are "
                   "planned as given otherwise)")
    g.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="whose kernels save what (fused dropout/attention on cuda)")
    g.add_argument("--compare-levels", action="store_true", help=f"plan {', '.join(COMPARED_LEVELS)} side by side")
    g.add_argument("--largest-fitting", action="store_true",
                   help="the largest GPT shape that fits per level on --world-size GPUs of --gpu-memory-gb")
    g.add_argument("--rank", type=int, default=None,
                   help="plan this global rank (e.g. the logging rank, world-1) instead of the fullest GPU")
    g.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser, parser.parse_args(argv)


def planner_config(args):
    """The run's Config with the data part replaced by mock data, and the padded vocabulary set."""
    ns = copy.copy(args)
    raw_vocab = args.vocab_size or GPT2_VOCAB
    ns.data_path, ns.mock_data, ns.tokenizer_type = None, True, None
    ns.vocab_file = ns.merge_file = ns.tokenizer_model = None
    ns.vocab_size = raw_vocab
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    world = args.world_size or tp * pp
    if ns.global_batch_size is None:  # one micro-batch per data-parallel rank
        ns.global_batch_size = args.micro_batch_size * max(1, world // max(1, tp * pp))
    config = config_from_args(ns)
    config.data = None
    config.model.vocab_size = padded_vocab_size(raw_vocab, config.model.make_vocab_size_divisible_by, tp)
    return config, world, raw_vocab


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    try:
        config, world, raw_vocab = planner_config(args)
        if args.largest_fitting:
            found = largest_fitting(config, world, args.gpu_memory_gb, COMPARED_LEVELS, raw_vocab, args.device,
                                    args.recompute, args.gpus_per_node)
            if args.json:
                print(json.dumps({lvl: None if hit is None else {"shape": hit[0].__dict__, "plan": hit[1].to_dict()}
                                  for lvl, hit in found.items()}, indent=1))
            else:
                print(fitting_table(found, world, args.gpu_memory_gb, _settings(config, args)))
            return 0
        levels = COMPARED_LEVELS if args.compare_levels else (config.precision.fp8_level,)
        plans = {}
        for level in levels:
            cfg = config if level == config.precision.fp8_level else _with_level(config, level)
            plans[level] = plan_memory(cfg, world, args.device, args.recompute, *_coordinates(cfg, world, args.rank))
    except ValueError as err:  # a bad flag or layout: say which, without the long usage text
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if args.json:
        print(json.dumps({lvl: plan.to_dict() for lvl, plan in plans.items()}, indent=1))
    else:
        print(describe(config, next(iter(plans.values())), raw_vocab))
        print(level_table(plans, args.gpu_memory_gb))
    return 0


def _coordinates(config, world: int, rank: int | None) -> tuple:
    """(pp_rank, dp_rank) of a global rank in Megatron's grid, or (None, None): the fullest GPU."""
    if rank is None:
        return None, None
    if not 0 <= rank < world:
        raise ValueError(f"--rank {rank} is outside the world of {world} ranks")
    tp, pp = config.parallel.tensor_model_parallel_size, config.parallel.pipeline_model_parallel_size
    _, dp_rank, pp_rank = grid_coordinates(rank, tp, world // (tp * pp))
    return pp_rank, dp_rank


def _settings(config, args) -> str:
    """What the --largest-fitting search keeps fixed, for the table's title."""
    policy, t = config.precision.policy, config.training
    return (f"\n  seq {config.model.seq_length}, micro-batch {t.micro_batch_size}, compute "
            f"{str(policy.compute).replace('torch.', '')}, distributed optimizer "
            f"{'on' if config.parallel.use_distributed_optimizer else 'off'}, recomputation "
            f"{'on' if args.recompute else 'off'}, {args.device} kernels; layouts tried from the least model "
            f"parallelism up (TP <= {args.gpus_per_node}, SP with TP, 1F1B filled with PP micro-batches)")


def _with_level(config, level):
    """The same run at another level (explicit dtype overrides belong to the chosen level only)."""
    out = copy.deepcopy(config)
    out.precision = config.precision.at_level(level)
    return out


if __name__ == "__main__":
    sys.exit(main())
