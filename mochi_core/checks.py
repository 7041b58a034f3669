"""Up-front argument checks of ``pipeline.generate`` and the command line.

They sit beside :func:`mochi_core.devices.check_device`, :func:`mochi_core.precision.check_compute_dtype` and
:func:`mochi_core.sampling.check_sampling_args`.

Each check raises :class:`~mochi_core.errors.InvalidInputError` naming the argument (``name``: ``memory_budget`` for
the Python API, ``--memory-budget`` for the CLI) and the allowed values, and does no expensive work, so a bad job
is refused before anything loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError
from .precision import parse_dtype
from .scalars import as_int

__all__ = [
    "check_callable",
    "check_model_arg",
    "check_positive_bytes",
    "check_storage_dtype",
]


def _label(name: str, value: Any) -> str:
    """``memory_budget=-5`` for API arguments, ``--crf 60`` for command-line options."""
    return f"{name} {value!r}" if name.startswith("-") else f"{name}={value!r}"


def check_storage_dtype(
    value: str | torch.dtype | None, *, name: str, quantized: tuple[str, ...] = ()
) -> torch.dtype | str | None:
    """A storage dtype name / torch dtype, one of ``quantized`` ("q8_0", ...) or None (keep the file's)."""
    if isinstance(value, str) and value.strip().lower() in quantized:
        return value.strip().lower()
    try:
        return parse_dtype(value, what=name)
    except InvalidInputError as exc:
        if not quantized:
            raise
        raise InvalidInputError(f"{exc}, {', '.join(quantized)}") from None


def check_positive_bytes(value: Any, *, name: str) -> int | None:
    """None, or a positive int number of bytes."""
    if value is None:
        return None
    message = f"{_label(name, value)} is not allowed: use a positive int number of bytes, or None"
    try:
        number = as_int(name, value)  # Python or numpy integers, one-element integer tensors
    except InvalidInputError:
        raise InvalidInputError(message) from None
    if number <= 0:
        raise InvalidInputError(message)
    return number


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
