"""bench/gpu.py's CPU smoke mode (``--device cpu --tiny``) runs the GPU benchmark's code path: every level
trains a step, the GEMM table and the ``_scaled_mm`` rule probe are filled, and the JSON is complete."""

import json
import math
import os

from .helpers import ROOT, load_script



def test_cpu_smoke_run_writes_every_figure(tmp_path, capsys):
    bench = load_script("bench/gpu.py")
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    levels = data["results"]["levels"]
    assert list(levels) == ["off", "gemm", "O1", "O2", "O3"]
    assert len({r["params"] for r in levels.values()}) == 1  # the same model at every level
    for level, r in levels.items():
        assert r["step_time_s"] > 0 and all(math.isfinite(x) for x in r["losses"]), level
        assert r["gemm_fallbacks"] == {} and r["mem"]["weights"] > 0
    assert levels["off"]["step_time_vs_off_bf16"] == 1.0
    assert levels["O2"]["model_state_bytes"] < levels["off"]["model_state_bytes"]
    gemms = data["results"]["gemm"]
    assert [g["gemm"] for g in gemms] == ["qkv fwd", "proj fwd", "fc1 fwd", "fc2 fwd", "fc1 dgrad", "fc1 wgrad"]
    assert all(g["fp8_tflops"] > 0 and g["bf16_tflops"] > 0 for g in gemms)
    rules = data["results"]["scaled_mm_rules"]
    assert len(rules) == 10 and all(v == "accepted" for v in rules.values())  # CPU _scaled_mm takes anything
    assert data["env"]["device"] == "cpu"
    printed = capsys.readouterr().out
    assert "level (--bf16)" in printed and "FP8 TFLOP/s" in printed


def test_budget_skips_levels_and_keeps_the_file_valid(tmp_path):
    bench = load_script("bench/gpu.py")
    out = tmp_path / "gpu.json"
    assert bench.main(["--device", "cpu", "--tiny", "--budget-s", "0", "--levels", "off,O2", "--out", str(out)]) == 0
    levels = json.loads(out.read_text())["results"]["levels"]
    assert all("over the --budget-s" in r["skipped"] for r in levels.values())


def test_out_defaults_to_the_OUT_folder(monkeypatch, tmp_path):
    bench = load_script("bench/gpu.py")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.default_out() == os.path.join(str(tmp_path), "gpu.json")
    monkeypatch.delenv("OUT")
    assert bench.default_out() == os.path.join(ROOT, "bench", "results", "gpu.json")
