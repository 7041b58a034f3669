"""Scalar arguments as callers really pass them: Python numbers, numpy scalars, 0-d tensors.

Each helper returns a plain Python value (so summaries stay JSON-serializable) or raises
:class:`~mochi_core.errors.InvalidInputError` naming the argument. Booleans are never numbers here, and strings
are never parsed.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from .errors import InvalidInputError

__all__ = ["as_bool", "as_int", "as_int_in", "as_real"]


def _scalar(value: Any) -> Any:
    """A one-element tensor / array as its Python value; anything else unchanged."""
    if hasattr(value, "numel") and hasattr(value, "item"):  # torch tensor
        return value.item() if value.numel() == 1 else value
    if hasattr(value, "size") and hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy
        return value.item()
    return value


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"


def _range_text(low: float | None, high: float | None, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in ({low:g}, {high:g}]" if low_open else f"from {low:g} to {high:g}"
    if low is not None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    return f"<= {high:g}" if high is not None else ""


def as_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    what: str | None = None,
    message: str | None = None,
) -> int:
    """An integer (int, numpy integer, one-element integer tensor) in ``[low, high]`` as ``int``; floats and bools
    are refused. ``what`` replaces "an integer from low to high" in the message, ``message`` the whole message."""
    v = _scalar(value)
    try:
        n = None if _is_bool(v) else operator.index(v)
    except TypeError:
        n = None
    if n is None or (low is not None and n < low) or (high is not None and n > high):
        what = what or f"an integer {_range_text(low, high)}".rstrip()
        raise InvalidInputError(message or f"{name}={value!r} is not allowed: {name} must be {what}")
    return n


def as_int_in(name: str, value: Any, *, low: int, high: int | None = None, what: str | None = None) -> int:
    """:func:`as_int` with a lower bound (the name reads better where a range is the point)."""
    return as_int(name, value, low=low, high=high, what=what)


def as_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str | None = None,
) -> float:
    """A finite real number (int, float, numpy scalar, one-element tensor) as ``float``, within ``low`` (excluded
    when ``low_open``) and ``high``; bools, NaN and infinities are refused. ``what`` replaces "a finite number
    >= low" in the message."""
    v = _scalar(value)
    real = not _is_bool(v) and isinstance(v, numbers.Real)
    f = float(v) if real else math.nan
    below = low is not None and (f <= low if low_open else f < low)
    above = high is not None and (f >= high if high_open else f > high)
    if not math.isfinite(f) or below or above:
        what = what or f"a finite number {_range_text(low, high, low_open)}".rstrip()
        verdict = "is not allowed:" if real else "is not a number;"
        raise InvalidInputError(f"{name}={value!r} {verdict} {name} must be {what}")
    return f


def as_bool(name: str, value: Any, *, none: str = "") -> bool | None:
    """True / False, numpy bools, and the integers 0 / 1 as ``bool``; anything else is refused (a string "no"
    would otherwise be True). ``none``: None is allowed too and means this (e.g. "let the planner choose")."""
    v = _scalar(value)
    if v is None and none:
        return None
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(int(v))
    allowed = f"True, False or None ({none})" if none else "True or False"
    raise InvalidInputError(f"{name}={value!r} is not allowed: use {allowed}")
