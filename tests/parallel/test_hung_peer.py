"""A hung rank no longer blocks the others forever (issue 17, item 5).

The issue's reproduction: two data-parallel ranks of pretrain_gpt.py, launched as torchrun would (RANK,
WORLD_SIZE, MASTER_ADDR/PORT); once training runs, one rank is stopped with SIGSTOP. The other must fail
within --distributed-timeout-minutes (a fraction of a minute here) with a message naming the collective,
and exit non-zero so that the launcher ends the job.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_fp8.parallel.local_spawn import free_port

from ..training.test_pretrain_cli import ROOT, TINY

TIMEOUT_MINUTES = "0.25"  # 15 s: far above a tiny step or the data build, even on a busy machine
DEADLINE_S = 300  # only so that a regression fails instead of hanging CI


def launch(rank: int, port: int, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *TINY, "--train-iters", "100000",
           "--log-interval", "1", "--eval-interval", "100000", "--log-json", str(tmp_path / "log.jsonl"),
           "--distributed-timeout-minutes", TIMEOUT_MINUTES, "--data-cache-path", str(tmp_path / "cache")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_stopped_rank_makes_the_other_exit_naming_the_collective(tmp_path):
    port = free_port()
    ranks = [launch(r, port, tmp_path) for r in range(2)]
    try:
        log, start = tmp_path / "log.jsonl", time.time()
        while not (log.exists() and log.read_text().strip()):  # the last rank logs: training is under way
            assert all(p.poll() is None for p in ranks), ranks[0].stderr.read().decode()[-3000:]
            assert time.time() - start < DEADLINE_S, "training did not start"
            time.sleep(0.2)
        os.kill(ranks[1].pid, signal.SIGSTOP)
        try:
            code = ranks[0].wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still waits {DEADLINE_S} s after its peer stopped")
        err = ranks[0].stderr.read().decode()
        assert code == 1, err[-3000:]
        assert f"did not complete within {float(TIMEOUT_MINUTES):g} minutes (--distributed-timeout-minutes)" in err
        assert "rank 0: " in err and "over ranks [0, 1]" in err and "Traceback" not in err
    finally:
        for p in ranks:
            p.kill()  # SIGKILL ends a stopped process too
            p.wait()
