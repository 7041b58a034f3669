"""Checks of the objects the API is handed: tensors, callbacks, models as paths or loaded objects.

Values a user chooses are resolved by :mod:`mochi_core.options`; these checks are about everything else an entry
point takes. Each raises :class:`~mochi_core.errors.InvalidInputError` naming the argument and what it must be.
Tensors are checked where they enter the pack (``sample``, ``VAE.decode`` / ``encode``, the latent helpers);
forward passes only assert invariants, without host syncs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import InvalidInputError

__all__ = [
    "check_callable",
    "check_instance",
    "check_model_arg",
    "check_tensor",
]

#: A dimension's rule in :func:`check_tensor`: an exact size, one of several sizes, or None (any size >= 1).
Size = int | tuple[int, ...] | None


def _size_text(size: Size) -> str:
    if size is None:
        return "*"
    return str(size) if isinstance(size, int) else " or ".join(map(str, size))


def _tensor_problem(value: Any, sizes: tuple[Size, ...], kind: str, finite: bool) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"got {type(value).__name__}"
    shape = tuple(value.shape)
    fits = len(shape) == len(sizes) and all(
        n >= 1 if s is None else n == s if isinstance(s, int) else n in s for n, s in zip(shape, sizes)
    )
    if not fits:
        return f"got shape {shape}"
    if (kind == "floating") != value.is_floating_point() or value.is_complex():
        return f"got dtype {value.dtype}"
    if finite and not bool(torch.isfinite(value).all()):  # a host sync: entry points only, never per step
        return "it contains NaN or inf values"
    return None


def check_tensor(
    name: str, value: Any, sizes: tuple[Size, ...], *, layout: str, kind: str = "floating", finite: bool = False
) -> torch.Tensor:
    """``value`` is a torch tensor with one size per entry of ``sizes`` (:data:`Size`), of the ``kind``
    "floating" or "mask" (bool or integer), and without NaN / inf when ``finite``. ``layout`` names the
    dimensions in the message, e.g. ``start_latent must be a floating tensor (B, 12, T, H, W) = (1, 12, 2, 4, 6);
    got shape (2, 12, 2, 4, 6)``."""
    problem = _tensor_problem(value, sizes, kind, finite)
    if problem is not None:
        what = "floating" if kind == "floating" else "bool (or integer 0/1)"
        want = "(" + ", ".join(_size_text(s) for s in sizes) + ")"
        raise InvalidInputError(f"{name} must be a {what} tensor {layout} = {want}; {problem}")
    return value


def check_callable(fn: Any, *, name: str, what: str = "callable", optional: bool = True) -> Callable[..., Any] | None:
    """A callable, or None when ``optional``; ``what`` says what it must be in the message (e.g. "a callable
    model (load_dit)")."""
    if not callable(fn) and not (optional and fn is None):
        none = " or None" if optional else ""
        raise InvalidInputError(f"{name} must be {what}{none}; got {type(fn).__name__}")
    return fn


def check_instance(name: str, value: Any, cls: type, hint: str, *, optional: bool = True) -> Any:
    """``value`` when it is a ``cls`` (or None when ``optional``); refuses anything else, saying where one comes
    from (``hint``)."""
    if not isinstance(value, cls) and not (optional and value is None):
        none = " or None" if optional else ""
        raise InvalidInputError(f"{name} must be a {cls.__name__} ({hint}){none}; got {type(value).__name__}")
    return value


def check_model_arg(value: Any, *, name: str, method: str | None, loader: str) -> bool:
    """A model argument is a path that exists (returns True: the caller loads and owns it) or a loaded object
    (callable, or with ``method``; returns False)."""
    is_path = isinstance(value, (str, os.PathLike))
    if is_path:
        ok = Path(value).expanduser().exists()
        problem = f"{name}={os.fspath(value)!r}: no such file or folder"
    else:
        ok = callable(value) if method is None else callable(getattr(value, method, None))
        problem = f"{name} must be a path or a model loaded with {loader}; got {type(value).__name__}"
    if not ok:
        raise InvalidInputError(problem)
    return is_path
