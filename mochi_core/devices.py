"""Validate a user's ``device`` argument before any work, with a message that names the allowed values.

``torch.device("gpu")`` raises a bare RuntimeError, and ``"cuda"`` on a machine without CUDA only fails deep inside
the first ``.to(device)``; :func:`check_device` turns both into an :class:`~mochi_core.errors.InvalidInputError`.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError

__all__ = ["available_devices", "check_device"]


def available_devices() -> list[str]:
    """Device names usable on this machine: always ``cpu``; ``cuda`` and ``cuda:N`` when CUDA works; ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def _backend_available(kind: str) -> bool:
    """Whether another torch backend (xpu, npu, ...) reports a usable device; unknown kinds are not usable."""
    backend = getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    return bool(is_available()) if callable(is_available) else False


def check_device(device: str | int | torch.device, *, what: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` usable here, or :class:`InvalidInputError` naming ``what`` and the allowed
    values (no model is touched)."""
    allowed = ", ".join(available_devices())
    dev, problem = _device(device, what)
    if problem is None and dev is not None:
        problem = _unusable(dev, what)
    if problem is not None:
        raise InvalidInputError(f"{problem}; allowed: {allowed}")
    assert dev is not None
    return dev


def _device(device: object, what: str) -> tuple[torch.device | None, str | None]:
    """``device`` as a ``torch.device``, or what is wrong with it."""
    if isinstance(device, torch.device):
        return device, None
    if not isinstance(device, (str, int)) or isinstance(device, bool):
        return None, f"{what} must be a device name or torch.device; got {type(device).__name__}"
    try:
        return torch.device(device.strip().lower() if isinstance(device, str) else device), None
    except (RuntimeError, ValueError):
        hint = " ('gpu' is spelled 'cuda')" if str(device).strip().lower().startswith("gpu") else ""
        return None, f"{what}={device!r} is not a device{hint}"


def _unusable(dev: torch.device, what: str = "device") -> str | None:
    """Why ``dev`` cannot be used on this machine (None: it can)."""
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"{what}={str(dev)!r} but CUDA is not available here (no NVIDIA GPU found, or torch built without CUDA)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"{what}={str(dev)!r} but only {count} CUDA device(s) exist"
        return None
    usable = torch.backends.mps.is_available() if dev.type == "mps" else _backend_available(dev.type)
    return None if usable else f"{what}={str(dev)!r} is not usable on this machine"
