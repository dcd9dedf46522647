"""The planner's process peak (categories + import baseline + step transients + allocator slack,
megatron_fp8/memory/process.py) against the peak RSS a real run reaches (issue 13, item 1).

Each case trains two steps in a fresh process (bench/memory_peak.py's worker: VmHWM after the steps) with
glibc's default allocator, as users run. The bound is the issue's target, 10% of the measured peak: the
categories are exact to the byte (tests/test_memory_plan.py), the baseline is ~280 MB of imports, and
the transients and slack are modelled (slack fitted on the 110M GPT, docs/RESULTS.md); on these shapes
and the benchmark models the measured errors were 1-8%. The shapes differ from the one the slack was
fitted on (layers, width, vocabulary, sequence).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"4x512": {"layers": 4, "hidden": 512, "heads": 8, "vocab": 8192, "seq": 256},
          "6x384": {"layers": 6, "hidden": 384, "heads": 6, "vocab": 16000, "seq": 128}}


def measure(level: str, shape: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    args = [sys.executable, os.path.join(ROOT, "bench", "memory_peak.py"), "--worker", "--level", level,
            "--recompute", "none", "--steps", "2", "--batch", "1", *(f"--{k}={v}" for k, v in shape.items())]
    done = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("level, shape", [("off", "4x512"), ("O2", "4x512"), ("O3", "6x384")])
def test_planned_process_peak_is_within_10_percent_of_measured(level, shape):
    r = measure(level, SHAPES[shape])
    measured, planned = r["peak_rss"], r["planned_peak"]
    assert r["planned_process"]["baseline"] > 0 and r["planned_process"]["step_transients"] > 0
    assert planned > r["planned_total"]  # the categories alone miss the baseline, transients and slack
    assert abs(planned - measured) <= 0.10 * measured, (
        f"{level} {shape}: planned {planned / 2**20:.0f} MB, measured {measured / 2**20:.0f} MB, "
        f"parts {({k: round(v / 2**20) for k, v in r['planned_process'].items()})}")
