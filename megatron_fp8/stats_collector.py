"""``--fp8-stats-interval N``: the FP8 statistics of every N-th iteration, reduced, logged and warned about.

On a statistics iteration the recorder of ``fp8/stats.py`` is on; every quantization point adds the
counts of what it casts under ``<parameter or layer>.<role>`` (layout-free names, as in checkpoints).
After the step one ``all_gather_object`` over all ranks merges the counts (TP shards and DP ranks of a
tensor add up; pipeline stages contribute their own tensors), so every figure describes the whole
tensor. On other iterations, and always with N = 0, nothing is recorded and nothing is communicated.
"""

from contextlib import contextmanager

from .checkpoint.names import global_name
from .fp8.stats import RECORDER, merge_lists, role_of, summarize
from .parallel import comm

FIGURES = ("underflow", "saturation", "rel_error")


class Fp8StatsCollector:
    def __init__(self, model, interval: int, pstate, num_layers: int, tied: bool = False,
                 warn_underflow: float | None = None, warn_saturation: float | None = None, printer=print):
        self.model, self.interval, self.pstate = model, interval, pstate
        self.num_layers, self.tied = num_layers, tied
        self.warn = {"underflow": warn_underflow, "saturation": warn_saturation}
        self.print = printer
        self._latest: tuple[int, dict] | None = None

    @classmethod
    def for_trainer(cls, trainer, printer=print) -> "Fp8StatsCollector":
        t, m = trainer.config.training, trainer.config.model
        return cls(trainer.model, t.fp8_stats_interval, trainer.pstate, m.num_layers,
                   not m.untie_embeddings_and_output_weights,
                   t.fp8_stats_warn_underflow, t.fp8_stats_warn_saturation, printer)

    def _global(self, local: str) -> str | None:
        return global_name(local, self.pstate, self.num_layers, self.tied)

    def _names(self) -> dict[int, str]:
        """Name every FP8 linear's quantizers, and map parameters (and their main_grad) to global names."""
        for local, module in self.model.named_modules():
            state = getattr(module, "fp8_state", None)
            if state is not None and hasattr(state, "set_stats_name"):
                state.set_stats_name(self._global(local) or local)
        names = {}
        for local, p in self.model.named_parameters():
            name = self._global(local)
            if name is None:
                continue
            names[id(p)] = name
            if getattr(p, "main_grad", None) is not None:
                names[id(p.main_grad)] = name
        return names

    def due(self, iteration: int) -> bool:
        return self.interval > 0 and iteration % self.interval == 0

    @contextmanager
    def iteration(self, iteration: int):
        """Wrap one training iteration: records when it is a statistics iteration, else does nothing."""
        if not self.due(iteration):
            yield
            return
        RECORDER.start(self._names())
        try:
            yield
        except BaseException:
            RECORDER.stop()
            raise
        figures = {name: summarize(c) for name, c in sorted(self._reduce(RECORDER.stop()).items())}
        self._latest = (iteration, figures)
        self._warn(iteration, figures)

    def _reduce(self, local: dict[str, list[float]]) -> dict[str, list[float]]:
        if self.pstate.world_size == 1:
            return local
        merged: dict[str, list[float]] = {}
        for table in comm.all_gather_object(local):  # the one collective of a statistics iteration
            for name, counts in table.items():
                merged[name] = counts if name not in merged else merge_lists(merged[name], counts)
        return merged

    def _warn(self, iteration: int, figures: dict) -> None:
        for key, limit in self.warn.items():
            if limit is None:
                continue
            flag = f"--fp8-stats-warn-{key}"
            for name, f in figures.items():
                if f[key] > limit:
                    self.print(f"WARNING: iteration {iteration}: FP8 tensor {name}: {key} {f[key]:.4%} exceeds "
                               f"{flag} {limit:g} (amax {f['amax']:.3e}, scale 2^{f['scale_exp']})")

    def take(self) -> dict:
        """The newest statistics not yet logged, as log-record fields (empty when there are none)."""
        if self._latest is None:
            return {}
        (iteration, figures), self._latest = self._latest, None
        return {"fp8_stats_iteration": iteration, "fp8_stats": figures}


def worst_per_role(figures: dict) -> dict:
    """``{role: {figure: (value, tensor name)}}``: the worst tensor of each role for each figure."""
    out: dict = {}
    for name, f in figures.items():
        role = out.setdefault(role_of(name), {})
        for key in FIGURES:
            if key not in role or f[key] > role[key][0]:
                role[key] = (f[key], name)
    return out


def log_line_part(figures: dict) -> str:
    """The log line's summary: per role, the worst underflow / saturation / relative error."""
    parts = [f"{role} {w['underflow'][0]:.2%}/{w['saturation'][0]:.2%}/{w['rel_error'][0]:.2e}"
             for role, w in sorted(worst_per_role(figures).items())]
    return " fp8 stats (worst underflow/saturation/rel error per role): " + ", ".join(parts) + " |"


def tensorboard_scalars(figures: dict) -> dict[str, float]:
    """``fp8-stats/<role>/<figure>``: the worst tensor's value, one curve per role and figure."""
    return {f"fp8-stats/{role}/{key}": value for role, w in worst_per_role(figures).items()
            for key, (value, _) in w.items()}
