"""Validation of :func:`mochi_core.memory.planner.plan`'s arguments: every bad value is refused with an
:class:`~mochi_core.errors.InvalidInputError` that names the argument and what is allowed, before any estimate runs.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError
from .units import parse_bytes

__all__ = [
    "check_int",
    "check_optional_bool",
    "check_bool",
    "check_frame_size",
    "check_plan_device",
    "check_reserve",
    "check_instance",
    "check_decode_tile",
]


def check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """An ``int`` (not a bool) in ``[low, high]``."""
    where = f"from {low} to {high}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name}={value!r} must be an integer {where}")
    if value < low or (high is not None and value > high):
        raise InvalidInputError(f"{name}={value} is out of range; it must be an integer {where}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (no strings, no numbers: ``"no"`` would read as true)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}={value!r} must be True or False")
    return value


def check_optional_bool(name: str, value: Any) -> bool | None:
    """``True``, ``False`` or ``None`` (= let the planner choose)."""
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}={value!r} must be True, False or None (let the planner choose)")
    return value


def check_frame_size(width: Any, height: Any, frames: Any) -> tuple[int, int, int]:
    """Mochi sizes (mochi-spec.md §3.6): width and height positive multiples of 16, frames 6k+1."""
    for name, v in (("width", width), ("height", height), ("frames", frames)):
        check_int(name, v, low=1)
    if width % 16 or height % 16:
        raise InvalidInputError(f"width and height must be multiples of 16; got {width}x{height}")
    if (frames - 1) % 6:
        raise InvalidInputError(f"frames={frames} is not allowed: frames must be 6k+1 (e.g. 7, 31, 85, 163)")
    return width, height, frames


def check_plan_device(device: Any) -> str:
    """'cuda' or 'cpu' (a device index or a ``torch.device`` is accepted; the planner plans one device)."""
    import torch

    if isinstance(device, torch.device):
        kind = device.type
    elif isinstance(device, str):
        kind = device.split(":")[0].strip().lower()
    else:
        kind = None
    if kind not in ("cuda", "cpu"):
        raise InvalidInputError(f"device={device!r} is not supported by the planner; allowed: cuda, cpu")
    return kind


def check_reserve(value: Any, device: str) -> int:
    """Bytes kept free on the device (a byte count or a size like '768MiB'); default 768 MiB on CUDA, 0 on CPU."""
    if value is None:
        return 768 * 2**20 if device == "cuda" else 0
    return parse_bytes(value, what="reserve_bytes", allow_zero=True)


def check_instance(name: str, value: Any, cls: type, hint: str) -> Any:
    """``value`` when it is None or a ``cls``; refuses anything else."""
    if value is not None and not isinstance(value, cls):
        raise InvalidInputError(f"{name} must be a {cls.__name__} ({hint}) or None; got {type(value).__name__}")
    return value


def check_decode_tile(value: Any) -> Any:
    """None, or a forced decode tile: a ``TilePlan``, an int (latent frames per chunk, whole frames) or
    (frames, height, width[, overlap]) in latent units. Returns a ``TilePlan``."""
    if value is None:
        return None
    from ..vae.tiling import TilePlan

    try:
        return TilePlan.parse(value)
    except InvalidInputError as exc:
        raise InvalidInputError(f"decode_tile={value!r} is not a tile: {exc}") from None
