"""Quantization statistics of the FP8 (and FP16-with-scale) tensors of a step (``--fp8-stats-interval``).

For one tensor ``x`` written with a power-of-two ``scale`` into ``dtype`` storage (the rule of
``reference.store``: ``cast(clamp(x * scale, -fmax, fmax))``) :func:`measure` returns additive counts:

- ``numel``, ``nonzero``: elements, and elements that are not exactly 0;
- ``underflow``: nonzero elements whose stored value is 0;
- ``saturated``: elements with ``|x * scale| > fmax`` (clamped at the format's maximum; an inf counts);
- ``err_sq``, ``norm_sq``: ``sum((x - dequant(quant(x)))^2)`` and ``sum(x^2)``, in float64;
- ``amax``: ``max |x|``; ``scale_exp``: ``log2(scale)`` (the smallest one for a per-row scale).

Counts of the same tensor merge by addition (micro-batches, TP shards, DP ranks), ``amax`` by max and
``scale_exp`` by min, so one small reduction per interval gives the whole tensor's figures.
:func:`summarize` turns counts into the reported figures: ``underflow`` (fraction of the nonzero
elements), ``saturation`` (fraction of all elements), ``rel_error`` (``||x - dq(q(x))|| / ||x||``).

Recording is off unless :data:`RECORDER` is started; every quantization point checks ``RECORDER.active``
first, so with statistics off no statistic is computed. This module knows no torch.distributed: the
reduction across ranks is the caller's (``megatron_fp8/stats_collector.py``).
"""

import math

import torch

from .formats import dtype_max

FIELDS = ("numel", "nonzero", "underflow", "saturated", "err_sq", "norm_sq", "amax", "scale_exp")
_SUMMED = FIELDS[:6]
ROLES = ("input", "weight", "grad_output", "wgrad", "exp_avg", "exp_avg_sq", "master", "dp_grad")


def measure(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The counts of :data:`FIELDS` (a float64 vector, no host sync) for ``x`` stored with ``scale``."""
    x = x.detach().float()
    scale = scale.detach().float().to(x.device)
    fmax = dtype_max(dtype)
    scaled = x * scale
    stored = scaled.clamp(-fmax, fmax).to(dtype).float()
    restored = stored / scale  # exact: the scale is a power of two
    nonzero = x != 0
    diff = (x - restored).double()
    xd = x.double()
    amax = x.abs().amax() if x.numel() else torch.zeros((), device=x.device)
    _, exp = torch.frexp(scale.reshape(-1).min())
    return torch.stack([
        torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
        nonzero.sum().double(),
        (nonzero & (stored == 0)).sum().double(),
        (scaled.abs() > fmax).sum().double(),
        (diff * diff).sum(),
        (xd * xd).sum(),
        amax.double(),
        (exp - 1).double(),
    ])


def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Counts of the union of two measurements of one tensor."""
    n = len(_SUMMED)
    return torch.cat([a[:n] + b[:n], torch.maximum(a[n:n + 1], b[n:n + 1]), torch.minimum(a[n + 1:], b[n + 1:])])


def merge_lists(a: list[float], b: list[float]) -> list[float]:
    """:func:`merge` on plain lists (after the counts left the device)."""
    n = len(_SUMMED)
    return [x + y for x, y in zip(a[:n], b[:n])] + [max(a[n], b[n]), min(a[n + 1], b[n + 1])]


def summarize(counts) -> dict:
    """The reported figures of a counts vector: amax, scale_exp, underflow, saturation, rel_error."""
    c = dict(zip(FIELDS, [float(v) for v in counts]))
    return {"amax": c["amax"], "scale_exp": int(c["scale_exp"]),
            "underflow": c["underflow"] / c["nonzero"] if c["nonzero"] else 0.0,
            "saturation": c["saturated"] / c["numel"] if c["numel"] else 0.0,
            "rel_error": math.sqrt(c["err_sq"] / c["norm_sq"]) if c["norm_sq"] > 0 else 0.0}


def role_of(name: str) -> str:
    """``decoder.layers.0.mlp.linear_fc1.weight.exp_avg`` -> ``exp_avg``."""
    return name.rsplit(".", 1)[-1]


class StatsRecorder:
    """Collects the counts of every tensor quantized between :meth:`start` and :meth:`stop`.

    ``names`` maps ``id()`` of parameters and of their ``main_grad`` objects to parameter names, so the
    weight-gradient and optimizer points can name what they quantize without carrying names around.
    """

    def __init__(self):
        self.active = False
        self.table: dict[str, torch.Tensor] = {}
        self.names: dict[int, str] = {}

    def start(self, names: dict[int, str] | None = None) -> None:
        self.table = {}
        if names is not None:
            self.names = names
        self.active = True

    def stop(self) -> dict[str, list[float]]:
        """Stop recording; the counts per tensor name as lists (one host transfer)."""
        self.active = False
        table, self.table = self.table, {}
        if not table:
            return {}
        rows = torch.stack([v.cpu() for v in table.values()]).tolist()
        return dict(zip(table, rows))

    def name_of(self, obj) -> str | None:
        return self.names.get(id(obj))

    def record(self, name: str, x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        counts = measure(x, scale, dtype)
        previous = self.table.get(name)
        self.table[name] = counts if previous is None else merge(previous, counts)


RECORDER = StatsRecorder()
