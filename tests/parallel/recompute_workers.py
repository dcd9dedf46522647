"""Worker for the TP2 recomputation test: each rank trains two steps with and without recomputation under
sequence parallelism (FP8 all-gathers and TP-stream dropout inside the recomputed layers) and compares."""

from megatron_fp8.parallel.groups import build_state

from ..model.test_recompute import RECOMPUTE, _assert_same, _config, _run


def recompute_worker(rank: int, world: int, level: str, kinds: tuple) -> list:
    def run(**recompute):
        config = _config(level, "delayed", tp=world, **recompute)
        return _run(config, pstate=build_state(config, rank, world, config.validate_layout(world)))

    plain, checked = run(), []
    for kind in kinds:
        _assert_same(plain, run(**RECOMPUTE[kind]))  # raises on the first difference (named)
        checked.append(kind)
    return checked
