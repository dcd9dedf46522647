"""The early-training gap of issue 18: the training loss of every precision level, step by step, relative
to `off` (FP32), on the issue's model (2 layers, hidden 512, vocabulary 128, --mock-data, micro-batch 2,
global batch 8, seed 1234, the default 30-iteration warm-up). Writes bench/results/early_gap[_TAG].json.

    python bench/early_gap.py [--steps 10] [--levels off,gemm,O1,O2,O3] [--tag NAME] [--gemm dequantized]
                              [-- EXTRA FLAGS]

The schedule is the default run's (--train-iters 300, cut short with --exit-interval). ``--gemm dequantized``
runs every FP8 GEMM through megatron_fp8.fp8.gemm's dequantize+matmul route (the same FP8 operands and
scales, exact products, float32 sums in another order): CPU ``torch._scaled_mm`` takes ~90 ns per
multiply-add on a loaded 2-core machine, hours per step of this model.

Flags after ``--`` go to every level except `off` (e.g. ``-- --main-params-dtype fp32``), to measure an
option against the same reference.
"""

import argparse
import json
import os
import sys

from results_io import RESULTS_DIR, save_results
from megatron_fp8.arguments import parse_config
from megatron_fp8.training import pretrain

REPORTED_STEPS = (1, 2, 5, 10, 20, 30, 50)


def train_losses(level: str, a, extra: list[str]) -> list[float]:
    flags = ["--fp8-level", level, "--num-layers", str(a.layers), "--hidden-size", str(a.hidden),
             "--num-attention-heads", str(a.heads), "--seq-length", str(a.seq), "--mock-data",
             "--vocab-size", str(a.vocab), "--micro-batch-size", str(a.micro_batch), "--global-batch-size",
             str(a.global_batch), "--train-iters", "300", "--exit-interval", str(a.steps), "--seed", str(a.seed),
             "--eval-iters", "0",
             "--log-interval", str(a.steps)] + (extra if level != "off" else [])
    return pretrain(parse_config(flags), printer=lambda *x, **k: None)["train_losses"]


class _RefuseEveryShape(dict):
    def get(self, key, default=None):
        return "bench/early_gap.py --gemm dequantized"


def _masters_from_weights() -> None:
    from megatron_fp8.layers import weights
    from megatron_fp8.optim.adamw import Fp8AdamW

    build = Fp8AdamW.__init__

    def init(self, named_params, *args, **kwargs):
        build(self, named_params, *args, **kwargs)
        for name, p in named_params:
            st = self.state[name]
            if st.master is not None:
                st.master, st.master_sinv = weights.stored_copy(weights.real_value(p), st.master.dtype)

    Fp8AdamW.__init__ = init


def relative_gaps(losses: list[float], reference: list[float]) -> list[float]:
    return [(x - r) / r for x, r in zip(losses, reference)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="off,gemm,O1,O2,O3")
    p.add_argument("--tag", default="")
    p.add_argument("--gemm", choices=("scaled_mm", "dequantized"), default="scaled_mm")
    p.add_argument("--reference", help="take off's losses from this earlier results file (same model and steps)")
    p.add_argument("--master-from-weight", action="store_true",
                   help="build the separate masters from the stored (FP8/BF16-rounded) weights, as before issue 18")
    for name, default in [("steps", 10), ("layers", 2), ("hidden", 512), ("heads", 4), ("seq", 256),
                          ("vocab", 128), ("micro_batch", 2), ("global_batch", 8), ("seed", 1234)]:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if a.gemm == "dequantized":
        from megatron_fp8.fp8 import gemm

        gemm._refused = _RefuseEveryShape()
    if a.master_from_weight:
        _masters_from_weights()
    levels = a.levels.split(",")
    saved = json.load(open(a.reference))["results"] if a.reference else {}
    levels = levels if "off" in levels else ["off"] + levels
    name = f"early_gap_{a.tag}.json" if a.tag else "early_gap.json"
    results, reference = {}, None
    for level in sorted(levels, key=lambda lv: lv != "off"):  # the reference first
        losses = saved["off"]["losses"][: a.steps] if level == "off" and saved else train_losses(level, a, extra)
        reference = reference or losses
        gaps = relative_gaps(losses, reference)
        results[level] = {"losses": losses, "vs_off": gaps, "max_abs_gap": max(abs(g) for g in gaps)}
        shown = ", ".join(f"step {s}: {100 * gaps[s - 1]:+.2f}%" for s in REPORTED_STEPS if s <= len(gaps))
        print(f"{level:5s} {shown}", flush=True)
        save_results(os.path.join(RESULTS_DIR, name), {**vars(a), "extra_flags": extra}, results)


if __name__ == "__main__":
    main()
