"""Cost of --fp8-stats-interval: step time with the statistics off, at interval 100 and at interval 1, on the
same model, batch and machine, in one run (the three trainers' steps interleaved in rotating order, so
load changes hit all three alike). Writes bench/results/fp8_stats.json.

    python bench/fp8_stats.py [--level O2 --layers 2 --hidden 64 --heads 4 --seq 32 --batch 4 --steps 6]

Interval 100 is measured as what it is: 99 iterations that only check a flag and 1 statistics iteration.
Its off-iterations are timed directly; the amortized figure adds a hundredth of the measured extra time of
a statistics iteration (interval 1), instead of timing 100 slow CPU iterations per sample. Because step
times on a loaded machine vary by several percent, the time spent inside the statistics code itself (every
quantization point's recording, timed around the calls) is reported too, as a share of the step.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_fp8.config import Config, ModelConfig, PrecisionConfig, TrainingConfig  # noqa: E402
from megatron_fp8.fp8 import stats, stats_points  # noqa: E402
from megatron_fp8.stats_collector import Fp8StatsCollector  # noqa: E402
from megatron_fp8.training import Trainer  # noqa: E402

from results_io import save_results  # noqa: E402

INTERVALS = {"off": 0, "interval_100": 100, "interval_1": 1}
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def cpu_description() -> dict:
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": sorted(f for f in _CPU_FLAGS if f in flags), "threads": torch.get_num_threads()}


class StatsTimer:
    """Wall time inside the statistics code: the recorder and the points that prepare its inputs (nested
    calls counted once)."""

    def __init__(self):
        self.seconds, self._depth = 0.0, 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start
        return timed

    def install(self) -> None:
        stats.RECORDER.record = self.wrap(stats.RECORDER.record)
        for name in ("weight_operand", "wgrad", "adamw", "dp_grad"):
            setattr(stats_points, name, self.wrap(getattr(stats_points, name)))


def make_trainer(a, interval: int) -> tuple[Trainer, Fp8StatsCollector]:
    cfg = Config(model=ModelConfig(num_layers=a.layers, hidden_size=a.hidden, num_attention_heads=a.heads,
                                   seq_length=a.seq, vocab_size=a.vocab, hidden_dropout=0.0, attention_dropout=0.0),
                 precision=PrecisionConfig(fp8_level=a.level),
                 training=TrainingConfig(micro_batch_size=a.batch, global_batch_size=a.batch,
                                         fp8_stats_interval=interval))
    trainer = Trainer(cfg)
    return trainer, Fp8StatsCollector.for_trainer(trainer, printer=lambda *_: None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in [("layers", 2), ("hidden", 64), ("heads", 4), ("vocab", 256), ("seq", 32), ("batch", 4),
                          ("steps", 6), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--level", default="O2")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fp8_stats.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq))
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": torch.ones(tokens.shape),
             "position_ids": torch.arange(a.seq).expand_as(tokens)}
    runs = {name: make_trainer(a, interval) for name, interval in INTERVALS.items()}
    times = {name: [] for name in runs}
    timer, inside = StatsTimer(), []
    timer.install()
    tensors = 0
    for step in range(a.steps + 1):  # the first round warms up
        names = list(runs)
        for name in names[step % 3:] + names[:step % 3]:  # rotated: no configuration always runs first
            trainer, collector = runs[name]
            # interval 100 runs its iterations 1, 2, ...: none is due, as 99 of every 100 are
            timer.seconds = 0.0
            start = time.perf_counter()
            with collector.iteration(step + 1):
                trainer.train_step([batch], 1e-4)
            elapsed = time.perf_counter() - start
            tensors = max(tensors, len(collector.take().get("fp8_stats", {})))
            if step:
                times[name].append(elapsed)
                if name == "interval_1":
                    inside.append(timer.seconds)
    med = {name: statistics.median(t) for name, t in times.items()}
    off = med["off"]
    extra = med["interval_1"] - off
    results = {name: {"step_time_s": m, "ratio_vs_off": m / off, "samples": times[name]} for name, m in med.items()}
    share = statistics.median(inside) / off
    results["statistics_code"] = {"seconds_per_statistics_iteration": statistics.median(inside),
                                  "share_of_off_step": share, "share_at_interval_100": share / 100}
    results["interval_100_amortized"] = {"step_time_s": med["interval_100"] + extra / 100,
                                         "ratio_vs_off": (med["interval_100"] + extra / 100) / off}
    config = {**vars(a), **cpu_description(), "tensors_measured": tensors, "torch": torch.__version__}
    for name, r in results.items():
        if "step_time_s" in r:
            print(f"{name:24s} {r['step_time_s'] * 1000:9.1f} ms/step  x{r['ratio_vs_off']:.3f} vs off")
    print(f"inside the statistics code: {share * 1000 * off:.1f} ms per statistics iteration = {share:.2%} of an "
          f"off step; {share / 100:.4%} at interval 100")
    print(f"{tensors} FP8 tensors measured per statistics iteration; {config['cpu']} {config['cpu_flags']}")
    save_results(a.out, config, results)


if __name__ == "__main__":
    main()
