"""Command-line flags declared once, on the config dataclass fields they fill.

A field declared with :func:`flag` carries its Megatron flag name, help text, choices, bounds and argparse
details in its metadata. :func:`add_flags` turns a dataclass into an argparse group, :func:`from_args` turns
parsed flags back into the dataclass's keyword arguments, and :func:`check_fields` (called from each
dataclass's ``__post_init__``) enforces the declared choices and bounds with the flag's name in the message. Fields
without ``flag`` metadata are derived values, never flags.

This module depends on nothing else in the package, so every layer (``fp8`` included) may declare flags.
"""

import argparse
import math
import types
import typing
from dataclasses import MISSING, Field, field, fields

# Bounds, as (low, high, low inclusive, high inclusive); None means unbounded on that side.
POSITIVE = (0, None, False, False)
NON_NEGATIVE = (0, None, True, False)
UNIT_INTERVAL = (0, 1, True, False)  # [0, 1): probabilities of dropping, Adam's betas
PROBABILITY = (0, 1, True, True)


def flag(default=MISSING, help: str = "", *, name: str | None = None, aliases: tuple = (),
         choices=None, bounds: tuple | None = None, nargs=None, action: str | None = None,
         metavar: str | None = None, group: str | None = None, negative: str | None = None,
         default_factory=MISSING) -> Field:
    """A dataclass field that is also a command-line flag (``--field-name`` unless ``name`` says otherwise).

    A switch that defaults to on may also be given a ``negative`` flag that turns it off (Megatron's
    ``--no-...`` form); both set the same field."""
    meta = {"help": help, "name": name, "aliases": tuple(aliases), "choices": choices, "bounds": bounds,
            "nargs": nargs, "action": action, "metavar": metavar, "group": group, "negative": negative}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"flag": meta})
    return field(default=default, metadata={"flag": meta})


def flag_name(f: Field) -> str:
    meta = f.metadata.get("flag")
    if meta is None:
        raise KeyError(f"field {f.name} is not a flag")
    return meta["name"] or "--" + f.name.replace("_", "-")


def dest(f: Field) -> str:
    return flag_name(f).lstrip("-").replace("-", "_")


def flag_fields(cls, group: str | None = None) -> list[Field]:
    """The fields of dataclass ``cls`` that are flags (optionally only those of one ``group``)."""
    return [f for f in fields(cls) if "flag" in f.metadata
            and (group is None or f.metadata["flag"]["group"] == group)]


def _base_type(annotation):
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``; ``list`` element type for lists."""
    if isinstance(annotation, (types.UnionType,)) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if typing.get_origin(annotation) in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (str,)
        return inner, True
    return annotation, False


def _default(f: Field):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def add_flags(parser: argparse.ArgumentParser, cls, title: str, group: str | None = None):
    """Add every flag of dataclass ``cls`` (or of one metadata ``group``) to an argparse group."""
    arg_group = parser.add_argument_group(title)
    for f in flag_fields(cls, group):
        meta = f.metadata["flag"]
        names = (flag_name(f), *meta["aliases"])
        kind, is_list = _base_type(f.type)
        default = _default(f)
        kwargs = {"dest": dest(f), "default": default, "help": meta["help"] or None}
        if meta["negative"] is not None:  # --x turns it on, --no-x off
            kwargs["action"] = "store_true"
            arg_group.add_argument(meta["negative"], dest=kwargs["dest"], action="store_false",
                                   help=f"turn off {names[0]}")
        elif meta["action"] is not None or kind is bool:
            kwargs["action"] = meta["action"] or ("store_false" if default else "store_true")
        else:
            kwargs["type"] = kind if kind in (int, float, str) else str
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["nargs"] is not None or is_list:
                kwargs["nargs"] = meta["nargs"] or "*"
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
        arg_group.add_argument(*names, **kwargs)
    return arg_group


def from_args(cls, args: argparse.Namespace, group: str | None = None) -> dict:
    """Keyword arguments for dataclass ``cls`` from parsed flags (only the flags the parser knows)."""
    return {f.name: getattr(args, dest(f)) for f in flag_fields(cls, group) if hasattr(args, dest(f))}


def check_fields(obj) -> None:
    """Enforce the choices, bounds and finiteness declared on ``obj``'s flag fields (for configs built in
    code as well as from the command line); errors name the flag."""
    for f in flag_fields(type(obj)):
        value, meta = getattr(obj, f.name), f.metadata["flag"]
        name = flag_name(f)
        if meta["choices"] is not None and value is not None and value not in meta["choices"]:
            raise ValueError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        bounds = meta["bounds"]
        if bounds is None:
            continue
        low, high, low_in, high_in = bounds
        too_low = low is not None and (value < low or (value == low and not low_in))
        too_high = high is not None and (value > high or (value == high and not high_in))
        if too_low or too_high:
            raise ValueError(f"{name} must be {_interval(bounds)}, got {value}")


def _interval(bounds: tuple) -> str:
    low, high, low_in, high_in = bounds
    if high is None:
        return "positive" if (low == 0 and not low_in) else (f">= {low}" if low_in else f"> {low}")
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
