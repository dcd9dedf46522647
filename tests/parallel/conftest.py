"""Shared, lazily computed runs: the single-process references (in this process) and one spawn per
layout (every level and model of the layout in the same gloo processes). Session-scoped, so each is
computed once however many tests read it."""

import pytest

from .harness import spawn
from .probe import run_probe
from .variants import model_config
from .workers import layout_worker

CURVE_STEPS = 10

# name: (tp, pp, sequence_parallel, runs); a run is (key, level, model variant, training steps), optionally
# with its own (tp, pp, sp): the 4-process spawn also serves a 4-stage pipeline, whose middle stages both
# receive and send in each direction.
LAYOUTS = {
    "TP2": (2, 1, False, [("off", "off", "gpt", CURVE_STEPS), ("O2", "O2", "gpt", CURVE_STEPS)]),
    "TP2+SP": (2, 1, True, [("off", "off", "gpt", CURVE_STEPS), ("O2", "O2", "gpt", CURVE_STEPS),
                            ("llama-off", "off", "llama", 0), ("llama-O2", "O2", "llama", 0),
                            ("gqa-off", "off", "gqa", 0), ("gqa-O2", "O2", "gqa", 0)]),
    "PP2": (1, 2, False, [("off", "off", "gpt", CURVE_STEPS), ("O2", "O2", "gpt", CURVE_STEPS),
                          ("many-micro-off", "off", "many-micro", 0), ("many-micro-O2", "O2", "many-micro", 0)]),
    "TP2xPP2+SP": (2, 2, True, [("off", "off", "gpt", CURVE_STEPS), ("O2", "O2", "gpt", CURVE_STEPS),
                                ("llama-O2", "O2", "llama", 0), ("gqa-O3", "O3", "gqa", 0),
                                ("first-last-O2", "O2", "first-last", 0), ("first-last-O3", "O3", "first-last", 0),
                                ("pp4-off", "off", "deep-many-micro", 0, (1, 4, False)),
                                ("pp4-O2", "O2", "deep-many-micro", 0, (1, 4, False))]),
}


class Runs:
    def __init__(self):
        self._cache = {}

    def _get(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def reference(self, variant: str, level: str, pp_boundaries: int = 1) -> dict:
        """The single-process run; with ``pp_boundaries`` > 1 its hidden states (and their gradients) are
        rounded to BF16 where that many pipeline stages would exchange them."""
        steps = CURVE_STEPS if (variant == "gpt" and pp_boundaries == 1) else 0
        return self._get(("ref", variant, level, pp_boundaries),
                         lambda: run_probe(model_config(variant, level), steps=steps, emulate_pp=pp_boundaries))

    def layout(self, name: str) -> list[dict]:
        """Every rank's results of the layout's spawn: ``[{run key: probe results}, ...]``."""
        tp, pp, sp, runs = LAYOUTS[name]
        return self._get(("layout", name), lambda: spawn(layout_worker, tp * pp, tp, pp, sp, runs))


@pytest.fixture(scope="session")
def runs() -> Runs:
    return Runs()
