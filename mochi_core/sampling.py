"""Linear-quadratic sigma schedule, latent noise and the CFG Euler flow-matching sampler of Mochi 1.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (``linear_quadratic_schedule``,
``sample_model``); mochi-spec.md §3. Conventions:

- noisy latent at level sigma: z = (1 - sigma) x0 + sigma eps (sigma = 1 is pure noise), DiT (normalized) space;
- the DiT returns v = x0 - eps; CFG: v = v_uncond + cfg_i (v_cond - v_uncond) in float32;
- Euler step: z <- z + (sigma_i - sigma_{i+1}) v, the difference taken in float64 from the Python schedule and
  applied as a float32 scalar; the DiT receives sigma_i as float32 (bit-exact with the official loop on CPU).

Differences from the official code, on purpose:
- ``linear_quadratic_schedule(1)`` returns ``[1.0, 0.0]`` (ComfyUI's rule); the official function raises
  ZeroDivisionError for one step;
- cond and uncond run as ONE DiT call of batch 2 by default (``batch_cfg=True``): weight casting dominates CPU,
  fp8 and offloaded runs, so one pass over the weights per step instead of two. The official single-GPU path runs
  them separately (``batch_cfg=False`` here); the two agree within ~1e-6 (golden README §1, case_c);
- noise comes from a CPU generator (as ComfyUI and kijai do), so a seed does not reproduce Genmo's CUDA draw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from .errors import InvalidInputError, MochiInterrupted

__all__ = [
    "LATENT_CHANNELS",
    "linear_quadratic_schedule",
    "latent_shape",
    "make_noise",
    "sample",
    "validate_size",
    "validate_sigmas",
    "nearest_frame_counts",
]

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 12
Conditioning = tuple[torch.Tensor, torch.Tensor]


class DiTLike(Protocol):
    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, t5_feat: torch.Tensor, t5_mask: torch.Tensor
    ) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def nearest_frame_counts(frames: int) -> tuple[int, int]:
    """The valid counts (6k + 1) just below and just above ``frames`` (both 1 and 7 below 1)."""
    lower = 6 * ((max(int(frames), 1) - 1) // 6) + 1
    return lower, lower + 6


def validate_size(frames: int, height: int, width: int) -> None:
    """Refuse a video size the DiT and VAE cannot take (frames 6k+1, height and width multiples of 16)."""
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    if frames < 1 or (frames - 1) % 6:
        lo, hi = nearest_frame_counts(frames)
        near = f"{lo} or {hi}" if frames > 1 else f"{lo}"
        raise InvalidInputError(
            f"frames={frames} is not allowed: Mochi needs 6k+1 frames (1, 7, 13, ..., 163); nearest valid counts: {near}"
        )
    for name, value in (("height", height), ("width", width)):
        if value < 16 or value % 16:
            lo = max(16, value // 16 * 16)
            raise InvalidInputError(
                f"{name}={value} is not allowed: it must be a positive multiple of 16 (e.g. {lo} or {lo + 16})"
            )


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T, H, W) = (12, (frames - 1) / 6 + 1, height / 8, width / 8) of a video size (validated)."""
    validate_size(frames, height, width)
    return (LATENT_CHANNELS, (frames - 1) // 6 + 1, height // 8, width // 8)


def validate_sigmas(sigmas: Sequence[float], steps: int | None = None) -> list[float]:
    """A sigma list must hold steps + 1 finite values in (0, 1] ... 0, strictly decreasing, ending at 0."""
    try:
        values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"sigmas must be a list of numbers ({exc})") from exc
    if len(values) < 2:
        raise InvalidInputError(f"sigmas needs at least 2 entries (steps + 1), got {len(values)}")
    if steps is not None and len(values) != steps + 1:
        raise InvalidInputError(
            f"sigmas has {len(values)} entries; with steps={steps} it must have steps + 1 = {steps + 1}"
        )
    if values[-1] != 0.0:
        raise InvalidInputError(f"sigmas must end at 0.0, got {values[-1]}")
    if not (0.0 < values[0] <= 1.0):
        raise InvalidInputError(f"sigmas must start in (0, 1], got {values[0]}")
    for i in range(len(values) - 1):
        if not values[i] > values[i + 1]:
            raise InvalidInputError(
                f"sigmas must be strictly decreasing to 0; entry {i} ({values[i]}) <= entry {i + 1} ({values[i + 1]})"
            )
    return values


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps={steps!r} is not allowed: steps must be an integer >= 1")


# ----------------------------------------------------------------------------------------------
# Schedule and noise
# ----------------------------------------------------------------------------------------------


def linear_quadratic_schedule(
    steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> list[float]:
    """steps + 1 sigmas from 1.0 down to 0.0 (mochi-spec.md §3.2), as Python floats (float64).

    With u = 1 - sigma: u_i = i * tau / L for i < L (L = ``linear_steps``, default steps // 2), then the quadratic
    a i^2 + b i + c through (L, tau) and (steps, 1). ``steps == 1`` gives [1.0, 0.0].
    """
    _check_steps(steps)
    tau = float(threshold_noise)
    if not (0.0 < tau < 1.0):
        raise InvalidInputError(f"threshold_noise={threshold_noise!r} is not allowed: it must be in (0, 1)")
    if steps == 1:
        return [1.0, 0.0]
    n = steps
    lin = n // 2 if linear_steps is None else linear_steps
    if isinstance(lin, bool) or not isinstance(lin, int) or not (1 <= lin <= n - 1):
        raise InvalidInputError(
            f"linear_steps={linear_steps!r} is not allowed with steps={steps}: use 1..{n - 1} or None"
        )
    u = [i * tau / lin for i in range(lin)]
    d = lin - tau * n
    q = n - lin
    a = d / (lin * q**2)
    b = tau / lin - 2 * d / (q**2)
    c = a * (lin**2)
    u += [a * (i**2) + b * i + c for i in range(lin, n)]
    u.append(1.0)
    return [1.0 - x for x in u]


def make_noise(
    seed: int, *, frames: int, height: int, width: int, batch: int = 1, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal float32 noise (batch, 12, T, H/8, W/8) from a CPU generator seeded with ``seed``.

    Equals the official draw on a CPU (``torch.manual_seed(seed); torch.randn(shape)``); Genmo's scripts draw on
    CUDA, so the same seed gives other noise there. The result is moved to ``device`` after drawing, so a seed
    gives the same noise on every device.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed < 2**64):
        raise InvalidInputError(f"seed={seed!r} is not allowed: use an integer in [0, 2**64)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"batch={batch!r} is not allowed: use an integer >= 1")
    shape = (batch, *latent_shape(frames, height, width))
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


# ----------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------


def _cond(c: Conditioning, batch: int, name: str, device: torch.device) -> Conditioning:
    if not isinstance(c, (tuple, list)) or len(c) != 2:
        raise InvalidInputError(f"{name} must be a (feat (B, L, D), mask (B, L)) pair")
    feat, mask = c
    if feat.dim() != 3 or mask.dim() != 2 or feat.shape[:2] != mask.shape:
        raise InvalidInputError(
            f"{name}: feat must be (B, L, D) and mask (B, L); got {tuple(feat.shape)}, {tuple(mask.shape)}"
        )
    if feat.shape[0] not in (1, batch):
        raise InvalidInputError(f"{name}: batch {feat.shape[0]} does not match the noise batch {batch}")
    feat = feat.to(device=device, dtype=torch.float32).expand(batch, -1, -1)
    mask = mask.to(device=device, dtype=torch.bool).expand(batch, -1)
    return feat, mask


def _pad_to(c: Conditioning, length: int) -> Conditioning:
    feat, mask = c
    extra = length - feat.shape[1]
    if extra <= 0:
        return c
    feat = torch.cat([feat, feat.new_zeros(feat.shape[0], extra, feat.shape[2])], dim=1)
    return feat, torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)


def _start_index(sigmas: list[float], denoise: float) -> int:
    """First schedule index whose sigma <= denoise (at least one step is kept)."""
    if denoise >= 1.0:
        return 0
    for i, s in enumerate(sigmas[:-1]):
        if s <= denoise:
            return i
    return len(sigmas) - 2


def sample(
    dit: DiTLike,
    noise: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    *,
    steps: int,
    cfg: float,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
    sigmas: Sequence[float] | None = None,
    cfg_schedule: Sequence[float] | None = None,
    start_latent: torch.Tensor | None = None,
    denoise: float = 1.0,
    batch_cfg: bool = True,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run the Mochi CFG Euler sampler; returns the final latent (B, 12, T, H, W) float32 in DiT space.

    - ``noise`` (B, 12, T, H, W): eps (see :func:`make_noise`); ``positive`` / ``negative``: (feat (1 or B, L, D),
      mask (1 or B, L) bool) as returned by ``TextEncoder.encode``; ``negative`` may be None when every cfg is 1.
    - ``sigmas``: explicit schedule (steps + 1 values strictly decreasing to 0), else
      ``linear_quadratic_schedule(steps, threshold_noise, linear_steps)``; ``cfg_schedule``: one value per step,
      else ``[cfg] * steps``. A step whose cfg is exactly 1 runs the conditional pass only.
    - ``start_latent`` (B or 1, 12, T, H, W), DiT space, with ``denoise`` in (0, 1]: sampling starts at the first
      schedule point with sigma <= denoise, from z = (1 - sigma) start + sigma noise, so fewer steps run.
    - ``batch_cfg``: cond and uncond in one DiT call of batch 2B (default) or two calls of batch B.
    - ``callback(step, total, x0)`` after every step (step counts from 0; x0 = z + sigma v, the current estimate of
      the clean latent, DiT space); ``should_stop()`` before every step: True raises :class:`MochiInterrupted`.
    """
    _check_steps(steps)
    if sigmas is None:
        sched = linear_quadratic_schedule(steps, threshold_noise, linear_steps)
    else:
        sched = validate_sigmas(sigmas, steps)
    if cfg_schedule is None:
        try:
            cfg_value = float(cfg)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"cfg={cfg!r} is not a number; cfg must be >= 0") from exc
        cfgs = [cfg_value] * steps
    else:
        cfgs = [float(c) for c in cfg_schedule]
        if len(cfgs) != steps:
            raise InvalidInputError(f"cfg_schedule has {len(cfgs)} entries; it needs one per step ({steps})")
    bad = [c for c in cfgs if not (c >= 0.0) or c != c or c == float("inf")]
    if bad:
        raise InvalidInputError(f"cfg={bad[0]!r} is not allowed: cfg must be a finite number >= 0")
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not (0.0 < float(denoise) <= 1.0):
        raise InvalidInputError(f"denoise={denoise!r} is not allowed: it must be in (0, 1]")
    if noise.dim() != 5 or noise.shape[1] != LATENT_CHANNELS:
        raise InvalidInputError(f"noise must be (B, 12, T, H, W), got {tuple(noise.shape)}")
    if noise.shape[-1] % 2 or noise.shape[-2] % 2:
        raise InvalidInputError(
            f"latent height and width must be even (pixel size a multiple of 16); got {tuple(noise.shape)}"
        )
    needs_uncond = any(c != 1.0 for c in cfgs)
    if needs_uncond and negative is None:
        raise InvalidInputError("negative conditioning is required when cfg != 1 (use an empty prompt '')")

    device = noise.device
    batch = noise.shape[0]
    pos = _cond(positive, batch, "positive", device)
    neg = _cond(negative, batch, "negative", device) if negative is not None else None
    both: Conditioning | None = None
    if neg is not None and batch_cfg and needs_uncond:
        length = max(pos[0].shape[1], neg[0].shape[1])
        if pos[0].shape[2] != neg[0].shape[2]:
            raise InvalidInputError("positive and negative features have different widths")
        p, n = _pad_to(pos, length), _pad_to(neg, length)
        both = (torch.cat([p[0], n[0]]), torch.cat([p[1], n[1]]))

    z = noise.to(torch.float32)
    first = _start_index(sched, float(denoise))
    if start_latent is not None and float(denoise) < 1.0:
        if start_latent.dim() != 5 or start_latent.shape[1:] != noise.shape[1:]:
            raise InvalidInputError(
                f"start_latent shape {tuple(start_latent.shape)} does not match the noise {tuple(noise.shape)}"
            )
        s0 = sched[first]
        z = (1.0 - s0) * start_latent.to(device=device, dtype=torch.float32) + s0 * z
    elif start_latent is None and float(denoise) < 1.0:
        raise InvalidInputError("denoise < 1 needs a start_latent (video-to-video); use denoise=1.0 for text-to-video")
    total = steps - first
    if first:
        logger.info("denoise %.3f: starting at sigma %.4f, running %d of %d steps", denoise, sched[first], total, steps)

    for k, i in enumerate(range(first, steps)):
        if should_stop is not None and should_stop():
            raise MochiInterrupted(f"sampling stopped before step {k + 1} of {total}")
        sigma, cfg_i = sched[i], cfgs[i]
        if cfg_i == 1.0 or neg is None:
            pred = _call(dit, z, sigma, pos)
        elif both is not None:
            out = _call(dit, torch.cat([z, z]), sigma, both)
            out_cond, out_uncond = out[:batch], out[batch:]
            pred = out_uncond + cfg_i * (out_cond - out_uncond)
        else:
            out_cond = _call(dit, z, sigma, pos)
            out_uncond = _call(dit, z, sigma, neg)
            pred = out_uncond + cfg_i * (out_cond - out_uncond)
        dsigma = sigma - sched[i + 1]
        if callback is not None:
            callback(k, total, z + sigma * pred)
        z = z + dsigma * pred
    return z


def _call(dit: DiTLike, z: torch.Tensor, sigma: float, c: Conditioning) -> torch.Tensor:
    s = torch.full((z.shape[0],), sigma, dtype=torch.float32, device=z.device)
    out = dit(z, s, c[0], c[1])
    return out.to(torch.float32)
