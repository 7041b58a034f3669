"""VAE nodes: budgeted tiled decode (LATENT -> IMAGE) and encode (IMAGE -> LATENT) for video-to-video.

Wraps ``mochi_core.VAE.decode`` / ``encode`` (semantics of genmoai/mochi ``pipelines.py`` decode_latents /
decode_latents_tiled_spatial, ``demos/test_encoder_decoder.py``; see ``docs/architecture.md``). Decode takes its
tile from the core planner for its budget (:mod:`nodes.placement`; the tile inputs force one), reports progress per
tile, stops between tiles on interrupt, and retries an out-of-memory with half the working set instead of failing
(the sampled latent stays in ComfyUI's cache either way). Behaviour copied from core ``comfy/sd.py`` ``VAE.decode``: leave the ``except``
block before retrying so the failed attempt's tensors can be freed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import host
from .latent import latent_samples
from .placement import GB, placed, plan_decode
from .registry import register
from .validation import check_widget_values, invalid

logger = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3
MAX_OOM_RETRIES = 6


#: the decode node's tile inputs, in pixels
TILE_PIXEL_INPUTS = ("tile_height", "tile_width")


def check_decode_inputs(memory_budget_gb: Any, tile_frames: Any, tile_height: Any, tile_width: Any) -> None:
    """The decode node's budget and tiles: ranges of ``INPUT_TYPES`` (NaN and inf refused), tile sides in pixels
    multiples of 8 (one latent). ``None`` = linked, checked at run time. Raises InvalidInputError naming the
    first bad input and the allowed values."""
    values = {"memory_budget_gb": memory_budget_gb, "tile_frames": tile_frames}
    values.update(tile_height=tile_height, tile_width=tile_width)
    check_widget_values(MochiVAEDecodeTiled, values)
    for name in TILE_PIXEL_INPUTS:
        value = values[name]
        if value is not None and value % 8:
            low = value // 8 * 8
            nearest = f"{low} or {low + 8}" if low else "8"
            raise invalid(
                f"{name}={value} is not allowed: {name} must be a multiple of 8 pixels (one latent), or 0 = whole "
                f"frame / chosen from the budget; nearest valid: {nearest}"
            )


def input_tile(
    latent_shape: tuple[int, ...], tile_frames: int, tile_height: int, tile_width: int
) -> tuple[int, int, int, int] | None:
    """The tile the decode node's tile inputs force, as latent ``(frames, height, width, overlap)``; None when all
    are 0 (the planner chooses). A side left at 0 is the whole latent side; split sides overlap by a quarter of the
    smaller side (1 to 4 latents)."""
    if not (tile_frames or tile_height or tile_width):
        return None
    _, _, t, h, w = latent_shape
    th = tile_height // 8 if tile_height else h
    tw = tile_width // 8 if tile_width else w
    overlap = max(1, min(4, min(th, tw) // 4)) if (th < h or tw < w) else 0
    return (int(tile_frames) or t, th, tw, overlap)


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in ~[-1, 1] -> core IMAGE (B*F, H, W, 3) float32 in [0, 1]."""
    b, c, f, h, w = video.shape
    img = ((video.to(torch.float32) + 1.0) * 0.5).clamp_(0.0, 1.0)
    return img.permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c).contiguous()


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """Core IMAGE (F, H, W, 3) in [0, 1] -> (1, 3, F, H, W) in [-1, 1]."""
    return (images[..., :3].to(torch.float32) * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)


def _require_part(vae: Any, part: str) -> None:
    """Refuse a VAE without its ``part`` ("decoder" or "encoder"), saying which file has it."""
    from mochi_core.errors import InvalidInputError

    if getattr(vae, part) is None:
        raise InvalidInputError(
            f"this VAE file has no {part}: load mochi_vae.safetensors (Comfy-Org) or Genmo's {part} file"
        )


@register("MochiVAEDecodeTiled", "Mochi VAE Decode (Tiled)")
class MochiVAEDecodeTiled:
    CATEGORY = "Mochi/vae"
    DESCRIPTION = (
        "Decodes a Mochi latent to video frames within a memory budget: whole frames in exact temporal chunks when "
        "they fit, otherwise spatial tiles with shared normalisation statistics (no seams, no skipped frames). "
        "Out-of-memory is retried with a smaller budget."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The video frames, IMAGE [frames, height, width, 3] in 0..1 (batch videos one after another).",)
    FUNCTION = "decode"

    @classmethod
    def VALIDATE_INPUTS(cls, memory_budget_gb: Any, tile_height: Any = None, tile_width: Any = None) -> bool | str:
        # tile_frames keeps ComfyUI's own range check (it is not an argument here)
        try:
            check_decode_inputs(memory_budget_gb, None, tile_height, tile_width)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "vae": ("MOCHI_VAE", {"tooltip": "The VAE from Mochi VAE Loader."}),
                "samples": (
                    "LATENT",
                    {
                        "tooltip": "Mochi latent in VAE space (from Mochi Sampler, core KSampler or EmptyMochiLatentVideo)."
                    },
                ),
                "memory_budget_gb": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1024.0,
                        "step": 0.25,
                        "tooltip": "Memory the decode may use, in GB (10^9 bytes, as the planner and the command line count); tiles are chosen to fit. 0 = automatic: the free memory after ComfyUI made room (its --reserve-vram kept free).",
                    },
                ),
            },
            "optional": {
                "tile_frames": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 1024,
                        "tooltip": "Latent frames per temporal chunk (1 latent frame = 6 video frames); 0 = chosen from the budget. Any tile size set overrides the budget.",
                    },
                ),
                "tile_height": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "Tile height in pixels (multiple of 8); 0 = whole frame / chosen from the budget.",
                    },
                ),
                "tile_width": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "Tile width in pixels (multiple of 8); 0 = whole frame / chosen from the budget.",
                    },
                ),
            },
        }

    def decode(
        self,
        vae: Any,
        samples: dict[str, torch.Tensor],
        memory_budget_gb: float,
        tile_frames: int = 0,
        tile_height: int = 0,
        tile_width: int = 0,
    ) -> tuple[torch.Tensor]:
        from mochi_core.errors import DoesNotFitError
        from mochi_core.vae import TilePlan

        check_decode_inputs(memory_budget_gb, tile_frames, tile_height, tile_width)  # linked values are known now
        latent = latent_samples(samples, "samples")
        _require_part(vae, "decoder")
        shape = tuple(int(v) for v in latent.shape)
        tile = input_tile(shape, tile_frames, tile_height, tile_width)
        device = host.compute_device()
        job = plan_decode(vae, shape, device, budget_bytes=int(memory_budget_gb * GB), tile=tile)
        if tile is None:
            job.check("Mochi VAE Decode")
        plan = job.plan
        forced = " from the tile inputs" if tile is not None else ""
        logger.info("%s", job.describe("Mochi VAE Decode", device, plan.tile_text() + forced))
        planned = TilePlan(*plan.decode_tile, plan.decode_overlap, plan.decode_norm)

        def set_device(dev: torch.device) -> None:
            vae.device = dev

        with (
            host.interrupt_errors("Mochi VAE Decode"),
            host.relative_paths("vae"),
            placed("VAE decoder", vae.decoder, device, set_device=set_device),
        ):
            video = self._decode_with_retry(vae, latent, planned, DoesNotFitError)
        return (video_to_images(video).to(host.output_device()),)

    @staticmethod
    def _decode_with_retry(vae: Any, latent: torch.Tensor, tile: Any, fit_error: type) -> torch.Tensor:
        """Decode by the planned ``tile``; on out-of-memory halve the working set it was planned for and decode
        with the largest tile that fits that (the VAE's own choice from a budget), logging each retry."""
        progress = host.ProgressReporter(1)

        def on_progress(done: int, n: int) -> None:
            progress.total = n
            progress.update(done)

        budget = None
        for attempt in range(MAX_OOM_RETRIES + 1):
            try:
                if budget is None:
                    return vae.decode(latent, tile=tile, progress=on_progress, should_stop=host.should_stop)
                return vae.decode(latent, memory_budget=budget, progress=on_progress, should_stop=host.should_stop)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
                if not host.is_oom(exc):
                    raise
                what = f"tile {tile}" if budget is None else f"budget {budget / MiB:.0f} MiB"
                logger.warning("Mochi VAE decode out of memory with %s (attempt %d)", what, attempt + 1)
            # outside the except block: the exception's frames no longer pin the failed attempt's tensors
            host.soft_empty_cache()
            if budget is None:
                budget = vae.working_set_bytes(tuple(latent.shape), tile)
            budget = max(1, int(budget) // 2)
            logger.warning("Mochi VAE decode: retrying with a memory budget of %.0f MiB", budget / MiB)
        raise fit_error(
            f"VAE decode still out of memory after {MAX_OOM_RETRIES} smaller retries (last budget {budget / MiB:.0f} MiB); "
            "the sampled latent is kept in ComfyUI's cache: free GPU memory or set a smaller budget and queue again"
        )


@register("MochiVAEEncode", "Mochi VAE Encode")
class MochiVAEEncode:
    CATEGORY = "Mochi/vae"
    DESCRIPTION = (
        "Encodes video frames (IMAGE batch) to a Mochi latent for video-to-video (Mochi Sampler with denoise < 1). "
        "Frames are trimmed to 6k+1 and the size cropped to multiples of 16 (centre), as needed by the model."
    )
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Latent in VAE space [1, 12, (frames-1)/6+1, height/8, width/8] (posterior mean).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "vae": (
                    "MOCHI_VAE",
                    {"tooltip": "A Mochi VAE whose file contains the encoder (Comfy-Org mochi_vae.safetensors does)."},
                ),
                "images": (
                    "IMAGE",
                    {
                        "tooltip": "Video frames [frames, height, width, 3] in 0..1 (e.g. from core LoadVideo + GetVideoComponents)."
                    },
                ),
            }
        }

    def encode(self, vae: Any, images: torch.Tensor) -> tuple[dict[str, torch.Tensor]]:
        from mochi_core.errors import InvalidInputError
        from mochi_core.ops import weight_nbytes

        _require_part(vae, "encoder")
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] < 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else None
            raise InvalidInputError(f"images must be an IMAGE batch [frames, height, width, 3]; got {shape}")
        n, h, w, _ = images.shape
        frames = (n - 1) // 6 * 6 + 1
        hh, ww = h // 16 * 16, w // 16 * 16
        if hh < 16 or ww < 16:
            raise InvalidInputError(f"images are {w}x{h}; Mochi needs at least 16x16 pixels")
        if (frames, hh, ww) != (n, h, w):
            logger.warning(
                "Mochi VAE Encode: using %d of %d frames and a centred %dx%d crop of %dx%d", frames, n, ww, hh, w, h
            )
        y0, x0 = (h - hh) // 2, (w - ww) // 2
        video = images_to_video(images[:frames, y0 : y0 + hh, x0 : x0 + ww])
        progress = host.ProgressReporter(1)
        device = host.compute_device()
        # the planner has no encode phase: ask ComfyUI for the encoder weights and 4 GiB of activations
        host.make_room(weight_nbytes(vae.encoder) + 4 * GiB + host.reserved_bytes(device), device)

        def set_device(dev: torch.device) -> None:
            vae.device = dev

        with (
            host.interrupt_errors("Mochi VAE Encode"),
            host.relative_paths("vae"),
            placed("VAE encoder", vae.encoder, device, set_device=set_device) as dev,
        ):
            latent = vae.encode(video.to(dev))
            progress.update(1)
        return ({"samples": latent.to(torch.float32).to(host.output_device())},)
