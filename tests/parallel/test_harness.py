"""A worker's exception fails the test with its traceback first, and its peers do not hang the suite."""

import pytest

from .harness import WorkerError, spawn
from .workers import failing_worker


def test_worker_error_carries_its_traceback():
    with pytest.raises(WorkerError) as err:
        spawn(failing_worker, 2)
    first = str(err.value).split("--- rank ")[1]
    assert first.startswith("1 (first to fail)")
    assert "Traceback" in first and "failing_worker" in first and "rank 1 failed on purpose" in first
