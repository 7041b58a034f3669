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


def as_int(name: str, value: Any, *, what: str = "an integer") -> int:
    """An integer (int, numpy integer, one-element integer tensor) as ``int``; floats and bools are refused."""
    v = _scalar(value)
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        raise InvalidInputError(f"{name}={value!r} is not allowed: {name} must be {what}")
    try:
        return operator.index(v)
    except TypeError:
        raise InvalidInputError(f"{name}={value!r} is not allowed: {name} must be {what}") from None


def as_int_in(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """An integer (as :func:`as_int` takes it) in ``[low, high]`` (no upper bound when ``high`` is None)."""
    where = f"from {low} to {high}" if high is not None else f">= {low}"
    v = as_int(name, value, what=f"an integer {where}")
    if v < low or (high is not None and v > high):
        raise InvalidInputError(f"{name}={value!r} is not allowed: {name} must be an integer {where}")
    return v


def as_real(name: str, value: Any, *, what: str = "a finite number") -> float:
    """A finite real number (int, float, numpy scalar, one-element tensor) as ``float``; bools are refused."""
    v = _scalar(value)
    if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real):
        raise InvalidInputError(f"{name}={value!r} is not a number; {name} must be {what}")
    f = float(v)
    if not math.isfinite(f):
        raise InvalidInputError(f"{name}={value!r} is not allowed: {name} must be {what}")
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
