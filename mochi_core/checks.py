"""Up-front argument checks of ``pipeline.generate`` and the command line.

Values a user chooses are resolved by :mod:`mochi_core.options`; these two checks are about the objects
``generate`` is handed (callbacks, models as paths or loaded objects). Each raises
:class:`~mochi_core.errors.InvalidInputError` naming the argument, and does no expensive work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "check_callable",
    "check_model_arg",
]


def check_callable(fn: Any, *, name: str) -> Callable[..., Any] | None:
    """None or a callable."""
    if fn is not None and not callable(fn):
        raise InvalidInputError(f"{name} must be callable or None; got {type(fn).__name__}")
    return fn


def check_model_arg(value: Any, *, name: str, method: str | None, loader: str) -> bool:
    """A model argument is a path that exists (returns True: the caller loads and owns it) or a loaded object
    (callable, or with ``method``; returns False)."""
    if isinstance(value, (str, os.PathLike)):
        if not Path(value).expanduser().exists():
            raise InvalidInputError(f"{name}={os.fspath(value)!r}: no such file or folder")
        return True
    ok = callable(value) if method is None else callable(getattr(value, method, None))
    if not ok:
        raise InvalidInputError(f"{name} must be a path or a model loaded with {loader}; got {type(value).__name__}")
    return False
