"""Spatiotemporal skip guidance (STG) and the sampling presets.

STG adds a third DiT pass per step: the conditional pass with some blocks skipped (passed through unchanged),
and pushes the prediction away from it:

    v = v_uncond + cfg · (v_cond − v_uncond) + stg · (v_cond − v_perturbed)

(without an unconditional pass, cfg = 1: v = v_cond + stg · (v_cond − v_perturbed)). The optional rescale r
(0.7 in the published recipe) pulls the spread of v back towards the conditional prediction's:
v ← v · (r · std(v_cond) / std(v) + 1 − r), the standard deviations taken per sample over (C, T, H, W).
Block 34 of 48 and scale 1 are the published defaults for Mochi. ``stg_scale`` 0 runs no perturbed pass and
leaves the sampler's arithmetic untouched.

Presets set the sampling schedule as a whole: ``default`` (the caller's steps and cfg, Genmo's schedule) and
``fast`` (FastMochi, Genmo's distilled model: 8 steps, cfg 1.5, linear-quadratic schedule with
``threshold_noise`` 0.1 and 6 linear steps; meant for the FastMochi weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidInputError
from .scalars import as_int, as_real

__all__ = [
    "DEFAULT_STG_BLOCKS",
    "PRESETS",
    "Preset",
    "apply_preset",
    "check_preset",
    "check_stg",
    "check_stg_blocks_for",
    "stg_combine",
]

DEFAULT_STG_BLOCKS = (34,)


@dataclass(frozen=True)
class Preset:
    """Sampling settings a preset fixes (None: the caller's)."""

    steps: int | None = None
    cfg: float | None = None
    threshold_noise: float | None = None
    linear_steps: int | None = None


PRESETS: dict[str, Preset] = {
    "default": Preset(),
    "fast": Preset(steps=8, cfg=1.5, threshold_noise=0.1, linear_steps=6),
}


def check_preset(name: object) -> Preset:
    """The :class:`Preset` called ``name`` ('default' or 'fast')."""
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in PRESETS:
        raise InvalidInputError(f"preset={name!r} is not allowed; use one of: {', '.join(PRESETS)}")
    return PRESETS[key]


def apply_preset(
    preset: Any, steps: Any, cfg: Any, threshold_noise: Any, linear_steps: Any, sigmas: Any, cfg_schedule: Any
) -> tuple[str, Any, Any, Any, Any]:
    """(preset name, steps, cfg, threshold_noise, linear_steps) after ``preset``. 'default' keeps the caller's
    (``steps`` is then required); another preset sets them and refuses them (and ``sigmas`` / ``cfg_schedule``)
    when given, naming the first one (``threshold_noise`` at its default 0.025 counts as not given)."""
    p = check_preset(preset)
    name = str(preset).strip().lower()
    if p.steps is None:
        if steps is None:
            raise InvalidInputError("steps is required (an integer >= 1), or use preset='fast'")
        return name, steps, cfg, threshold_noise, linear_steps
    given = {"steps": steps, "cfg": cfg, "sigmas": sigmas, "cfg_schedule": cfg_schedule}
    given = {k: v for k, v in given.items() if v is not None}
    if threshold_noise not in (None, 0.025, p.threshold_noise):
        given["threshold_noise"] = threshold_noise
    if linear_steps not in (None, p.linear_steps):
        given["linear_steps"] = linear_steps
    if given:
        first = next(iter(given))
        raise InvalidInputError(
            f"preset={preset!r} sets steps={p.steps}, cfg={p.cfg}, threshold_noise={p.threshold_noise}, "
            f"linear_steps={p.linear_steps}; leave {first} out, or use preset='default' to choose it"
        )
    return name, p.steps, p.cfg, p.threshold_noise, p.linear_steps


def parse_blocks(value: Any) -> tuple[int, ...]:
    """Block indices from a sequence of integers or a text such as '34' or '30, 34' (sorted, no duplicates)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
        try:
            items: Sequence[Any] = [int(p) for p in parts]
        except ValueError:
            raise InvalidInputError(
                f"stg_blocks={value!r} is not allowed: give block indices separated by commas, e.g. '34' or '30,34'"
            ) from None
    elif isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.dim() == 1):
        items = [as_int("stg_blocks", v, what="block indices (integers >= 0)") for v in value]
    else:
        items = [as_int("stg_blocks", value, what="block indices (integers >= 0)")]
    if not items or any(i < 0 for i in items):
        raise InvalidInputError(f"stg_blocks={value!r} is not allowed: give at least one block index >= 0, e.g. 34")
    return tuple(sorted(set(int(i) for i in items)))


def check_stg(scale: object, blocks: object, rescale: object) -> tuple[float, tuple[int, ...], float]:
    """``stg_scale`` finite >= 0 (0 = off), ``stg_blocks`` (see :func:`parse_blocks`), ``stg_rescale`` in [0, 1]
    (0 = off). Returns them checked; the block range is checked against a model by :func:`check_stg_blocks_for`."""
    s = as_real("stg_scale", scale, low=0.0, what="a finite number >= 0 (0 = off, 1 typical)")
    r = as_real("stg_rescale", rescale, low=0.0, high=1.0, what="a number in [0, 1] (0 = off, 0.7 typical)")
    b = parse_blocks(DEFAULT_STG_BLOCKS if blocks is None else blocks)
    return s, b, r


def check_stg_blocks_for(blocks: tuple[int, ...], depth: int) -> None:
    """Refuse block indices the DiT does not have (``depth`` blocks: 0 .. depth − 1)."""
    bad = [i for i in blocks if i >= depth]
    if bad:
        raise InvalidInputError(
            f"stg_blocks={list(blocks)} is not allowed for this DiT: it has {depth} blocks (0..{depth - 1}); "
            f"block {bad[0]} does not exist"
        )


def stg_combine(
    pred: torch.Tensor, out_cond: torch.Tensor, out_perturbed: torch.Tensor, scale: float, rescale: float
) -> torch.Tensor:
    """pred + scale · (out_cond − out_perturbed), then the optional rescale (module docstring). (B, C, T, H, W)
    float32 each; returns a new tensor."""
    v = pred + scale * (out_cond - out_perturbed)
    if rescale > 0.0:
        dims = tuple(range(1, v.dim()))
        factor = out_cond.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True)
        v = v * (rescale * factor + (1.0 - rescale))
    return v
