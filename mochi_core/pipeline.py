"""One text-to-video generation in three phases: T5 encoding -> CFG sampling with the DiT -> VAE decoding.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/pipelines.py`` (``MochiSingleGPUPipeline.__call__``:
encode, sample, ``dit_latents_to_vae_latents``, decode, ``clamp((x + 1) / 2)``); mochi-spec.md §1.
Each phase loads its model (when given a path), runs, and releases it before the next phase starts (del, gc,
``torch.cuda.empty_cache``), so peak memory is the largest phase, not the sum. Models passed in as objects are
used as they are and left to the caller.

Memory planning: ``generate(..., budget=...)`` plans the whole job for the given files with
:func:`mochi_core.memory.plan_for_files` and refuses it (``DoesNotFitError``, naming the smallest budget that
fits) before any weight is read. ``generate(..., plan=...)`` takes such a plan, or any object; these optional
attributes override the keyword arguments when present and not None: ``t5_storage_dtype``, ``t5_load_device``,
``dit_storage_dtype``, ``dit_load_device``, ``attention``, ``batch_cfg``, ``memory_budget``, ``tile``; and the
optional callables ``prepare_t5(encoder, device)`` / ``prepare_dit(model, device)`` run after loading (e.g. to
install block streaming).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InvalidInputError
from .precision import dtype_name
from .sampling import linear_quadratic_schedule, make_noise, sample, validate_sigmas, validate_size
from .text import TextEncoder, load_text_encoder
from .video import decoded_to_frames

__all__ = ["GenerationResult", "generate", "release_memory"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class GenerationResult:
    """``frames`` (F, H, W, 3) float32 in [0, 1] (CPU), ``latent`` (1, 12, T, H/8, W/8) DiT space (CPU),
    ``summary``: settings, timings (seconds per phase) and model formats, JSON-serializable."""

    frames: torch.Tensor
    latent: torch.Tensor
    summary: dict[str, Any] = field(default_factory=dict)


def release_memory(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks to the driver (between phases)."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _plan_value(plan: Any, name: str, default: Any) -> Any:
    if plan is None:
        return default
    value = plan.get(name) if isinstance(plan, dict) else getattr(plan, name, None)
    return default if value is None else value


def _check_number(name: str, value: Any, *, minimum: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name}={value!r} is not a number; {name} must be >= {minimum:g}") from exc
    if not (v >= minimum) or v == float("inf"):
        raise InvalidInputError(f"{name}={value!r} is not allowed: {name} must be a finite number >= {minimum:g}")
    return v


def _dtype_name(value: str | torch.dtype | None) -> str | None:
    return value if value is None or isinstance(value, str) else dtype_name(value)


def _plan_job(
    budget: int | str,
    dev: torch.device,
    models: tuple[Any, Any, Any],
    size: tuple[int, int, int],
    *,
    compute_dtype: str | torch.dtype | None,
    dit_storage: str | torch.dtype | None,
    t5_storage: str | torch.dtype | None,
    vae_dtype: str | torch.dtype | None,
    attention: str,
    batch_cfg: bool,
) -> Any:
    """The planner's choice for ``models`` = (dit, text_encoder, vae) paths at ``size`` = (width, height, frames),
    or DoesNotFitError before any weight is read."""
    from .memory.files import plan_for_files
    from .memory.planner import require_fit

    dit, text_encoder, vae = models
    if not all(isinstance(m, (str, os.PathLike)) for m in models):
        raise InvalidInputError("budget= plans from the model files: pass dit, text_encoder and vae as paths")
    if dev.type not in ("cuda", "cpu"):
        raise InvalidInputError(f"budget= is planned for cuda or cpu devices, not {dev.type!r}")
    job = plan_for_files(
        *size,
        budget_bytes=budget,
        dit=dit,
        text_encoder=text_encoder,
        vae=vae,
        device=dev.type,
        dit_storage=_dtype_name(dit_storage),
        t5_storage=_dtype_name(t5_storage),
        vae_dtype=_dtype_name(vae_dtype),
        compute_dtype=_dtype_name(compute_dtype),
        attention=attention,
        batch_cfg=None if batch_cfg else False,
    )
    require_fit(job)
    logger.info("memory plan:\n%s", job.summary())
    return job


def generate(
    prompt: str,
    *,
    dit: PathLike | torch.nn.Module,
    vae: PathLike | Any,
    text_encoder: PathLike | TextEncoder,
    negative_prompt: str = "",
    tokenizer: PathLike | None = None,
    width: int = 848,
    height: int = 480,
    frames: int = 31,
    steps: int = 64,
    cfg: float = 6.0,
    seed: int = 0,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
    sigmas: Sequence[float] | None = None,
    cfg_schedule: Sequence[float] | None = None,
    batch_cfg: bool = True,
    start_latent: torch.Tensor | None = None,
    denoise: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    dit_storage_dtype: str | torch.dtype | None = None,
    t5_storage_dtype: str | torch.dtype | None = None,
    vae_dtype: str | torch.dtype | None = None,
    vae_storage_dtype: str | torch.dtype | None = None,
    attention: str = "sdpa",
    memory_budget: int | None = None,
    tile: Any = None,
    budget: int | str | None = None,
    plan: Any = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    decode_progress: Callable[..., None] | None = None,
) -> GenerationResult:
    """Generate one video from ``prompt``; returns a :class:`GenerationResult`.

    ``dit`` / ``vae`` / ``text_encoder``: checkpoint paths (loaded, used and released phase by phase) or loaded
    objects (``load_dit`` / ``load_vae`` / ``load_text_encoder`` results). ``width``, ``height`` (multiples of 16),
    ``frames`` (6k + 1), ``steps`` (>= 1), ``cfg`` (>= 0; 1 skips the unconditional pass), ``seed`` (CPU noise,
    see :func:`make_noise`), ``sigmas`` / ``cfg_schedule`` (explicit per-step lists) as in :func:`sample`.
    ``dtype`` / ``vae_dtype``: DiT / VAE compute dtypes (default fp32 on CPU, bf16 on CUDA); T5 always computes
    in fp32. ``*_storage_dtype``: weight storage conversions (None keeps the files' dtypes).
    ``start_latent`` (1, 12, T, H/8, W/8) in DiT (normalized) space with ``denoise`` in (0, 1): video-to-video as
    in :func:`sample` (encode a video with the VAE, then ``normalize_latent``).
    ``memory_budget`` (bytes) and ``tile`` go to the VAE decode. ``budget`` (bytes or "12GB"): device memory for
    the whole job; the planner chooses streaming, CFG batching and decode tiles (paths only; see module docstring).
    ``callback(step, total, x0)``, ``should_stop()`` as in :func:`sample` (``should_stop`` is also checked between
    decode tiles); ``decode_progress`` is passed to the VAE decode. Every input is validated before any weight is read.
    """
    t_start = time.perf_counter()
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise InvalidInputError("prompt and negative_prompt must be strings")
    validate_size(frames, height, width)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps={steps!r} is not allowed: steps must be an integer >= 1")
    cfg_value = _check_number("cfg", cfg, minimum=0.0)
    cfgs = [cfg_value] * steps if cfg_schedule is None else [_check_number("cfg", c, minimum=0.0) for c in cfg_schedule]
    if len(cfgs) != steps:
        raise InvalidInputError(f"cfg_schedule has {len(cfgs)} entries; it needs one per step ({steps})")
    sched = (
        validate_sigmas(sigmas, steps)
        if sigmas is not None
        else linear_quadratic_schedule(steps, threshold_noise, linear_steps)
    )
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not (0.0 < float(denoise) <= 1.0):
        raise InvalidInputError(f"denoise={denoise!r} is not allowed: it must be in (0, 1]")
    if float(denoise) < 1.0 and start_latent is None:
        raise InvalidInputError("denoise < 1 needs a start_latent (video-to-video); use denoise=1.0 for text-to-video")
    dev = torch.device(device)
    if budget is not None and plan is None:
        plan = _plan_job(
            budget,
            dev,
            (dit, text_encoder, vae),
            (width, height, frames),
            compute_dtype=dtype,
            dit_storage=dit_storage_dtype,
            t5_storage=t5_storage_dtype,
            vae_dtype=vae_dtype,
            attention=attention,
            batch_cfg=batch_cfg,
        )
    batch_cfg = bool(_plan_value(plan, "batch_cfg", batch_cfg))
    memory_budget = _plan_value(plan, "memory_budget", memory_budget)
    tile = _plan_value(plan, "tile", tile)
    needs_uncond = any(c != 1.0 for c in cfgs)
    timings: dict[str, float] = {}
    formats: dict[str, str] = {}

    # -- phase 1: T5 -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    owns_t5 = isinstance(text_encoder, (str, os.PathLike))
    enc = (
        load_text_encoder(
            text_encoder,
            tokenizer=tokenizer,
            device=torch.device(_plan_value(plan, "t5_load_device", dev)),
            storage_dtype=_plan_value(plan, "t5_storage_dtype", t5_storage_dtype),
        )
        if owns_t5
        else text_encoder
    )
    prepare_t5 = _plan_value(plan, "prepare_t5", None)
    if owns_t5 and callable(prepare_t5):
        enc = prepare_t5(enc, dev)
    formats["t5"] = getattr(enc, "format_name", "")
    prompts = [prompt, negative_prompt] if needs_uncond else [prompt]
    feat, mask = enc.encode(prompts)
    positive = (feat[:1], mask[:1])
    negative = (feat[1:2], mask[1:2]) if needs_uncond else None
    del enc, feat, mask
    if owns_t5:
        release_memory(dev)
    timings["text_encoding_s"] = time.perf_counter() - t0

    # -- phase 2: DiT sampling -----------------------------------------------------------------------
    t0 = time.perf_counter()
    owns_dit = isinstance(dit, (str, os.PathLike))
    if owns_dit:
        from .dit import load_dit

        model = load_dit(
            dit,
            device=torch.device(_plan_value(plan, "dit_load_device", dev)),
            dtype=dtype,
            storage_dtype=_plan_value(plan, "dit_storage_dtype", dit_storage_dtype),
            attention=_plan_value(plan, "attention", attention),
        )
    else:
        model = dit
    prepare = _plan_value(plan, "prepare_dit", None)
    if callable(prepare):
        model = prepare(model, dev)
    formats["dit"] = str(getattr(model, "checkpoint_format", ""))
    timings["dit_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    noise = make_noise(seed, frames=frames, height=height, width=width, device=dev)
    try:
        latent = sample(
            model,
            noise,
            positive,
            negative,
            steps=steps,
            cfg=cfg_value,
            sigmas=sched,
            cfg_schedule=cfgs,
            batch_cfg=batch_cfg,
            start_latent=start_latent,
            denoise=denoise,
            callback=callback,
            should_stop=should_stop,
        )
    finally:  # also on interrupt: a traceback must not keep the DiT alive
        del model, noise, positive, negative
        if owns_dit:
            release_memory(dev)
    timings["sampling_s"] = time.perf_counter() - t0

    # -- phase 3: VAE decode -------------------------------------------------------------------------
    t0 = time.perf_counter()
    from .vae import denormalize_latent, load_vae

    owns_vae = isinstance(vae, (str, os.PathLike))
    decoder = load_vae(vae, device=dev, dtype=vae_storage_dtype, compute_dtype=vae_dtype) if owns_vae else vae
    try:
        decoded = decoder.decode(
            denormalize_latent(latent),
            memory_budget=memory_budget,
            tile=tile,
            progress=decode_progress,
            should_stop=should_stop,
        )
        video = decoded_to_frames(decoded)[0].cpu()
        del decoded
    finally:
        del decoder
        if owns_vae:
            release_memory(dev)
    timings["decode_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    summary: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "width": width,
        "height": height,
        "frames": int(video.shape[0]),
        "fps": 30,
        "steps": steps,
        "cfg": cfg_value if cfg_schedule is None else cfgs,
        "sigmas": sched,
        "batch_cfg": batch_cfg and needs_uncond,
        "denoise": float(denoise),
        "device": str(dev),
        "latent_shape": list(latent.shape),
        "formats": formats,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    if plan is not None and hasattr(plan, "to_dict"):
        summary["plan"] = plan.to_dict()
    if dev.type == "cuda" and torch.cuda.is_available():
        summary["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    logger.info("generated %d frames %dx%d in %.1f s", video.shape[0], width, height, timings["total_s"])
    return GenerationResult(frames=video, latent=latent.cpu(), summary=summary)
