"""Validation of :func:`mochi_core.memory.planning.planner.plan`'s arguments: every bad value is refused with an
:class:`~mochi_core.errors.InvalidInputError` that names the argument and what is allowed, before any estimate runs.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidInputError
from ...units import parse_bytes

__all__ = [
    "check_frame_size",
    "check_plan_device",
    "check_reserve",
    "check_decode_tile",
]


def check_frame_size(width: Any, height: Any, frames: Any) -> tuple[int, int, int]:
    """Mochi sizes, by the one rule of every entry point (:func:`mochi_core.options.check_size`)."""
    from ...options import check_size

    return check_size(width, height, frames)


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


def check_decode_tile(value: Any) -> Any:
    """None, or a forced decode tile: a ``TilePlan``, an int (latent frames per chunk, whole frames) or
    (frames, height, width[, overlap]) in latent units. Returns a ``TilePlan``."""
    if value is None:
        return None
    from ...vae.tiling import TilePlan

    try:
        return TilePlan.parse(value)
    except InvalidInputError as exc:
        raise InvalidInputError(f"decode_tile={value!r} is not a tile: {exc}") from None
