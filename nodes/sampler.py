"""MochiSampler: text-to-video and video-to-video sampling with Genmo's CFG Euler loop, in ComfyUI.

Wraps :func:`mochi_core.sample` (semantics of genmoai/mochi ``pipelines.py`` ``sample_model``):
linear-quadratic schedule (threshold, linear steps) or a core ``SIGMAS`` input, noise from a CPU generator seeded
with ``seed``, optional start ``LATENT`` + ``denoise``. Input and output LATENTs are core's
``{"samples": (B, 12, T, H/8, W/8)}`` in VAE space (like core ``EmptyMochiLatentVideo`` / ``VAEDecode``); the
node converts to DiT space (``normalize_latent``) before sampling and back (``denormalize_latent``) after.

Host integration: progress per step with optional latent previews, interrupt between steps
(``processing_interrupted``), and the DiT placed by the core planner (blocks resident, CFG batching) through
:mod:`nodes.placement`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import host
from .conditioning import conditioning_to_t5
from .latent import latent_samples
from .lora import lora_scope
from .placement import placed, plan_sampling
from .registry import register
from .validation import check_video_size, check_widget_values, video_size_inputs

logger = logging.getLogger(__name__)

MAX_SEED = 0xFFFFFFFFFFFFFFFF


_ABSENT: Any = object()  # VALIDATE_INPUTS default of an unconnected optional link input


def check_sampler_inputs(
    width: Any,
    height: Any,
    frames: Any,
    steps: Any,
    linear_steps: Any,
    threshold_noise: Any = None,
    *,
    size: bool = True,
    schedule: bool = True,
) -> None:
    """Checks of the inputs ``VALIDATE_INPUTS`` takes: the ranges of ``INPUT_TYPES`` (ComfyUI skips its own checks for
    them), the Mochi size rule (``size``: False when a latent gives the size) and the schedule rule (``schedule``:
    False when custom sigmas replace it), both the core's own (:mod:`mochi_core.options`, :mod:`mochi_core.sampling`). ``None`` = linked, not known at queue time: skipped there and checked at run
    time. Raises InvalidInputError (a ValueError) naming the input and the allowed values."""
    values = {"width": width, "height": height, "frames": frames, "steps": steps, "linear_steps": linear_steps}
    if threshold_noise is not None:
        values["threshold_noise"] = threshold_noise
    check_widget_values(MochiSampler, values)
    if size:
        # a linked (unknown) value is replaced by a valid stand-in so the known ones are still checked
        w, h, f = (
            (16 if width is None else width),
            (16 if height is None else height),
            (1 if frames is None else frames),
        )
        check_video_size(w, h, f)
    if schedule and steps is not None and linear_steps is not None:
        from mochi_core.sampling import linear_quadratic_schedule

        # the core's one schedule rule (as for the API and the CLI): linear_steps within 1..steps-1 (0 here = auto),
        # and a schedule that falls strictly from 1 to 0 (its error names the largest working value). A linked
        # threshold_noise is replaced by a stand-in that no schedule refuses, so linear_steps is still checked
        tau = 1e-6 if threshold_noise is None else threshold_noise
        linear_quadratic_schedule(steps, threshold_noise=tau, linear_steps=linear_steps or None)


def speed_inputs() -> dict[str, Any]:
    """The optional inputs that make sampling do less work (after the original ones, so saved workflows load)."""
    return {
        "preset": (
            ["default", "fast"],
            {
                "default": "default",
                "tooltip": "fast = FastMochi settings (8 steps, cfg 1.5, threshold_noise 0.1, 6 linear steps; for the "
                "distilled FastMochi weights): replaces steps, cfg, threshold_noise and linear_steps.",
            },
        ),
        "teacache_threshold": (
            "FLOAT",
            {
                "default": 0.0,
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": "TeaCache: skip DiT passes while the input changes less than this (0 = off; 0.06 ~1.5x, "
                "0.09 ~2.1x faster as published).",
            },
        ),
        "max_skip_steps": (
            "INT",
            {"default": 0, "min": 0, "max": 1000, "tooltip": "TeaCache: most steps skipped in a row (0 = no limit)."},
        ),
        "stg_scale": (
            "FLOAT",
            {
                "default": 0.0,
                "min": 0.0,
                "max": 10.0,
                "step": 0.1,
                "tooltip": "Spatiotemporal skip guidance scale (0 = off, 1 typical): one more DiT pass per step.",
            },
        ),
        "stg_blocks": (
            "STRING",
            {"default": "34", "tooltip": "STG: DiT blocks skipped in the perturbed pass, e.g. '34' or '30,34'."},
        ),
        "stg_rescale": (
            "FLOAT",
            {
                "default": 0.0,
                "min": 0.0,
                "max": 1.0,
                "step": 0.05,
                "tooltip": "STG: pull the guided prediction's spread back to the conditional one (0 = off, 0.7 typical).",
            },
        ),
    }


def speed_kwargs(
    preset: str, teacache_threshold: float, max_skip_steps: int, stg_scale: float, stg_blocks: str, stg_rescale: float
) -> dict[str, Any]:
    """Keyword arguments of ``mochi_core.sample`` for the speed inputs (checked there before the DiT runs)."""
    return {
        "preset": preset,
        "teacache_threshold": teacache_threshold,
        "max_skip_steps": max_skip_steps,
        "stg_scale": stg_scale,
        "stg_blocks": stg_blocks,
        "stg_rescale": stg_rescale,
    }


@register("MochiSampler", "Mochi Sampler")
class MochiSampler:
    CATEGORY = "Mochi/sampling"
    DESCRIPTION = (
        "Generates a Mochi latent video with Genmo's sampler (flow matching, CFG, Euler, linear-quadratic schedule). "
        "Takes Mochi Text Encode or core CLIPTextEncode (CLIPLoader type mochi) conditioning. With a latent and "
        "denoise < 1 it does video-to-video. Output is a core LATENT in VAE space, usable by core VAEDecode."
    )
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Sampled latent in VAE space, shape [batch, 12, (frames-1)/6+1, height/8, width/8].",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MOCHI_DIT", {"tooltip": "The DiT from Mochi DiT Loader."}),
                "positive": (
                    "CONDITIONING",
                    {
                        "tooltip": "What the video should show (Mochi Text Encode or core CLIPTextEncode with a mochi CLIP)."
                    },
                ),
                "negative": (
                    "CONDITIONING",
                    {"tooltip": "What to steer away from; the official default is an empty prompt."},
                ),
                **video_size_inputs("Ignored when a latent is connected."),
                "steps": (
                    "INT",
                    {
                        "default": 64,
                        "min": 1,
                        "max": 1000,
                        "tooltip": "Sampling steps (official: 64). Ignored when sigmas are connected.",
                    },
                ),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 6.0,
                        "min": 0.0,
                        "max": 30.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Classifier-free guidance scale (official: 6.0; 1.0 skips the negative pass).",
                    },
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": MAX_SEED,
                        "control_after_generate": True,
                        "tooltip": "Noise seed (CPU generator, so the same seed gives the same video on every device).",
                    },
                ),
                "threshold_noise": (
                    "FLOAT",
                    {
                        "default": 0.025,
                        "min": 0.001,
                        "max": 0.999,
                        "step": 0.001,
                        "tooltip": "Linear-quadratic schedule: noise level reached by the linear part (official 0.025).",
                    },
                ),
                "linear_steps": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 1000,
                        "tooltip": "Linear-quadratic schedule: number of linear steps; 0 = steps/2 (official).",
                    },
                ),
            },
            "optional": {
                "sigmas": (
                    "SIGMAS",
                    {
                        "tooltip": "Optional core SIGMAS (e.g. BasicScheduler linear_quadratic): replaces steps / threshold / linear steps. Must run from <= 1 down to 0."
                    },
                ),
                "latent": (
                    "LATENT",
                    {
                        "tooltip": "Optional start latent (VAE space, e.g. from Mochi VAE Encode or EmptyMochiLatentVideo): sets the size; with denoise < 1 it is video-to-video."
                    },
                ),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.01,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "With a latent: how much of it to redraw (1.0 = ignore its content, keep only its size).",
                    },
                ),
                **speed_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        width: Any,
        height: Any,
        frames: Any,
        steps: Any,
        linear_steps: Any,
        threshold_noise: Any,
        latent: Any = _ABSENT,
        sigmas: Any = _ABSENT,
        stg_blocks: Any = _ABSENT,
    ) -> bool | str:
        # ComfyUI passes None for a connected link input (latent, sigmas) and leaves an unconnected one out
        try:
            check_sampler_inputs(
                width, height, frames, steps, linear_steps, threshold_noise,
                size=latent is _ABSENT, schedule=sigmas is _ABSENT,
            )  # fmt: skip
            if isinstance(stg_blocks, str):
                from mochi_core.guidance import parse_blocks

                parse_blocks(stg_blocks)
        except ValueError as exc:
            return str(exc)
        return True

    def sample(
        self,
        model: Any,
        positive: Any,
        negative: Any,
        width: int,
        height: int,
        frames: int,
        steps: int,
        cfg: float,
        seed: int,
        threshold_noise: float,
        linear_steps: int,
        sigmas: torch.Tensor | None = None,
        latent: dict[str, torch.Tensor] | None = None,
        denoise: float = 1.0,
        preset: str = "default",
        teacache_threshold: float = 0.0,
        max_skip_steps: int = 0,
        stg_scale: float = 0.0,
        stg_blocks: str = "34",
        stg_rescale: float = 0.0,
    ) -> tuple[dict[str, torch.Tensor]]:
        import mochi_core
        from mochi_core.errors import InvalidInputError
        from mochi_core.sampling import SamplingStats, check_sampling_args

        speed = speed_kwargs(preset, teacache_threshold, max_skip_steps, stg_scale, stg_blocks, stg_rescale)
        if preset != "default":
            # a connected sigmas input is refused here, naming the preset's own schedule
            fixed = check_sampling_args(steps=None, cfg=None, sigmas=sigmas, **speed)
            logger.info(
                "Mochi: preset %s: %d steps, cfg %g (the steps, cfg, threshold_noise and linear_steps widgets are "
                "not used)", preset, fixed.steps, fixed.cfg,
            )  # fmt: skip
            steps, cfg = fixed.steps, fixed.cfg
            schedule: dict[str, Any] = {"steps": None, "cfg": None}
        else:
            schedule = {
                "steps": int(steps), "cfg": float(cfg), "threshold_noise": float(threshold_noise),
                "linear_steps": int(linear_steps) or None,
            }  # fmt: skip

        # linked inputs are known only now; a latent gives the size, custom sigmas replace the schedule
        check_sampler_inputs(
            width, height, frames, steps, linear_steps, threshold_noise,
            size=latent is None, schedule=sigmas is None and preset == "default",
        )  # fmt: skip
        dit = model.model
        pos = conditioning_to_t5(positive, "positive")
        neg = conditioning_to_t5(negative, "negative")
        want = dit.config.t5_feat_dim
        for name, (feat, _) in (("positive", pos), ("negative", neg)):
            if feat.shape[-1] != want:
                raise InvalidInputError(
                    f"{name} conditioning has {feat.shape[-1]} features per token but this DiT expects {want} "
                    "(T5-XXL): encode with Mochi Text Encode or CLIPLoader type 'mochi' + t5xxl"
                )
        start = None
        if latent is not None:
            batch, _, t, h, w = latent_samples(latent, "latent").shape
            frames, height, width = 6 * (t - 1) + 1, h * 8, w * 8
            logger.info("Mochi: size from the latent: %d frames, %dx%d, batch %d", frames, width, height, batch)
        else:
            batch = 1
        sig = None
        if sigmas is not None:
            sig = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist()]
            steps = len(sig) - 1
            schedule["steps"] = steps
            if latent is not None and denoise >= 1.0 and 0.0 < sig[0] < 1.0:
                denoise = sig[0]  # split/partial sigmas with a start latent: start from the latent at sigmas[0]
        if latent is not None and denoise < 1.0:
            start = mochi_core.normalize_latent(latent["samples"].to(torch.float32))
        elif denoise < 1.0:
            raise InvalidInputError(
                "denoise < 1 needs a latent to start from (video-to-video); use denoise 1.0 for text-to-video"
            )
        noise = mochi_core.make_noise(int(seed), frames=int(frames), height=int(height), width=int(width), batch=batch)
        progress = host.ProgressReporter(int(steps), previews=True)
        device = host.compute_device()
        job = plan_sampling(
            model,
            tuple(noise.shape),
            device,
            memory=model.memory,
            budget_bytes=model.budget_bytes,
            cfg_pass=float(cfg) != 1.0,
            text_shape=(max(pos[0].shape[1], neg[0].shape[1]), want),
            teacache=float(teacache_threshold) > 0,
        )
        job.check("Mochi Sampler")
        plan = job.plan
        spec = plan.dit_streaming
        streamed = spec.depth - spec.resident_blocks
        logger.info(
            "%s",
            job.describe(
                "Mochi Sampler",
                device,
                f"DiT {spec.resident_blocks}/{spec.depth} blocks resident"
                + (f" ({streamed} streamed from system RAM)" if streamed else "")
                + (", CFG batched" if plan.batch_cfg else ", CFG passes one at a time"),
            ),
        )
        stats = SamplingStats()
        with (
            host.interrupt_errors("Mochi Sampler"),
            host.relative_paths("diffusion_models"),  # a message naming the DiT file (a NaN weight) stays relative
            lora_scope(model),  # before placement: the LoRA tensors then move and stream with their blocks
            placed("DiT", dit, device, streaming=spec) as dev,
        ):
            out = mochi_core.sample(
                dit,
                noise.to(dev),
                (pos[0].to(dev), pos[1].to(dev)),
                (neg[0].to(dev), neg[1].to(dev)),
                **schedule,
                sigmas=sig,
                start_latent=start.to(dev) if start is not None else None,
                denoise=float(denoise),
                batch_cfg=plan.batch_cfg,
                callback=progress.callback(),
                should_stop=host.should_stop,
                stats=stats,
                **speed,
            )
        logger.info(
            "Mochi Sampler: %d steps, %d DiT passes run, %d skipped%s", stats.steps, stats.dit_passes,
            stats.dit_passes_skipped, f" (TeaCache {stats.teacache_pattern})" if stats.teacache_pattern else "",
        )  # fmt: skip
        samples = mochi_core.denormalize_latent(out).to(host.output_device())
        return ({"samples": samples},)
