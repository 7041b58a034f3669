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
optional callables ``prepare_t5(encoder, device)`` / ``prepare_dit(model, device)`` run after the pipeline loaded
that model from a path (e.g. to install block streaming); a model passed in keeps its own placement.

Every argument is checked before any weight is read (:func:`mochi_core.sampling.check_sampling_args` for the
sampler's; :mod:`mochi_core.devices`, :mod:`mochi_core.precision` and :mod:`mochi_core.checks` for devices, dtypes,
budgets and model arguments). When a phase fails, the model it loaded is released before the error propagates
(the exception's finished frames are cleared, so a caught error does not keep it alive).
"""

from __future__ import annotations

import gc
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import check_callable, check_model_arg, check_positive_bytes, check_storage_dtype
from .devices import check_device
from .errors import InvalidInputError
from .precision import check_compute_dtype, dtype_name, parse_dtype
from .sampling import (
    SamplingArgs,
    check_sampling_args,
    check_seed,
    check_start_latent,
    latent_shape,
    make_noise,
    sample,
    validate_size,
)
from .scalars import as_bool, as_int
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


def _plan_value(plan: Any, name: str, default: Any) -> Any:
    if plan is None:
        return default
    value = plan.get(name) if isinstance(plan, dict) else getattr(plan, name, None)
    return default if value is None else value


def _load_device(value: Any, dev: torch.device) -> torch.device:
    """A plan's load device ("cuda", "cpu") made concrete: the job's own device when the kinds match."""
    d = torch.device(value)
    return dev if d.type == dev.type and d.index is None else d


def _dtype_name(value: str | torch.dtype | None) -> str | None:
    """A dtype argument as the planner's name: None for None / "auto" / "default", "q8_0" / "q4_0" as they are."""
    if isinstance(value, str) and value.strip().lower() in ("q8_0", "q4_0"):
        return value.strip().lower()
    parsed = parse_dtype(value, what="dtype")
    return None if parsed is None else dtype_name(parsed)


def _check_decode_choice(memory_budget: int | None, tile: Any) -> None:
    """The decode takes a memory budget (tiles planned from it) or explicit tiles, not both."""
    if memory_budget is not None and tile is not None:
        raise InvalidInputError(
            "tile= cannot be combined with memory_budget= or budget= (which sets the decode budget): pass one"
        )


def _parallel_device(parallel: Any) -> torch.device:
    """The device of this rank of a :class:`~mochi_core.parallel.ParallelRun` (it replaces ``device``)."""
    from .parallel import ParallelRun

    if not isinstance(parallel, ParallelRun):
        raise InvalidInputError(f"parallel must be a mochi_core.parallel.ParallelRun; got {type(parallel).__name__}")
    return parallel.device


def _check_heads(parallel: Any, dit: Any) -> None:
    """The sequence split must divide the DiT's heads (read from the file header or the loaded model)."""
    if parallel.layout.sp > 1:
        if isinstance(dit, (str, os.PathLike)):
            from .dit.loader import read_dit_header

            heads = read_dit_header(dit)[1].num_heads
        else:
            heads = getattr(getattr(dit, "config", None), "num_heads", None)
        if isinstance(heads, int):
            parallel.layout.check_heads(heads)


@dataclass(frozen=True)
class _Checked:
    """What :func:`_check_inputs` established: the device, the sampler settings and which models are paths."""

    dev: torch.device
    sampling: SamplingArgs
    owns_t5: bool
    owns_dit: bool
    owns_vae: bool


def _check_inputs(
    prompt: str,
    negative_prompt: str,
    size: tuple[int, int, int],
    models: tuple[Any, Any, Any],
    *,
    tokenizer: Any,
    sampling: dict[str, Any],
    start_latent: Any,
    device: Any,
    dtypes: dict[str, Any],
    attention: str,
    memory_budget: Any,
    tile: Any,
    callbacks: dict[str, Any],
) -> _Checked:
    """Every other argument of :func:`generate` (sizes, seed and batch_cfg are normalized by it first), cheapest
    first; model files last (their headers are read)."""
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise InvalidInputError("prompt and negative_prompt must be strings")
    width, height, frames = size
    validate_size(frames, height, width)
    args = check_sampling_args(**sampling, has_start_latent=start_latent is not None)
    if start_latent is not None:
        # generate() renders one video: batch 1, the latent size of (frames, height, width)
        check_start_latent(start_latent, (1, *latent_shape(frames, height, width)))
    dev = check_device(device, what="device")
    check_compute_dtype("dtype", dtypes["dtype"], device=dev)
    check_compute_dtype("vae_dtype", dtypes["vae_dtype"], device=dev)
    check_storage_dtype(dtypes["dit_storage_dtype"], name="dit_storage_dtype", quantized=("q8_0", "q4_0"))
    check_storage_dtype(dtypes["t5_storage_dtype"], name="t5_storage_dtype")
    from .vae.loader import check_vae_storage_dtype

    check_vae_storage_dtype(dtypes["vae_storage_dtype"], what="vae_storage_dtype")
    from .dit.attention import check_backend

    check_backend(attention)
    check_positive_bytes(memory_budget, name="memory_budget")
    if tile is not None:
        from .vae.tiling import TilePlan

        TilePlan.parse(tile)
    _check_decode_choice(memory_budget, tile)
    for name, fn in callbacks.items():
        check_callable(fn, name=name)
    dit, text_encoder, vae = models
    owns_t5 = check_model_arg(text_encoder, name="text_encoder", method="encode", loader="load_text_encoder")
    owns_dit = check_model_arg(dit, name="dit", method=None, loader="load_dit")
    owns_vae = check_model_arg(vae, name="vae", method="decode", loader="load_vae")
    from .memory.files import check_model_paths

    # the files given as paths are checked from their headers now, as the loaders will (kind, completeness)
    check_model_paths(
        dit=dit if owns_dit else None, text_encoder=text_encoder if owns_t5 else None, vae=vae if owns_vae else None
    )
    if tokenizer is not None and not owns_t5:
        raise InvalidInputError(
            "tokenizer= is used only when text_encoder is a path; a loaded text_encoder keeps the tokenizer it was "
            "loaded with (load_text_encoder(..., tokenizer=...)): drop tokenizer= or pass the T5 path"
        )
    if owns_t5 and not isinstance(tokenizer, T5Tokenizer):
        find_tokenizer(tokenizer)  # a missing tokenizer is refused now, not after planning
    return _Checked(dev, args, owns_t5, owns_dit, owns_vae)


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


def _encode_phase(
    text_encoder: PathLike | TextEncoder,
    owns: bool,
    prompts: list[str],
    *,
    tokenizer: Any,
    dev: torch.device,
    plan: Any,
    t5_storage_dtype: str | torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """T5 features and mask of ``prompts``, and the file format; a T5 loaded here is released, also on failure."""
    enc: Any = None
    try:
        if owns:
            enc = load_text_encoder(
                text_encoder,
                tokenizer=tokenizer,
                device=_load_device(_plan_value(plan, "t5_load_device", dev), dev),
                storage_dtype=_plan_value(plan, "t5_storage_dtype", t5_storage_dtype),
            )
            prepare_t5 = _plan_value(plan, "prepare_t5", None)
            if callable(prepare_t5):
                enc = prepare_t5(enc, dev)
        else:
            enc = text_encoder
        fmt = str(getattr(enc, "format_name", ""))
        feat, mask = enc.encode(prompts)
    except BaseException as exc:
        if owns:
            _drop_frames(exc)
        raise
    finally:
        del enc
        if owns:
            release_memory(dev)
    return feat, mask, fmt


def _sampling_phase(
    dit: PathLike | torch.nn.Module,
    owns: bool,
    conds: tuple[Conditioning, Conditioning | None],
    *,
    dev: torch.device,
    plan: Any,
    load: dict[str, Any],
    noise: torch.Tensor,
    sampling: SamplingArgs,
    sample_kwargs: dict[str, Any],
    timings: dict[str, float],
    parallel: Any = None,
) -> tuple[torch.Tensor, str]:
    """The final latent (DiT space) and the DiT's format; a DiT loaded here gets the plan's ``prepare_dit`` and is
    released afterwards, also on failure or interrupt. A DiT passed in is used as it is."""
    model: Any = None
    t0 = time.perf_counter()
    try:
        if owns:
            from .dit import load_dit

            model = load_dit(dit, device=_load_device(_plan_value(plan, "dit_load_device", dev), dev), **load)
            prepare = _plan_value(plan, "prepare_dit", None)
            if callable(prepare):
                model = prepare(model, dev)
        else:
            model = dit
        fmt = str(getattr(model, "checkpoint_format", ""))
        timings["dit_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        wrapped = model if parallel is None else parallel.wrap_dit(model)
        try:
            latent = sample(
                wrapped,
                noise,
                *conds,
                steps=sampling.steps,
                cfg=sampling.cfg,
                sigmas=list(sampling.sigmas),
                cfg_schedule=list(sampling.cfgs),
                denoise=sampling.denoise,
                **sample_kwargs,
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
        del model
        if owns:
            release_memory(dev)
    timings["sampling_s"] = time.perf_counter() - t0
    return latent, fmt


def _decode_phase(
    vae: PathLike | Any,
    owns: bool,
    latent: torch.Tensor,
    *,
    dev: torch.device,
    load: dict[str, Any],
    decode_kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """Frames (F, H, W, 3) float32 in [0, 1] on the CPU. The decoded video leaves the device as soon as the decode
    returns, so the device never holds its float32 / clamped / re-laid-out copies; a VAE loaded here is released."""
    from .vae import denormalize_latent, load_vae

    decoder: Any = None
    try:
        decoder = load_vae(vae, device=dev, **load) if owns else vae
        decoded = decoder.decode(denormalize_latent(latent), **decode_kwargs)
        video = None if decoded is None else decoded[0].cpu()  # None: another rank assembles the video
        del decoded
    except BaseException as exc:
        if owns:
            _drop_frames(exc)
        raise
    finally:
        del decoder
        if owns:
            release_memory(dev)
    return None if video is None else decoded_to_frames(video)


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
    parallel: Any = None,
) -> GenerationResult:
    """Generate one video from ``prompt``; returns a :class:`GenerationResult`.

    ``dit`` / ``vae`` / ``text_encoder``: checkpoint paths (loaded, used and released phase by phase) or loaded
    objects (``load_dit`` / ``load_vae`` / ``load_text_encoder`` results), which are used as they are (no plan
    hook touches them) and left to the caller. ``tokenizer``: only with a ``text_encoder`` path (see
    :func:`~mochi_core.text.find_tokenizer`); given with a loaded encoder it is refused, since that encoder keeps
    its own. ``width``, ``height`` (multiples of 16), ``frames`` (6k + 1), ``steps`` (>= 1), ``cfg`` (>= 0; 1 skips
    the unconditional pass), ``seed`` (integer in [0, 2**64), CPU noise, see :func:`make_noise`), ``sigmas`` /
    ``cfg_schedule`` (explicit per-step lists) as in :func:`sample`.
    ``device``: "cpu", "cuda", "cuda:N" or "mps" (refused when not available). ``dtype`` / ``vae_dtype``: DiT / VAE
    compute dtypes (fp32, bf16, fp16; default fp32 on CPU, bf16 on CUDA); T5 always computes in fp32.
    ``*_storage_dtype``: weight storage conversions (None keeps the files' dtypes). ``attention``: sdpa, flash, sage.
    ``start_latent`` (1, 12, T, H/8, W/8) in DiT (normalized) space with ``denoise`` in (0, 1): video-to-video as
    in :func:`sample` (encode a video with the VAE, then ``normalize_latent``).
    ``memory_budget`` (positive int, bytes) or ``tile`` (not both) go to the VAE decode. ``budget`` (bytes or
    "12GB"): device memory for the whole job; the planner chooses streaming, CFG batching and decode tiles (paths
    only; see module docstring). ``callback(step, total, x0)``, ``should_stop()`` as in :func:`sample`
    (``should_stop`` is also checked between decode tiles); ``decode_progress`` is passed to the VAE decode.
    ``parallel``: a :class:`mochi_core.parallel.ParallelRun` when several processes compute this video (call
    ``generate`` with the same arguments on every rank): the rank's own device replaces ``device``, rank 0 encodes
    the prompts and broadcasts the features, the DiT runs CFG-parallel and/or sequence-parallel (cond and uncond are
    then always one batch), the decode tiles are spread over the ranks, and only rank 0 gets ``frames``.
    Every input is validated before any weight is read; errors are :class:`InvalidInputError` naming the argument.
    """
    t_start = time.perf_counter()
    # integers and flags of any kind (numpy scalars, one-element tensors) as plain Python values
    width, height, frames = (as_int(n, v) for n, v in (("width", width), ("height", height), ("frames", frames)))
    seed = check_seed(seed)
    batch_cfg = as_bool("batch_cfg", batch_cfg)
    if parallel is not None:
        device = _parallel_device(parallel)
    size = (width, height, frames)
    models = (dit, text_encoder, vae)
    job = _check_inputs(
        prompt,
        negative_prompt,
        size,
        models,
        tokenizer=tokenizer,
        sampling={
            "steps": steps,
            "cfg": cfg,
            "threshold_noise": threshold_noise,
            "linear_steps": linear_steps,
            "sigmas": sigmas,
            "cfg_schedule": cfg_schedule,
            "denoise": denoise,
        },
        start_latent=start_latent,
        device=device,
        dtypes={
            "dtype": dtype,
            "vae_dtype": vae_dtype,
            "dit_storage_dtype": dit_storage_dtype,
            "t5_storage_dtype": t5_storage_dtype,
            "vae_storage_dtype": vae_storage_dtype,
        },
        attention=attention,
        memory_budget=memory_budget,
        tile=tile,
        callbacks={"callback": callback, "should_stop": should_stop, "decode_progress": decode_progress},
    )
    dev, args = job.dev, job.sampling
    if parallel is not None:
        _check_heads(parallel, dit)
    if budget is not None and plan is None:
        plan = _plan_job(
            budget,
            dev,
            models,
            size,
            compute_dtype=dtype,
            dit_storage=dit_storage_dtype,
            t5_storage=t5_storage_dtype,
            vae_dtype=vae_dtype,
            attention=attention,
            batch_cfg=batch_cfg,
        )
    # a plan's values override the arguments: checked like them, before any model loads
    batch_cfg = as_bool("plan batch_cfg", _plan_value(plan, "batch_cfg", batch_cfg))
    if parallel is not None and parallel.layout.cfg_parallel:
        batch_cfg = True  # the CFG halves of one batch go to the two CFG ranks
    memory_budget = check_positive_bytes(_plan_value(plan, "memory_budget", memory_budget), name="memory_budget")
    tile = _plan_value(plan, "tile", tile)
    _check_decode_choice(memory_budget, tile)
    if plan is not None:
        from .dit.attention import check_backend
        from .vae.tiling import TilePlan

        if tile is not None:
            TilePlan.parse(tile)
        check_backend(_plan_value(plan, "attention", attention))
    needs_uncond = args.needs_uncond
    timings: dict[str, float] = {}
    formats: dict[str, str] = {}

    # -- phase 1: T5 -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    prompts = [prompt, negative_prompt] if needs_uncond else [prompt]
    if parallel is None or parallel.is_root:
        feat, mask, formats["t5"] = _encode_phase(
            text_encoder,
            job.owns_t5,
            prompts,
            tokenizer=tokenizer,
            dev=dev,
            plan=plan,
            t5_storage_dtype=t5_storage_dtype,
        )
    else:
        feat = mask = None
        formats["t5"] = ""
    if parallel is not None:  # the T5 ran once, on rank 0
        feat, mask = parallel.share_features(feat, mask)
    positive = (feat[:1], mask[:1])
    negative = (feat[1:2], mask[1:2]) if needs_uncond else None
    del feat, mask
    timings["text_encoding_s"] = time.perf_counter() - t0

    # -- phase 2: DiT sampling -----------------------------------------------------------------------
    latent, formats["dit"] = _sampling_phase(
        dit,
        job.owns_dit,
        (positive, negative),
        dev=dev,
        plan=plan,
        load={
            "dtype": dtype,
            "storage_dtype": _plan_value(plan, "dit_storage_dtype", dit_storage_dtype),
            "attention": _plan_value(plan, "attention", attention),
        },
        noise=make_noise(seed, frames=frames, height=height, width=width, device=dev),
        sampling=args,
        sample_kwargs={
            "batch_cfg": batch_cfg,
            "start_latent": start_latent,
            "callback": callback,
            "should_stop": should_stop,
        },
        timings=timings,
        parallel=parallel,
    )
    del positive, negative

    # -- phase 3: VAE decode -------------------------------------------------------------------------
    t0 = time.perf_counter()
    video = _decode_phase(
        vae,
        job.owns_vae,
        latent,
        dev=dev,
        load={"dtype": vae_storage_dtype, "compute_dtype": vae_dtype},
        decode_kwargs={
            "memory_budget": memory_budget,
            "tile": tile,
            "progress": decode_progress,
            "should_stop": should_stop,
        }
        | ({} if parallel is None else {"share": parallel.tile_share()}),
    )
    timings["decode_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    summary: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "width": width,
        "height": height,
        "frames": frames,
        "fps": 30,
        "steps": args.steps,
        "cfg": args.cfg if cfg_schedule is None else list(args.cfgs),
        "sigmas": list(args.sigmas),
        "batch_cfg": batch_cfg and needs_uncond,
        "denoise": args.denoise,
        "device": str(dev),
        "latent_shape": list(latent.shape),
        "formats": formats,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    if plan is not None and hasattr(plan, "to_dict"):
        summary["plan"] = plan.to_dict()
    if parallel is not None:
        summary["parallel"] = parallel.describe()
    if dev.type == "cuda" and torch.cuda.is_available():
        summary["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    logger.info("generated %d frames %dx%d in %.1f s", frames, width, height, timings["total_s"])
    return GenerationResult(frames=video, latent=latent.cpu(), summary=summary)
