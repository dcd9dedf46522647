"""The planner's process peak (categories + import baseline + step transients + allocator slack,
megatron_fp8/memory/process.py) against the peak RSS a real run reaches (issue 13, item 1).

Each case trains two steps in a fresh process (bench/memory_peak.py's worker: VmHWM after the steps) with
glibc's mmap threshold fixed at 64 KiB (``fix_mmap_threshold``, what ``MALLOC_MMAP_THRESHOLD_=65536``
does), so the resident set follows the live tensors and the planner's model of them (categories exact to
the byte, tests/test_memory_plan.py; the baseline; the step's transients) is what is checked: the same
case gives the same peak run after run (measured 501/501 MB, 468/468 MB). With glibc's default dynamic
threshold the peak also holds the freed blocks glibc keeps, which depends on the order threads free
them: the same O2 4x512 case measured 522-561 MB on one machine and 618 MB on CI's (planned 556), so at
these small sizes, where that slack is a fifth of the peak, a 10% check of it fails by chance. The
default-allocator prediction is a benchmark figure on the benchmark models (bench/memory_peak.py,
docs/RESULTS.md: within 8% at every level on the 110M GPT). The bound is the issue's target, 10% of the
measured peak; measured errors here were 0-5%. The shapes differ from the one the slack was fitted on.
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
            "--recompute", "none", "--steps", "2", "--batch", "1", "--fix-mmap-threshold",
            *(f"--{k}={v}" for k, v in shape.items())]
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
        f"parts {({k: round(v / 2**20) for k, v in r['planned_process'].items()})}, "
        f"RSS by stage {({k: round(v['rss'] / 2**20) for k, v in r['stages'].items()})}")
