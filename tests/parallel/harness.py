"""The tests' process launcher: megatron_fp8.parallel.local_spawn (shared with bench/)."""

from megatron_fp8.parallel.local_spawn import WorkerError, free_port, spawn  # noqa: F401
