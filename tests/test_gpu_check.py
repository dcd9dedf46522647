"""scripts/gpu_check.sh where there is no GPU (it says so and exits 0, writing nothing), its shell syntax,
and its report step (bench/gpu_report.py) on stage logs of a run where some stages failed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from .helpers import ROOT, load_script

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def test_script_parses():
    done = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run the whole check")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    done = subprocess.run(["bash", SCRIPT], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA device")
    assert not out.exists()  # nothing to report, nothing written


def test_report_names_failed_stages_and_keeps_the_figures(tmp_path, capsys):
    logs = {"build": "building...\nbackend: csrc-cuda (/x/megatron_fp8_C.so)\n",
            "kernels": "backend: csrc-cuda\nPASS  scale_cast_amax      cuda   100 cases  max mismatch 0 ulp\n"
                       "FAIL  adamw_step           cuda     5 cases  max mismatch 3 ulp\n",
            "pytest": "..F.\nFAILED tests/gpu/test_training_cuda.py::test_steps[O3] - AssertionError: loss\n"
                      "compiled FP8 kernels checked against the reference: csrc-cuda from /x\n"
                      "======== 1 failed, 90 passed, 3 skipped in 61.20s ========\n",
            "bench": "$ python bench/gpu.py\n"}
    for name, text in logs.items():
        (tmp_path / f"{name}.log").write_text(text)
    figures = {"env": {"name": "NVIDIA H200", "capability": "9.0", "torch": "2.11.0", "cuda": "13.0",
                       "kernels": "csrc-cuda"},
               "results": {"levels": {"off": {"step_time_s": 0.5, "tokens_per_sec": 16384.0,
                                              "max_memory_allocated": 2**33, "model_state_bytes": 2**32,
                                              "gemm_fallbacks": {}},
                                      "O2": {"error": "OutOfMemoryError: CUDA out of memory"}},
                           "gemm": [], "scaled_mm_rules": {"e5m2 x e5m2": "refused: ValueError: ..."}}}
    (tmp_path / "gpu.json").write_text(json.dumps(figures))
    stages = [("build", "ok", "71"), ("kernels", "FAILED (rc 1)", "12"), ("pytest", "FAILED (rc 1)", "95"),
              ("bench", "TIMEOUT after 200s", "200")]
    argv = ["--json", str(tmp_path / "gpu.json"), "--report", str(tmp_path / "report.txt"), "--note", "a note"]
    for name, status, seconds in stages:
        argv += ["--stage", name, status, seconds, str(tmp_path / f"{name}.log")]
    assert load_script("bench/gpu_report.py").main(argv) == 0
    report = (tmp_path / "report.txt").read_text()
    assert "SOME STAGES FAILED" in report and "NVIDIA H200" in report and "a note" in report
    assert "backend: csrc-cuda (/x/megatron_fp8_C.so)" in report
    assert "1 failed, 90 passed, 3 skipped in 61.20s" in report
    assert "--- kernels: FAILED (rc 1); last lines of kernels.log:" in report and "max mismatch 3 ulp" in report
    assert "FAILED tests/gpu/test_training_cuda.py::test_steps[O3]" in report
    assert "TIMEOUT after 200s" in report and "OutOfMemoryError" in report and "e5m2 x e5m2" in report
    merged = json.loads((tmp_path / "gpu.json").read_text())
    assert merged["results"] == figures["results"]  # the benchmark's figures are kept
    check = merged["check"]
    assert not check["ok"] and [s["stage"] for s in check["stages"]] == ["build", "kernels", "pytest", "bench"]
    assert check["stages"][1]["checks"][-1].startswith("FAIL  adamw_step")
    assert check["stages"][2]["kernels"].startswith("compiled FP8 kernels checked")
    assert "tail" not in check["stages"][0] and check["stages"][3]["tail"] == ["$ python bench/gpu.py"]
    assert report in capsys.readouterr().out


def test_report_without_benchmark_figures(tmp_path):
    """The benchmark never ran (or torch failed to import): the report still comes out."""
    (tmp_path / "env.log").write_text("ImportError: libcudart.so.13: cannot open shared object file\n")
    argv = ["--json", str(tmp_path / "gpu.json"), "--report", str(tmp_path / "report.txt"),
            "--stage", "env", "FAILED (rc 1)", "2", str(tmp_path / "env.log"),
            "--stage", "bench", "SKIPPED (budget spent)", "0", str(tmp_path / "missing.log")]
    assert load_script("bench/gpu_report.py").main(argv) == 0
    assert "libcudart.so.13" in (tmp_path / "report.txt").read_text()
    assert json.loads((tmp_path / "gpu.json").read_text())["check"]["ok"] is False
