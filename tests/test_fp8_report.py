"""tools/fp8_report.py: worst tensors per statistic from a --log-json file; PNG curves with matplotlib."""

import json
import sys

import pytest

from .helpers import load_script

report = load_script("tools/fp8_report.py")


def _figures(underflow, saturation, rel_error, amax=1.0, scale_exp=7):
    return {"amax": amax, "scale_exp": scale_exp, "underflow": underflow, "saturation": saturation,
            "rel_error": rel_error}


def _log(tmp_path):
    rows = [{"iteration": 1, "lm_loss": 5.0},
            {"iteration": 2, "fp8_stats_iteration": 2, "fp8_stats": {
                "l0.fc1.input": _figures(0.01, 0.0, 0.02), "l0.fc1.weight.exp_avg": _figures(0.2, 0.0, 0.03)}},
            {"iteration": 4, "fp8_stats_iteration": 4, "fp8_stats": {
                "l0.fc1.input": _figures(0.05, 0.001, 0.02, amax=9.0, scale_exp=5),
                "l0.fc1.weight.exp_avg": _figures(0.1, 0.0, float("nan"))}}]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_table_ranks_tensors_by_their_worst_value(tmp_path, capsys):
    assert report.main([str(_log(tmp_path))]) == 0
    out = capsys.readouterr().out
    underflow = out.split("worst underflow")[1].split("worst saturation")[0].splitlines()
    assert "20.0000%" in underflow[2] and "l0.fc1.weight.exp_avg" in underflow[2] and " 2 " in underflow[2]
    assert "5.0000%" in underflow[3] and "9.000e+00" in underflow[3] and "2^5" in underflow[3]
    rel = out.split("worst rel_error")[1].splitlines()
    assert "nan" in rel[2] and "exp_avg" in rel[2]  # a NaN error ranks first


def test_role_curves_take_the_worst_tensor_of_each_role(tmp_path):
    rows = report.read_stats(str(_log(tmp_path)))
    assert report.role_curves(rows, "underflow") == {"input": ([2, 4], [0.01, 0.05]),
                                                      "exp_avg": ([2, 4], [0.2, 0.1])}


def test_png_with_matplotlib_and_table_only_without(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    log, png = _log(tmp_path), tmp_path / "fp8.png"
    assert report.main([str(log), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    other = tmp_path / "none.png"
    assert report.main([str(log), "--out", str(other)]) == 0
    assert not other.exists() and "matplotlib is not installed" in capsys.readouterr().err


def test_bad_input_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iteration": 1}\n{oops\n')
    assert report.main([str(bad)]) == 1
    assert f"{bad}:2: not a JSON line" in capsys.readouterr().err
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"iteration": 1, "lm_loss": 5.0}\n')
    assert report.main([str(plain)]) == 1
    assert "no FP8 statistics" in capsys.readouterr().err
