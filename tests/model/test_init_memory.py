"""Building an FP8 model never holds the whole model in float32 (issue 13, item 2).

Each configuration is built in a fresh Python process (so no earlier allocation's peak or retained heap
mixes in); the process reports its resident set before construction and its high-water mark (VmHWM)
after, plus the bytes the built model really stores. The model's float32 size is ~440 MB, so a
construction that materialised the float32 model first (then converted it) would show a peak delta of
at least that.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = 1 << 20

WORKER = r"""
import json, sys
import torch
from megatron_fp8.config import Config, ModelConfig, PrecisionConfig
from megatron_fp8.model import GPTModel
from megatron_fp8.parallel.state import single_process
from megatron_fp8.process_memory import peak_rss_bytes

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

cfg = Config(model=ModelConfig(num_layers=8, hidden_size=1024, num_attention_heads=16, seq_length=128,
                               vocab_size=8192), precision=PrecisionConfig(fp8_level=sys.argv[1]))
pstate = single_process()
before = rss()
model = GPTModel(cfg, pstate)
peak = peak_rss_bytes()
params = list(model.parameters())
stored = 0
for p in params:
    stored += p.numel() * p.element_size()
    info = p.info
    if info.initial_master is not None:  # kept for the optimizer (issue 18): part of what was built
        stored += sum(t.numel() * t.element_size() for t in info.initial_master if t is not None)
print(json.dumps({"before": before, "peak": peak, "stored": stored,
                  "fp32": 4 * sum(p.numel() for p in params),
                  "largest_fp32": 4 * max(p.numel() for p in params)}))
"""


def build(level: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # glibc's default allocator, as users run it
    done = subprocess.run([sys.executable, "-c", WORKER, level], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("level, ceiling", [("O2", 0.75), ("O3", 1.0)])
def test_fp8_model_construction_peak_stays_near_its_stored_size(level, ceiling):
    r = build(level)
    delta = r["peak"] - r["before"]
    # What construction may hold at its peak: everything already stored (weights, scales and, at O3, the
    # FP16 initial masters the optimizer takes over), plus the one tensor being made: its full float32
    # init, and the conversion's float32 temporaries (|x| for the amax, x * scale before the cast: two
    # more at most), which glibc may keep as free heap; 32 MB for everything else (ParamInfo records,
    # scale tensors, generator state, heap metadata).
    bound = r["stored"] + 3 * r["largest_fp32"] + 32 * MB
    print(f"{level}: +{delta / MB:.0f} MB, stored {r['stored'] / MB:.0f} MB, float32 {r['fp32'] / MB:.0f} MB")
    assert delta <= bound, (f"{level}: construction peak +{delta / MB:.0f} MB, stored {r['stored'] / MB:.0f} MB, "
                            f"largest float32 tensor {r['largest_fp32'] / MB:.0f} MB")
    # and so below the float32 model: O2 stores 2 bytes per linear weight (FP16 + scale) and float32
    # embeddings/norms (0.56 of float32 here; the rest of the ceiling is the one-tensor term above, ~0.2
    # of this model). O3 stores 1 byte plus the FP16 initial master each linear's optimizer master starts
    # from (issue 18's fix, 0.79 of float32), so there only "never the float32 model" is asserted.
    assert delta < ceiling * r["fp32"], f"{level}: +{delta / MB:.0f} MB of a {r['fp32'] / MB:.0f} MB float32 model"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_measurement_sees_a_float32_model():
    """The same measurement at ``off`` (float32 storage) sees the whole float32 model: the peak delta
    above is a real measurement of what construction holds, not a number that is always small."""
    r = build("off")
    assert r["peak"] - r["before"] >= 0.95 * r["fp32"]
