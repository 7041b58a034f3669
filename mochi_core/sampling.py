"""Linear-quadratic sigma schedule, latent noise and the CFG Euler flow-matching sampler of Mochi 1.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (``linear_quadratic_schedule``,
``sample_model``). Conventions:

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

Doing less work (all off by default; off means the loop above, unchanged): ``preset="fast"`` (FastMochi's
8-step schedule, :mod:`mochi_core.guidance`), TeaCache (``teacache_threshold`` > 0, :mod:`mochi_core.teacache`)
and spatiotemporal skip guidance (``stg_scale`` > 0, one more DiT pass per step). :class:`SamplingStats` reports
the DiT passes that ran and were skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .checks import check_callable, check_instance, check_tensor
from .errors import InvalidInputError, MochiInterrupted
from .guidance import check_stg_blocks_for, stg_combine
from .options import (
    SamplingOptions,
    check_seed,
    check_size,
    check_steps,
    nearest_frame_counts,
)
from .scalars import as_int, as_real
from .teacache import TeaCacheState

__all__ = [
    "LATENT_CHANNELS",
    "SamplingArgs",
    "SamplingOptions",
    "SamplingStats",
    "check_sampling_args",
    "check_seed",
    "check_start_latent",
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
SamplingArgs = SamplingOptions  # the earlier name
Conditioning = tuple[torch.Tensor, torch.Tensor]


class DiTLike(Protocol):
    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, t5_feat: torch.Tensor, t5_mask: torch.Tensor
    ) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def validate_size(frames: int, height: int, width: int) -> None:
    """Refuse a video size the DiT and VAE cannot take (:func:`mochi_core.options.check_size`)."""
    check_size(width, height, frames)


def check_sampling_args(**kwargs: Any) -> SamplingOptions:
    """The sampler's arguments checked: :meth:`mochi_core.options.SamplingOptions.resolve`."""
    return SamplingOptions.resolve(**kwargs)


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T, H, W) = (12, (frames - 1) / 6 + 1, height / 8, width / 8) of a video size (validated)."""
    validate_size(frames, height, width)
    frames, height, width = int(frames), int(height), int(width)
    return (LATENT_CHANNELS, (frames - 1) // 6 + 1, height // 8, width // 8)


def _sigmas_problem(values: list[float], steps: int | None) -> str | None:
    """What is wrong with a schedule (None: nothing), the first rule it breaks."""
    if len(values) < 2:
        return f"sigmas needs at least 2 entries (steps + 1), got {len(values)}"
    if steps is not None and len(values) != steps + 1:
        return f"sigmas has {len(values)} entries; with steps={steps} it must have steps + 1 = {steps + 1}"
    if values[-1] != 0.0:
        return f"sigmas must end at 0.0, got {values[-1]}"
    if not (0.0 < values[0] <= 1.0):
        return f"sigmas must start in (0, 1], got {values[0]}"
    for i in range(len(values) - 1):
        if not values[i] > values[i + 1]:
            return (
                f"sigmas must be strictly decreasing to 0; entry {i} ({values[i]}) <= entry {i + 1} ({values[i + 1]})"
            )
    return None


def validate_sigmas(sigmas: Sequence[float], steps: int | None = None) -> list[float]:
    """A sigma list must hold steps + 1 finite values in (0, 1] ... 0, strictly decreasing, ending at 0."""
    try:
        values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
        problem = _sigmas_problem(values, steps)
    except (TypeError, ValueError) as exc:
        problem = f"sigmas must be a list of numbers ({exc})"
    if problem is not None:
        raise InvalidInputError(problem)
    return values


def check_start_latent(start_latent: Any, shape: Sequence[int]) -> torch.Tensor:
    """A start latent must be a finite floating tensor (1 or B, 12, T, H, W) matching ``shape`` (B, 12, T, H, W),
    the shape of the noise it is mixed with (DiT space: ``normalize_latent(vae.encode(video))``)."""
    b, *rest = (int(s) for s in shape)
    sizes = (1 if b == 1 else (1, b), *rest)
    return check_tensor("start_latent", start_latent, sizes, layout="(B, 12, T, H, W) matching the noise", finite=True)


def _check_noise(noise: Any) -> torch.Tensor:
    check_tensor("noise", noise, (None, LATENT_CHANNELS, None, None, None), layout="(B, 12, T, H, W) (see make_noise)")
    if noise.shape[-1] % 2 or noise.shape[-2] % 2:
        raise InvalidInputError(
            f"latent height and width must be even (pixel size a multiple of 16); got {tuple(noise.shape)}"
        )
    return noise


def _check_callables(dit: Any, callback: Any, should_stop: Any) -> None:
    check_callable(dit, name="dit", what="a callable model (load_dit)", optional=False)
    check_callable(callback, name="callback")
    check_callable(should_stop, name="should_stop")


# ----------------------------------------------------------------------------------------------
# Schedule and noise
# ----------------------------------------------------------------------------------------------


def _linear_steps(linear_steps: int | None, steps: int) -> int:
    """L = ``linear_steps`` (1..max(1, steps - 1)) or steps // 2 when None."""
    if linear_steps is None:
        return steps // 2
    top = max(1, steps - 1)
    message = f"linear_steps={linear_steps!r} is not allowed with steps={steps}: use 1..{top} or None (= steps // 2)"
    return as_int("linear_steps", linear_steps, low=1, high=top, message=message)


def _check_schedule(sigmas: list[float], tau: float, lin: int, steps: int) -> None:
    """Refuse a schedule that is not strictly decreasing within [0, 1] (too large a ``threshold_noise``).

    The quadratic part rises monotonically to 1 exactly when its slope at ``steps`` is >= 0, i.e.
    tau <= 2 L / (steps + L); the computed values are checked, the bound is the advice.
    """
    for i in range(steps):
        if not (1.0 >= sigmas[i] > sigmas[i + 1] >= 0.0):
            bound = math.floor(2 * lin / (steps + lin) * 1e4) / 1e4
            raise InvalidInputError(
                f"threshold_noise={tau!r} is too large for steps={steps}, linear_steps={lin}: the schedule would not "
                f"decrease from 1 to 0 (sigma[{i}]={sigmas[i]:.6g}, sigma[{i + 1}]={sigmas[i + 1]:.6g}); use "
                f"threshold_noise <= {bound:g} or more linear_steps"
            )


def linear_quadratic_schedule(
    steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> list[float]:
    """steps + 1 sigmas from 1.0 down to 0.0 (Genmo's linear-quadratic schedule), as Python floats (float64).

    With u = 1 - sigma: u_i = i * tau / L for i < L (L = ``linear_steps``, default steps // 2), then the quadratic
    a i^2 + b i + c through (L, tau) and (steps, 1). ``steps == 1`` gives [1.0, 0.0] (``linear_steps`` None or 1).
    A ``threshold_noise`` so large that the quadratic overshoots 1 (sigmas not strictly decreasing, or negative)
    is refused with the largest value that works.
    """
    steps = check_steps(steps)
    tau = as_real(
        "threshold_noise", threshold_noise, low=0.0, high=1.0, low_open=True, high_open=True, what="a number in (0, 1)"
    )
    lin = _linear_steps(linear_steps, steps)
    if steps == 1:
        return [1.0, 0.0]
    n = steps
    u = [i * tau / lin for i in range(lin)]
    d = lin - tau * n
    q = n - lin
    a = d / (lin * q**2)
    b = tau / lin - 2 * d / (q**2)
    c = a * (lin**2)
    u += [a * (i**2) + b * i + c for i in range(lin, n)]
    u.append(1.0)
    sigmas = [1.0 - x for x in u]
    _check_schedule(sigmas, tau, lin, steps)
    return sigmas


def make_noise(
    seed: int, *, frames: int, height: int, width: int, batch: int = 1, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal float32 noise (batch, 12, T, H/8, W/8) from a CPU generator seeded with ``seed``.

    Equals the official draw on a CPU (``torch.manual_seed(seed); torch.randn(shape)``); Genmo's scripts draw on
    CUDA, so the same seed gives other noise there. The result is moved to ``device`` after drawing, so a seed
    gives the same noise on every device.
    """
    seed = check_seed(seed)
    batch = as_int("batch", batch, low=1)
    shape = (batch, *latent_shape(frames, height, width))
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


# ----------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------


def _cond(c: Any, batch: int, name: str, device: torch.device) -> Conditioning:
    """Check a (feat (1 or B, L, D) float, mask (1 or B, L) bool/int) pair; returns it expanded to ``batch``."""
    if not isinstance(c, (tuple, list)) or len(c) != 2:
        raise InvalidInputError(f"{name} must be a (feat (B, L, D), mask (B, L)) pair; got {type(c).__name__}")
    batches = 1 if batch == 1 else (1, batch)
    feat = check_tensor(f"{name} feat", c[0], (batches, None, None), layout="(B, L, D) (TextEncoder.encode)")
    b, length, _ = feat.shape
    mask = check_tensor(f"{name} mask", c[1], (b, length), layout="(B, L) matching the feat", kind="mask")
    feat = feat.to(device=device, dtype=torch.float32).expand(batch, -1, -1)
    mask = mask.to(device=device, dtype=torch.bool).expand(batch, -1)
    return feat, mask


def _check_feature_width(dit: Any, pos: Conditioning, neg: Conditioning | None) -> None:
    width = pos[0].shape[2]
    want = getattr(getattr(dit, "config", None), "t5_feat_dim", None)
    problem = None
    if neg is not None and width != neg[0].shape[2]:
        problem = f"positive and negative features have different widths ({width} vs {neg[0].shape[2]})"
    elif isinstance(want, int) and width != want:
        problem = (
            f"positive has {width} features per token but this DiT expects {want} (its T5 width): encode the "
            "prompts with the T5 that matches the DiT"
        )
    if problem is not None:
        raise InvalidInputError(problem)


def _pad_to(c: Conditioning, length: int) -> Conditioning:
    feat, mask = c
    extra = length - feat.shape[1]
    if extra <= 0:
        return c
    feat = torch.cat([feat, feat.new_zeros(feat.shape[0], extra, feat.shape[2])], dim=1)
    return feat, torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)


@dataclass
class SamplingStats:
    """What a :func:`sample` run did; pass one as ``stats=`` and read it afterwards.

    ``dit_passes``: DiT forwards per sample that ran (a batched CFG call counts 2: cond and uncond);
    ``dit_passes_skipped``: forwards TeaCache replaced by a cached residual; ``steps``: steps run;
    ``teacache_pattern``: 'C' computed / 's' skipped per step ('' without TeaCache); ``teacache``: the rule's
    per-step values (rel_l1, rescaled, accumulated; None at forced steps).
    """

    steps: int = 0
    dit_passes: int = 0
    dit_passes_skipped: int = 0
    teacache_pattern: str = ""
    teacache: dict[str, list[float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable summary (without the per-step values)."""
        return {
            "steps": self.steps,
            "dit_passes": self.dit_passes,
            "dit_passes_skipped": self.dit_passes_skipped,
            "teacache_pattern": self.teacache_pattern,
        }


def sample(
    dit: DiTLike,
    noise: torch.Tensor,
    positive: Conditioning,
    negative: Conditioning | None,
    *,
    steps: int | None = None,
    cfg: float | None = None,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
    sigmas: Sequence[float] | None = None,
    cfg_schedule: Sequence[float] | None = None,
    start_latent: torch.Tensor | None = None,
    denoise: float = 1.0,
    batch_cfg: bool = True,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    options: SamplingOptions | None = None,
    preset: str = "default",
    teacache_threshold: float = 0.0,
    max_skip_steps: int = 0,
    stg_scale: float = 0.0,
    stg_blocks: Sequence[int] | str | None = None,
    stg_rescale: float = 0.0,
    stats: SamplingStats | None = None,
) -> torch.Tensor:
    """Run the Mochi CFG Euler sampler; returns the final latent (B, 12, T, H, W) float32 in DiT space.

    - ``noise`` (B, 12, T, H, W) floating tensor: eps (see :func:`make_noise`); ``positive`` / ``negative``:
      (feat (1 or B, L, D) float, mask (1 or B, L) bool) as returned by ``TextEncoder.encode``, D equal to the
      DiT's ``config.t5_feat_dim`` when it has one; ``negative`` may be None when every cfg is 1.
    - ``steps`` and ``cfg`` (required unless a preset sets them); ``sigmas``: explicit schedule (steps + 1 values
      strictly decreasing to 0), else ``linear_quadratic_schedule(steps, threshold_noise, linear_steps)``;
      ``cfg_schedule``: one value per step, else ``[cfg] * steps``. A step whose cfg is exactly 1 runs the
      conditional pass only.
    - ``start_latent`` (B or 1, 12, T, H, W), DiT space, with ``denoise`` in (0, 1]: sampling starts at the first
      schedule point with sigma <= denoise, from z = (1 - sigma) start + sigma noise, so fewer steps run
      (with ``denoise`` 1 the start latent is checked but unused).
    - ``batch_cfg``: cond and uncond in one DiT call of batch 2B (default) or two calls of batch B.
    - ``preset``: 'default' or 'fast' (FastMochi: 8 steps, cfg 1.5, ``threshold_noise`` 0.1, 6 linear steps;
      steps, cfg and the schedule are then left out).
    - ``teacache_threshold`` (0 = off; 0.06 / 0.09 published), ``max_skip_steps`` (0 = no limit): TeaCache
      (:mod:`mochi_core.teacache`; needs the DiT of :func:`mochi_core.load_dit`).
    - ``stg_scale`` (0 = off), ``stg_blocks`` (default (34,)), ``stg_rescale`` (0 = off): spatiotemporal skip
      guidance (:mod:`mochi_core.guidance`; one more DiT pass per step).
    - ``callback(step, total, x0)`` after every step (step counts from 0; x0 = z + sigma v, the current estimate of
      the clean latent, DiT space); ``should_stop()`` before every step: True raises :class:`MochiInterrupted`.
    - ``stats``: a :class:`SamplingStats` filled with the passes that ran and were skipped.
    - ``options``: the settings already resolved (:meth:`SamplingOptions.resolve`); the scalar keywords
      (``steps`` ... ``batch_cfg``, ``preset`` ... ``stg_rescale``) are then not used.

    Every argument is checked (:meth:`SamplingOptions.resolve` and the tensor checks) before the DiT is first
    called.
    """
    args = options or SamplingOptions.resolve(
        steps=steps,
        cfg=cfg,
        threshold_noise=threshold_noise,
        linear_steps=linear_steps,
        sigmas=sigmas,
        cfg_schedule=cfg_schedule,
        denoise=denoise,
        batch_cfg=batch_cfg,
        has_start_latent=start_latent is not None,
        preset=preset,
        teacache_threshold=teacache_threshold,
        max_skip_steps=max_skip_steps,
        stg_scale=stg_scale,
        stg_blocks=stg_blocks,
        stg_rescale=stg_rescale,
    )
    _check_callables(dit, callback, should_stop)
    check_instance("stats", stats, SamplingStats, "made with SamplingStats(), filled while sampling")
    _check_noise(noise)
    _check_speed_support(dit, args)
    if start_latent is not None:
        check_start_latent(start_latent, tuple(noise.shape))
    needs_uncond = args.needs_uncond
    if needs_uncond and negative is None:
        raise InvalidInputError("negative conditioning is required when cfg != 1 (use an empty prompt '')")

    device = noise.device
    batch = noise.shape[0]
    pos = _cond(positive, batch, "positive", device)
    neg = _cond(negative, batch, "negative", device) if negative is not None else None
    _check_feature_width(dit, pos, neg)
    both: Conditioning | None = None
    if neg is not None and args.batch_cfg and needs_uncond:
        length = max(pos[0].shape[1], neg[0].shape[1])
        p, n = _pad_to(pos, length), _pad_to(neg, length)
        both = (torch.cat([p[0], n[0]]), torch.cat([p[1], n[1]]))

    sched, cfgs, first = args.sigmas, args.cfgs, args.first
    z = noise.to(torch.float32)
    if start_latent is not None and args.denoise < 1.0:
        s0 = sched[first]
        z = (1.0 - s0) * start_latent.to(device=device, dtype=torch.float32) + s0 * z
    elif start_latent is not None:
        logger.info("denoise 1.0: start_latent is not used (sampling starts from pure noise)")
    total = args.steps - first
    if first:
        logger.info(
            "denoise %.3f: starting at sigma %.4f, running %d of %d steps",
            args.denoise,
            sched[first],
            total,
            args.steps,
        )
    run = _Passes(dit, args, total)

    for k, i in enumerate(range(first, args.steps)):
        if should_stop is not None and should_stop():
            raise MochiInterrupted(f"sampling stopped before step {k + 1} of {total}")
        sigma, cfg_i = sched[i], cfgs[i]
        if cfg_i == 1.0 or neg is None:
            out_cond = run.step(k, z, sigma, [("cond", pos)])[0]
            pred = out_cond
        elif both is not None:
            out = run.step(k, z, sigma, [("batch", both)])[0]
            out_cond, out_uncond = out[:batch], out[batch:]
            pred = out_uncond + cfg_i * (out_cond - out_uncond)
        else:
            out_cond, out_uncond = run.step(k, z, sigma, [("cond", pos), ("uncond", neg)])
            pred = out_uncond + cfg_i * (out_cond - out_uncond)
        if args.stg_scale > 0.0:
            pred = stg_combine(pred, out_cond, run.perturbed(k, z, sigma, pos), args.stg_scale, args.stg_rescale)
        dsigma = sigma - sched[i + 1]
        if callback is not None:
            callback(k, total, z + sigma * pred)
        z = z + dsigma * pred
    run.finish(stats)
    return z


def _check_speed_support(dit: Any, args: SamplingArgs) -> None:
    """TeaCache and STG need the DiT of ``load_dit`` (the ``cache`` / ``skip_blocks`` keywords, ``blocks``), itself
    or wrapped (``.model``: a multi-process ``ParallelDiT``, which passes those keywords through)."""
    wants = [
        n for n, on in (("teacache_threshold", args.teacache_threshold > 0), ("stg_scale", args.stg_scale > 0)) if on
    ]
    if not wants:
        return
    target = dit if hasattr(dit, "blocks") else getattr(dit, "model", dit)
    blocks = getattr(target, "blocks", None)
    if blocks is None or not hasattr(target, "token_chunk"):
        raise InvalidInputError(
            f"{wants[0]} > 0 needs the Mochi DiT of mochi_core.load_dit; this model ({type(dit).__name__}) does not "
            "support it; set it to 0"
        )
    if args.stg_scale > 0:
        check_stg_blocks_for(args.stg_blocks, len(blocks))


class _Passes:
    """The DiT calls of one sampling run: TeaCache decisions, per-stream caches and the pass counts."""

    def __init__(self, dit: DiTLike, args: SamplingArgs, total: int) -> None:
        from .dit.model import StreamCache

        self.dit, self.args, self.total = dit, args, total
        self.tc = (
            TeaCacheState(args.teacache_threshold, total, args.max_skip_steps) if args.teacache_threshold else None
        )
        self.caches = {n: StreamCache() for n in ("batch", "cond", "uncond", "perturbed")} if self.tc else {}
        self.compute = True
        self.run = 0
        self.skipped = 0

    def step(
        self, k: int, z: torch.Tensor, sigma: float, streams: list[tuple[str, Conditioning]]
    ) -> list[torch.Tensor]:
        """Outputs (float32, shape of the stream's latent) of this step's guidance streams, in order."""
        zz = {name: (torch.cat([z, z]) if name == "batch" else z) for name, _ in streams}
        if self.tc is None:
            outs = [_call(self.dit, zz[name], sigma, c) for name, c in streams]
            self.run += sum(2 if name == "batch" else 1 for name, _ in streams)
            return outs
        mods = {}
        for name, c in streams:
            self.caches[name].action = "probe"
            mods[name] = _call(self.dit, zz[name], sigma, c, cache=self.caches[name], raw=True)
        followers = ("perturbed",) if self.args.stg_scale > 0 else ()
        self.compute = self.tc.decide(k, mods, followers)
        del mods
        outs = []
        for name, c in streams:
            outs.append(self._cached(name, zz[name], sigma, c))
        return outs

    def perturbed(self, k: int, z: torch.Tensor, sigma: float, pos: Conditioning) -> torch.Tensor:
        """The conditional pass with ``stg_blocks`` skipped (follows this step's TeaCache decision)."""
        if self.tc is None:
            self.run += 1
            return _call(self.dit, z, sigma, pos, skip_blocks=self.args.stg_blocks)
        return self._cached("perturbed", z, sigma, pos, skip_blocks=self.args.stg_blocks)

    def _cached(
        self, name: str, z: torch.Tensor, sigma: float, c: Conditioning, skip_blocks: tuple[int, ...] = ()
    ) -> torch.Tensor:
        cache = self.caches[name]
        cache.action = "compute" if self.compute else "reuse"
        n = 2 if name == "batch" else 1
        if self.compute:
            self.run += n
        else:
            self.skipped += n
        return _call(self.dit, z, sigma, c, cache=cache, skip_blocks=skip_blocks)

    def finish(self, stats: SamplingStats | None) -> None:
        """Release the caches, log the counts and fill ``stats``."""
        for cache in self.caches.values():
            cache.residual = None
        pattern = self.tc.pattern if self.tc is not None else ""
        if self.tc is not None:
            logger.info(
                "TeaCache %.3g: %d DiT passes run, %d skipped (%s)", self.args.teacache_threshold, self.run,
                self.skipped, pattern,
            )  # fmt: skip
        if stats is not None:
            stats.steps = self.total
            stats.dit_passes = self.run
            stats.dit_passes_skipped = self.skipped
            stats.teacache_pattern = pattern
            if self.tc is not None:
                stats.teacache = {
                    "rel_l1": list(self.tc.rel_l1),
                    "rescaled": list(self.tc.rescaled),
                    "accumulated": list(self.tc.accumulated_log),
                }


def _call(
    dit: DiTLike, z: torch.Tensor, sigma: float, c: Conditioning, *, raw: bool = False, **kwargs: Any
) -> torch.Tensor:
    """One DiT call at ``sigma``; float32 output unless ``raw`` (a TeaCache probe keeps the compute dtype)."""
    s = torch.full((z.shape[0],), sigma, dtype=torch.float32, device=z.device)
    out = dit(z, s, c[0], c[1], **kwargs) if kwargs else dit(z, s, c[0], c[1])
    return out if raw else out.to(torch.float32)
