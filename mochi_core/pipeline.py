"""One text-to-video generation in three phases: T5 encoding -> CFG sampling with the DiT -> VAE decoding.

Semantics of Genmo's single-GPU pipeline (encode, sample, DiT-space to VAE-space latents, decode,
``clamp((x + 1) / 2)``). Each phase loads its model (when given a path), runs, and releases it before the next
phase starts (del, gc, ``torch.cuda.empty_cache``), so peak memory is the largest phase, not the sum. Models
passed in as objects are used as they are and left to the caller.

Every argument is resolved once into the records of :mod:`mochi_core.options` before any weight is read; the
loaders and the sampler then take those records and do not check again.

Memory planning: ``generate(..., budget=...)`` plans the whole job for the given files with
:func:`mochi_core.memory.plan_for_files` and refuses it (``DoesNotFitError``, naming the smallest budget that
fits) before any weight is read. ``generate(..., plan=...)`` takes such a :class:`~mochi_core.memory.Plan`. The
plan is passive: the pipeline applies it (storage dtypes, load devices, block streaming of the models it loads
itself, CFG batching, decode tiles); models passed in keep their own placement.

When a phase fails, the model it loaded is released before the error propagates (the exception's finished frames
are cleared, so a caught error does not keep it alive).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .checks import check_callable, check_instance, check_model_arg
from .devices import check_device
from .errors import InvalidInputError
from .options import (
    DIT_STORAGE,
    T5_STORAGE,
    DecodeOptions,
    DiTOptions,
    JobOptions,
    LoRAOptions,
    SamplingOptions,
    StreamingSpec,
    T5Options,
    VAEOptions,
    renamed,
    resolve_dtype,
)
from .sampling import SamplingStats, check_start_latent, make_noise, sample
from .text import T5Tokenizer, TextEncoder, find_tokenizer, load_text_encoder
from .video import decoded_to_frames

__all__ = ["GenerationResult", "generate", "release_memory"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Conditioning = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GenerationResult:
    """``frames`` (F, H, W, 3) float32 in [0, 1] (CPU), ``latent`` (1, 12, T, H/8, W/8) DiT space (CPU),
    ``summary``: settings, timings (seconds per phase) and model formats, JSON-serializable. In a multi-process
    run (``parallel=``) only rank 0 has the frames; the other ranks get None."""

    frames: torch.Tensor | None
    latent: torch.Tensor
    summary: dict[str, Any] = field(default_factory=dict)


def release_memory(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks to the driver (between phases)."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _drop_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames of ``exc``'s traceback (and of its causes), so that a caller holding
    the exception does not keep alive the model a failed phase loaded. Messages and traceback lines stay."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        traceback.clear_frames(cur.__traceback__)
        cur = cur.__cause__ or cur.__context__


# ----------------------------------------------------------------------------------------------
# Setup: every argument resolved, the plan applied, before any model loads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """What :func:`generate` runs: resolved options (the models' ``device`` is where each is loaded), which models
    are paths (loaded and released here), the streaming to install on them, and the plan they came from."""

    job: JobOptions
    sampling: SamplingOptions
    dev: torch.device
    dit: DiTOptions
    t5: T5Options
    vae: VAEOptions
    decode: DecodeOptions
    owns: dict[str, bool]
    lora: LoRAOptions = LoRAOptions()
    dit_streaming: StreamingSpec | None = None
    t5_streaming: StreamingSpec | None = None
    plan: Any = None
    parallel: Any = None


def _device(device: Any, parallel: Any) -> torch.device:
    """The job's device: ``device`` checked, or the rank's own device of a :class:`~mochi_core.parallel.ParallelRun`
    (which replaces ``device``)."""
    if parallel is None:
        return check_device(device, what="device")
    from .parallel import ParallelRun

    check_instance("parallel", parallel, ParallelRun, "mochi_core.parallel", optional=False)
    return parallel.device


def _apply_parallel(setup: _Setup, parallel: Any, dit: Any) -> _Setup:
    """``setup`` for one rank of a multi-process run: the sequence split must divide the DiT's heads (read from
    the file header or the loaded model), and CFG-parallel runs cond and uncond as one batch split over ranks."""
    if parallel is None:
        return setup
    if parallel.layout.sp > 1:
        if isinstance(dit, (str, os.PathLike)):
            from .dit.loader import read_dit_header

            heads = read_dit_header(dit)[1].num_heads
        else:
            heads = getattr(getattr(dit, "config", None), "num_heads", None)
        if isinstance(heads, int):
            parallel.layout.check_heads(heads)
    sampling = replace(setup.sampling, batch_cfg=True) if parallel.layout.cfg_parallel else setup.sampling
    return replace(setup, sampling=sampling, parallel=parallel)


def _model_options(
    dev: torch.device,
    attention: Any,
    *,
    compute_dtype: Any,
    dit_storage_dtype: Any,
    t5_storage_dtype: Any,
    vae_compute_dtype: Any,
    vae_storage_dtype: Any,
    dtype: Any,
    vae_dtype: Any,
) -> tuple[DiTOptions, T5Options, VAEOptions]:
    """The three models' options under :func:`generate`'s argument names (``dtype`` / ``vae_dtype``: the earlier
    names of ``compute_dtype`` / ``vae_compute_dtype``, accepted with a DeprecationWarning)."""
    dit_names = {"storage_dtype": "dit_storage_dtype"}
    vae_names = {"compute_dtype": "vae_compute_dtype", "storage_dtype": "vae_storage_dtype"}
    compute_dtype = renamed("dtype", dtype, "compute_dtype", compute_dtype, dit_names)
    vae_compute_dtype = renamed(
        "vae_dtype", vae_dtype, "vae_compute_dtype", vae_compute_dtype, vae_names, key="compute_dtype"
    )
    return (
        DiTOptions.resolve(
            device=dev,
            compute_dtype=compute_dtype,
            storage_dtype=dit_storage_dtype,
            attention=attention,
            names=dit_names,
        ),
        T5Options.resolve(device=dev, storage_dtype=t5_storage_dtype, names={"storage_dtype": "t5_storage_dtype"}),
        VAEOptions.resolve(
            device=dev, compute_dtype=vae_compute_dtype, storage_dtype=vae_storage_dtype, names=vae_names
        ),
    )


def _check_callables(**callbacks: Any) -> None:
    """Each of ``callbacks`` is None or callable."""
    for name, fn in callbacks.items():
        check_callable(fn, name=name)


def _check_models(dit: Any, text_encoder: Any, vae: Any, tokenizer: Any) -> dict[str, bool]:
    """Which models are paths (True: loaded here); paths are checked from their headers now, as the loaders will
    (kind, completeness), and a T5 path's tokenizer is found now, not after planning."""
    owns = {
        "t5": check_model_arg(text_encoder, name="text_encoder", method="encode", loader="load_text_encoder"),
        "dit": check_model_arg(dit, name="dit", method=None, loader="load_dit"),
        "vae": check_model_arg(vae, name="vae", method="decode", loader="load_vae"),
    }
    from .memory.planning.files import check_model_paths

    paths = {"dit": dit, "text_encoder": text_encoder, "vae": vae}
    check_model_paths(**{k: v if owns[k if k != "text_encoder" else "t5"] else None for k, v in paths.items()})
    if tokenizer is not None and not owns["t5"]:
        raise InvalidInputError(
            "tokenizer= is used only when text_encoder is a path; a loaded text_encoder keeps the tokenizer it was "
            "loaded with (load_text_encoder(..., tokenizer=...)): drop tokenizer= or pass the T5 path"
        )
    if owns["t5"] and not isinstance(tokenizer, T5Tokenizer):
        find_tokenizer(tokenizer)
    return owns


def _plan_job(setup: _Setup, budget: Any, models: tuple[Any, Any, Any], batch_cfg: Any, parallel: Any = None) -> Any:
    """The planner's choice for the three model paths (for one rank of ``parallel``), or DoesNotFitError before any
    weight is read."""
    from .dtypes import dtype_name
    from .memory.planning.files import plan_for_files
    from .memory.planning.planner import require_fit

    problems = (
        (not all(isinstance(m, (str, os.PathLike)) for m in models), "pass dit, text_encoder and vae as paths"),
        (setup.dev.type not in ("cuda", "cpu"), f"it plans cuda or cpu devices, not {setup.dev.type!r}"),
        (setup.decode.tile is not None, "tile= cannot be combined with it (it sets the decode budget): pass one"),
    )
    for wrong, why in problems:
        if wrong:
            raise InvalidInputError(f"budget= plans the job from the model files: {why}")

    def name(value: Any) -> str | None:
        return None if value is None else value if isinstance(value, str) else dtype_name(value)

    job = plan_for_files(
        setup.job.width,
        setup.job.height,
        setup.job.frames,
        budget_bytes=budget,
        dit=models[0],
        text_encoder=models[1],
        vae=models[2],
        device=setup.dev.type,
        dit_storage=name(setup.dit.storage_dtype),
        t5_storage=name(setup.t5.storage_dtype),
        vae_dtype=name(setup.vae.compute_dtype),
        compute_dtype=name(setup.dit.compute_dtype),
        attention=setup.dit.attention,
        batch_cfg=None if batch_cfg else False,
        **({} if parallel is None else {"cfg_parallel": parallel.layout.cfg_parallel, "sp": parallel.layout.sp}),
        loras=[getattr(lora, "path", lora) for lora, _ in setup.lora.loras],
        teacache=setup.sampling.teacache_threshold > 0,
    )
    require_fit(job)
    logger.info("memory plan:\n%s", job.summary())
    return job


def _apply_plan(setup: _Setup, plan: Any) -> _Setup:
    """``setup`` with the plan's choices: storage dtypes, load devices and streaming of the models loaded here,
    CFG batching and the decode's tiling. A plan changes no model; the phases apply what it says."""
    from .memory.planning.planner import Plan

    if plan is None:
        return setup
    check_instance("plan", plan, Plan, "from mochi_core.plan or mochi_core.memory.plan_for_files")

    def load_device(where: str) -> torch.device:  # the job's own device (its CUDA index) when the kinds match
        d = torch.device(where)
        return setup.dev if d.type == setup.dev.type and d.index is None else d

    dit_storage = resolve_dtype(plan.dit_storage_dtype, what="plan dit_storage", choice=DIT_STORAGE)
    t5_storage = resolve_dtype(plan.t5_storage_dtype, what="plan t5_storage", choice=T5_STORAGE)
    return replace(
        setup,
        dit=replace(setup.dit, device=load_device(plan.dit_load_device), storage_dtype=dit_storage),
        t5=replace(setup.t5, device=load_device(plan.t5_load_device), storage_dtype=t5_storage),  # type: ignore[arg-type]
        sampling=replace(setup.sampling, batch_cfg=plan.batch_cfg),
        decode=plan.decode_options(),
        dit_streaming=plan.dit_streaming,
        t5_streaming=plan.t5_streaming,
        plan=plan,
    )


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------


def _encode_phase(
    text_encoder: PathLike | TextEncoder, setup: _Setup, prompts: list[str], *, tokenizer: Any
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """T5 features and mask of ``prompts``, and the file format; a T5 loaded here is released, also on failure.
    In a multi-process run only rank 0 encodes; the features are broadcast to the others."""
    from .memory.streaming import apply_streaming

    if setup.parallel is not None and not setup.parallel.is_root:
        return (*setup.parallel.share_features(None, None), "")
    owns = setup.owns["t5"]
    enc: Any = None
    streamer: Any = None
    try:
        if owns:
            enc = load_text_encoder(text_encoder, tokenizer=tokenizer, options=setup.t5)
            blocks = enc.model.encoder.block
            streamer = apply_streaming(enc.model, setup.t5_streaming, device=setup.dev, blocks=blocks)
            if streamer is not None:
                enc.device = setup.dev  # tokens go to the compute device; streamed layers come to them
        else:
            enc = text_encoder
        fmt = str(getattr(enc, "format_name", ""))
        feat, mask = enc.encode(prompts)
    except BaseException as exc:
        if owns:
            _drop_frames(exc)
        raise
    finally:
        if streamer is not None:
            streamer.remove()  # waits for its copies and unpins its host memory now, not at garbage collection
        del enc, streamer
        if owns:
            release_memory(setup.dev)
    if setup.parallel is not None:  # the T5 ran once, on rank 0
        feat, mask = setup.parallel.share_features(feat, mask)
    return feat, mask, fmt


def _sampling_phase(
    dit: PathLike | torch.nn.Module,
    setup: _Setup,
    conds: tuple[Conditioning, Conditioning | None],
    *,
    start_latent: torch.Tensor | None,
    callbacks: dict[str, Any],
    timings: dict[str, float],
    stats: SamplingStats | None = None,
) -> tuple[torch.Tensor, str]:
    """The final latent (DiT space) and the DiT's format; a DiT loaded here gets the job's LoRAs and the plan's block
    streaming and is released afterwards, also on failure or interrupt. A DiT passed in is used as it is, with the
    job's LoRAs (if any) active while it samples. ``stats`` is filled with the DiT passes run and skipped."""
    from .lora import apply_loras, loras_applied
    from .memory.streaming import apply_streaming

    owns = setup.owns["dit"]
    model: Any = None
    streamer: Any = None
    scope = contextlib.ExitStack()
    t0 = time.perf_counter()
    try:
        if owns:
            from .dit import load_dit

            model = load_dit(dit, options=setup.dit)
            if setup.lora.loras:  # before streaming: the LoRA tensors then travel with their blocks
                apply_loras(model, setup.lora.loras)
            streamer = apply_streaming(model, setup.dit_streaming, device=setup.dev)
        else:
            model = dit
            if setup.lora.loras:  # a DiT passed in gets them for this job only
                scope.enter_context(loras_applied(model, setup.lora.loras))
        fmt = str(getattr(model, "checkpoint_format", ""))
        timings["dit_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        job = setup.job
        noise = make_noise(job.seed, frames=job.frames, height=job.height, width=job.width, device=setup.dev)
        wrapped = model if setup.parallel is None else setup.parallel.wrap_dit(model)
        try:
            latent = sample(
                wrapped, noise, *conds, options=setup.sampling, start_latent=start_latent, stats=stats, **callbacks
            )
        finally:
            if wrapped is not model:
                wrapped.close()  # a DiT passed in leaves without the sequence-parallel hook
            del wrapped
    except BaseException as exc:
        if owns:
            _drop_frames(exc)
        raise
    finally:
        if streamer is not None:
            streamer.remove()  # waits for its copies and unpins its host memory now, not at garbage collection
        scope.close()  # after the streamer is gone: a DiT passed in is left with the LoRAs it had before
        del model, streamer
        if owns:
            release_memory(setup.dev)
    timings["sampling_s"] = time.perf_counter() - t0
    return latent, fmt


def _decode_phase(
    vae: PathLike | Any, setup: _Setup, latent: torch.Tensor, *, callbacks: dict[str, Any]
) -> torch.Tensor | None:
    """Frames (F, H, W, 3) float32 in [0, 1] on the CPU (None on the ranks other than 0 of a multi-process run,
    whose tiles rank 0 assembles). The decoded video leaves the device as soon as the decode returns, so the
    device never holds its float32 / clamped / re-laid-out copies; a VAE loaded here is released."""
    from .vae import denormalize_latent, load_vae

    owns = setup.owns["vae"]
    decoder: Any = None
    try:
        decoder = load_vae(vae, options=setup.vae) if owns else vae
        decode = setup.decode
        if setup.parallel is not None:
            callbacks = {**callbacks, "share": setup.parallel.tile_share()}
        decoded = decoder.decode(
            denormalize_latent(latent), memory_budget=decode.memory_budget, tile=decode.tile, **callbacks
        )
        video = None if decoded is None else decoded[0].cpu()  # None: another rank assembles the video
        del decoded
    except BaseException as exc:
        if owns:
            _drop_frames(exc)
        raise
    finally:
        del decoder
        if owns:
            release_memory(setup.dev)
    return None if video is None else decoded_to_frames(video)


def _speed(setup: _Setup, stats: SamplingStats) -> dict[str, Any]:
    """The summary's record of the speed options and of the DiT passes that ran and were skipped."""
    args = setup.sampling
    return {
        "preset": args.preset,
        "teacache_threshold": args.teacache_threshold,
        "max_skip_steps": args.max_skip_steps,
        "stg_scale": args.stg_scale,
        "stg_blocks": list(args.stg_blocks) if args.stg_scale else [],
        "stg_rescale": args.stg_rescale,
        **{k: v for k, v in stats.as_dict().items() if k != "steps"},
    }


def _summary(setup: _Setup, latent: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serializable summary of a finished job (settings, formats, timings, plan, device peaks)."""
    job, args = setup.job, setup.sampling
    summary: dict[str, Any] = {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "frames": job.frames,
        "fps": 30,
        "steps": args.steps,
        "sigmas": list(args.sigmas),
        "batch_cfg": args.batch_cfg and args.needs_uncond,
        "denoise": args.denoise,
        "device": str(setup.dev),
        "latent_shape": list(latent.shape),
        "loras": [
            {"file": os.path.basename(str(getattr(x, "path", x))), "strength": strength}
            for x, strength in setup.lora.loras
        ],
        **extra,
        "timings": {k: round(v, 3) for k, v in extra["timings"].items()},
    }
    if setup.plan is not None:
        summary["plan"] = setup.plan.to_dict()
    if setup.parallel is not None:
        summary["parallel"] = setup.parallel.describe()
    summary.update(device_peaks(setup.dev))
    return summary


def reset_device_peaks(dev: torch.device) -> None:
    """Start this job's peak-memory count at zero (CUDA counts peaks per process, across jobs)."""
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(dev)


def device_peaks(dev: torch.device) -> dict[str, int]:
    """Peak bytes allocated (tensors) and reserved (the caching allocator's pool) on ``dev`` since the last
    :func:`reset_device_peaks`; empty for devices without such counters."""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {}
    return {
        "cuda_peak_bytes": int(torch.cuda.max_memory_allocated(dev)),
        "cuda_peak_reserved_bytes": int(torch.cuda.max_memory_reserved(dev)),
    }


# ----------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------


# fmt: off
def generate(
    prompt: str, *,
    dit: PathLike | torch.nn.Module, vae: PathLike | Any, text_encoder: PathLike | TextEncoder,
    negative_prompt: str = "", tokenizer: PathLike | None = None,
    width: int = 848, height: int = 480, frames: int = 31, seed: int = 0,
    steps: int | None = None, cfg: float | None = None, threshold_noise: float = 0.025,
    linear_steps: int | None = None, sigmas: Sequence[float] | None = None,
    cfg_schedule: Sequence[float] | None = None, batch_cfg: bool = True,
    preset: str = "default", teacache_threshold: float = 0.0, max_skip_steps: int = 0,
    stg_scale: float = 0.0, stg_blocks: Sequence[int] | str | None = None, stg_rescale: float = 0.0,
    start_latent: torch.Tensor | None = None, denoise: float = 1.0,
    device: str | torch.device = "cpu", attention: str = "sdpa",
    compute_dtype: str | torch.dtype | None = None, dit_storage_dtype: str | torch.dtype | None = None,
    t5_storage_dtype: str | torch.dtype | None = None,
    vae_compute_dtype: str | torch.dtype | None = None, vae_storage_dtype: str | torch.dtype | None = None,
    memory_budget: int | None = None, tile: Any = None, budget: int | str | None = None, plan: Any = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None, should_stop: Callable[[], bool] | None = None,
    decode_progress: Callable[..., None] | None = None, loras: Sequence[Any] | None = None, parallel: Any = None,
    dtype: str | torch.dtype | None = None, vae_dtype: str | torch.dtype | None = None,
) -> GenerationResult:
    # fmt: on
    """Generate one video from ``prompt``; returns a :class:`GenerationResult`. Every input is checked before any
    weight is read (:class:`InvalidInputError` names the argument). Arguments: docs/python-api.md; models given as
    paths or objects, ``budget=`` and ``plan=``: the module docstring. ``start_latent`` (1, 12, T, H/8, W/8) in DiT
    space with ``denoise`` < 1: video-to-video; ``loras``: ``[(path or LoRA, strength), ...]`` active while the
    DiT samples; ``parallel``: a :class:`mochi_core.parallel.ParallelRun` (frames on rank 0).
    """
    t_start = time.perf_counter()
    job = JobOptions.resolve(
        prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, frames=frames, seed=seed
    )
    by_preset = preset != "default"  # a preset sets steps and cfg itself (SamplingOptions.resolve checks the name)
    sampling = SamplingOptions.resolve(
        steps=64 if steps is None and not by_preset else steps,
        cfg=6.0 if cfg is None and cfg_schedule is None and not by_preset else cfg,
        threshold_noise=threshold_noise, linear_steps=linear_steps, sigmas=sigmas,
        cfg_schedule=cfg_schedule, denoise=denoise, batch_cfg=batch_cfg, has_start_latent=start_latent is not None,
        preset=preset, teacache_threshold=teacache_threshold, max_skip_steps=max_skip_steps, stg_scale=stg_scale,
        stg_blocks=stg_blocks, stg_rescale=stg_rescale,
    )  # fmt: skip
    if start_latent is not None:  # one video: batch 1, the latent size of the job
        check_start_latent(start_latent, (1, *job.latent_shape))
    dev = _device(device, parallel)
    models = _model_options(
        dev, attention, compute_dtype=compute_dtype, dit_storage_dtype=dit_storage_dtype, dtype=dtype,
        t5_storage_dtype=t5_storage_dtype, vae_compute_dtype=vae_compute_dtype, vae_dtype=vae_dtype,
        vae_storage_dtype=vae_storage_dtype,
    )  # fmt: skip
    decode = DecodeOptions.resolve(memory_budget=memory_budget, tile=tile)
    lora = LoRAOptions.resolve(loras=loras)
    _check_callables(callback=callback, should_stop=should_stop, decode_progress=decode_progress)
    owns = _check_models(dit, text_encoder, vae, tokenizer)
    setup = _Setup(job, sampling, dev, *models, decode=decode, owns=owns, lora=lora)
    if budget is not None and plan is None:
        plan = _plan_job(setup, budget, (dit, text_encoder, vae), sampling.batch_cfg, parallel)
    setup = _apply_parallel(_apply_plan(setup, plan), parallel, dit)
    reset_device_peaks(dev)
    timings: dict[str, float] = {}
    formats: dict[str, str] = {}

    t0 = time.perf_counter()  # -- phase 1: T5 --
    prompts = [job.prompt, job.negative_prompt] if sampling.needs_uncond else [job.prompt]
    feat, mask, formats["t5"] = _encode_phase(text_encoder, setup, prompts, tokenizer=tokenizer)
    conds = ((feat[:1], mask[:1]), (feat[1:2], mask[1:2]) if sampling.needs_uncond else None)
    del feat, mask
    timings["text_encoding_s"] = time.perf_counter() - t0
    stats = SamplingStats()  # -- phase 2: DiT sampling --
    latent, formats["dit"] = _sampling_phase(
        dit, setup, conds, start_latent=start_latent, callbacks={"callback": callback, "should_stop": should_stop},
        timings=timings, stats=stats,
    )  # fmt: skip
    del conds
    t0 = time.perf_counter()  # -- phase 3: VAE decode --
    video = _decode_phase(vae, setup, latent, callbacks={"progress": decode_progress, "should_stop": should_stop})
    timings["decode_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    cfgs = sampling.cfg if cfg_schedule is None else list(sampling.cfgs)
    summary = _summary(setup, latent, {"cfg": cfgs, "formats": formats, "timings": timings, **_speed(setup, stats)})
    logger.info("generated %d frames %dx%d in %.1f s", job.frames, job.width, job.height, timings["total_s"])
    return GenerationResult(frames=video, latent=latent.cpu(), summary=summary)
