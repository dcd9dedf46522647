"""The last step of scripts/gpu_check.sh: merge every stage's outcome into the benchmark's JSON and write
report.txt (stage table, why each failed stage failed, the benchmark tables). Needs no torch, so it
reports even when importing torch is what failed.

    python bench/gpu_report.py --json OUT/gpu.json --report OUT/report.txt \
        --stage build ok 71 OUT/build.log --stage pytest "FAILED (rc 1)" 95 OUT/pytest.log ...
"""

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_tables import tables  # noqa: E402

TAIL_LINES = 25


def read_lines(path: str) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def highlights(name: str, lines: list[str]) -> dict:
    """The lines of a stage's log that say what it found."""
    if name == "build":
        return {"backend": next((ln for ln in lines if ln.startswith("backend:")), None)}
    if name == "kernels":
        return {"checks": [ln for ln in lines if ln.startswith(("PASS", "FAIL", "SKIP", "backend:"))]}
    if name == "pytest":
        summary = next((ln.strip("= ") for ln in reversed(lines)
                        if re.search(r"\d+ (passed|failed|skipped|error)", ln)), None)
        failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        kernels_line = next((ln for ln in lines if ln.startswith("compiled FP8 kernels")), None)
        return {"summary": summary, "failed": failed, "kernels": kernels_line}
    return {}


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--stage", nargs=4, action="append", default=[], metavar=("NAME", "STATUS", "SECONDS", "LOG"))
    p.add_argument("--note", action="append", default=[], help="a line for the report's head")
    a = p.parse_args(argv)
    payload = load_json(a.json)
    stages = []
    for name, status, seconds, log in a.stage:
        lines = read_lines(log)
        entry = {"stage": name, "status": status, "seconds": int(seconds), "log": os.path.basename(log),
                 **highlights(name, lines)}
        if status != "ok":
            entry["tail"] = lines[-TAIL_LINES:]
        stages.append(entry)
    ok = all(s["status"] == "ok" for s in stages)
    payload["check"] = {"ok": ok, "stages": stages, "notes": a.note, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    env = payload.get("env", {})
    out = [f"megatron_fp8 GPU check, {payload['check']['finished']}: {'all stages ok' if ok else 'SOME STAGES FAILED'}",
           f"device: {env.get('name', '?')} (sm {env.get('capability', '?')}), torch {env.get('torch', '?')}, "
           f"CUDA {env.get('cuda', '?')}, kernels {env.get('kernels', '?')}"] + a.note
    out += ["", f"{'stage':10s} {'status':24s} {'seconds':>7s}  log"]
    for s in stages:
        found = s.get("backend") or s.get("summary") or ""
        out.append(f"{s['stage']:10s} {s['status']:24s} {s['seconds']:7d}  {s['log']}  {found}")
    for s in stages:
        if s["status"] != "ok":
            out += ["", f"--- {s['stage']}: {s['status']}; last lines of {s['log']}:"] + s["tail"]
    for s in stages:
        if s.get("failed"):
            out += ["", f"--- {s['stage']}: failed tests"] + s["failed"]
    if payload.get("results"):
        out += ["", tables(payload["results"])]
    text = "\n".join(out) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    write_atomic(a.json, json.dumps(payload, indent=1))
    write_atomic(a.report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
