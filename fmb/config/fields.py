"""What every config section builds its fields and checks from: `opt` (a field with a default
and a doc), Literal choice checks, number range checks with the range in the message."""
from __future__ import annotations

import math
import typing
from dataclasses import field, fields
from typing import Literal

from fmb.errors import FmbError, choice_error

MAX_IMAGE_SIZE = 2048  # past this a single image's activations alone take gigabytes
MAX_RANDAUGMENT_MAGNITUDE = 30.0  # the official RandAugment level runs 0..30 (10 = the ops' base range)


def opt(default, doc: str):
    """A field with a default and a one-line doc (mutable defaults are copied per instance)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def check_choices(section, prefix: str) -> None:
    """Literal fields hold one of their choices (OmegaConf checks this on merge; a section
    built directly in Python is checked here)."""
    hints = typing.get_type_hints(type(section))
    for f in fields(section):
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        if choices and getattr(section, f.name) not in choices:
            raise choice_error(f"{prefix}.{f.name}", getattr(section, f.name), choices)


def _bad(key: str, value, expected: str) -> FmbError:
    return FmbError(f"invalid {key}={value!r}; expected {expected}")


def check_number(key: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 expected: str = "") -> None:
    """NaN/inf and out-of-range numbers fail with the range in the message; None passes."""
    if value is None:
        return
    if not math.isfinite(value):
        raise _bad(key, value, expected or "a finite number")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        raise _bad(key, value, expected or f"a number in {span}")
