"""VAE nodes: budgeted tiled decode (LATENT -> IMAGE) and encode (IMAGE -> LATENT) for video-to-video.

Wraps ``mochi_core.VAE.decode`` / ``encode`` (semantics of genmoai/mochi ``pipelines.py`` decode_latents /
decode_latents_tiled_spatial, ``demos/test_encoder_decoder.py``; mochi-spec.md §4-§5). Decode picks its tiles from
a memory budget (auto: the free memory after ComfyUI made room), reports progress per tile, stops between tiles
on interrupt, and retries an out-of-memory with half the budget instead of failing (the sampled latent stays in
ComfyUI's cache either way). Behaviour copied from core ``comfy/sd.py`` ``VAE.decode``: leave the ``except``
block before retrying so the failed attempt's tensors can be freed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from . import host
from .registry import register

logger = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3
#: bytes of one GB of the ``memory_budget_gb`` input (10^9, like the planner and ``--budget 12GB`` of the CLI)
GB = 10**9
#: fraction of the free memory an automatic decode budget may take
AUTO_FRACTION = 0.8
MAX_OOM_RETRIES = 6


@contextlib.contextmanager
def vae_on_device(vae: Any, nbytes: int) -> Iterator[torch.device]:
    """Move the VAE weights to the compute device (after asking ComfyUI for ``nbytes`` of room) and back after.

    The move is inside the ``try``: when it fails part-way (out of memory while moving), ``finally`` still puts
    every weight back on the VAE's home device, so the cached VAE is never left split between devices; the
    out-of-memory is reported as :class:`mochi_core.errors.DoesNotFitError` with what to do.
    """
    from mochi_core.errors import DoesNotFitError

    device = host.compute_device()
    home = vae.device
    if device == home or device.type == "cpu":
        yield home
        return
    host.make_room(nbytes, device)
    oom = False
    try:
        try:
            vae.to(device)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
            if not host.is_oom(exc):
                raise
            oom = True
        if oom:  # outside the except block, so the failed attempt's tensors can be freed by the move back
            vae.to(home)
            host.soft_empty_cache()
            raise DoesNotFitError(
                f"not enough free memory on {device} for the VAE weights ({vae.weight_bytes() / GiB:.2f} GiB); "
                "the VAE stays loaded on the offload device: free GPU memory (or close other models) and queue again"
            )
        yield device
    finally:
        vae.to(home)  # every weight back home, also after a failure part-way through the move
        host.soft_empty_cache()


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in ~[-1, 1] -> core IMAGE (B*F, H, W, 3) float32 in [0, 1]."""
    b, c, f, h, w = video.shape
    img = ((video.to(torch.float32) + 1.0) * 0.5).clamp_(0.0, 1.0)
    return img.permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c).contiguous()


def images_to_video(images: torch.Tensor) -> torch.Tensor:
    """Core IMAGE (F, H, W, 3) in [0, 1] -> (1, 3, F, H, W) in [-1, 1]."""
    return (images[..., :3].to(torch.float32) * 2.0 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)


def _auto_budget(vae: Any, device: torch.device) -> int:
    free = host.make_room(vae.weight_bytes() + 2 * GiB, device)
    if device.type != "cpu":
        free -= vae.weight_bytes() if vae.device != device else 0
    return max(64 * MiB, int(free * AUTO_FRACTION))


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
                        "tooltip": "Memory the decode may use, in GB (10^9 bytes, as the planner and the command line count); tiles are chosen to fit. 0 = automatic (80% of the free memory after ComfyUI unloads its models).",
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
        from mochi_core.errors import DoesNotFitError, InvalidInputError

        latent = samples.get("samples") if isinstance(samples, dict) else None
        if not isinstance(latent, torch.Tensor) or latent.dim() != 5:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else None
            raise InvalidInputError(f"samples must be a Mochi LATENT (B, 12, T, H/8, W/8); got shape {shape}")
        _, _, t, h, w = latent.shape
        tile = None
        if tile_frames or tile_height or tile_width:
            th = max(1, tile_height // 8) if tile_height else h
            tw = max(1, tile_width // 8) if tile_width else w
            tile = (int(tile_frames) or t, th, tw, max(1, min(4, min(th, tw) // 4)) if (th < h or tw < w) else 0)
        budget = int(memory_budget_gb * GB) if memory_budget_gb > 0 else None
        with (
            host.interrupt_errors("Mochi VAE Decode"),
            vae_on_device(vae, vae.weight_bytes() + (budget or 2 * GiB)) as dev,
        ):
            if tile is None and budget is None:
                budget = _auto_budget(vae, dev)
            video = self._decode_with_retry(vae, latent, budget, tile, DoesNotFitError)
        return (video_to_images(video).to(host.output_device()),)

    @staticmethod
    def _decode_with_retry(
        vae: Any, latent: torch.Tensor, budget: int | None, tile: Any, fit_error: type
    ) -> torch.Tensor:
        """Decode by ``tile`` or ``budget``; on out-of-memory halve the budget (an explicit tile first becomes the
        budget it needed) and try again, logging each retry."""
        from mochi_core.vae import TilePlan

        progress = host.ProgressReporter(1)

        def on_progress(done: int, n: int) -> None:
            progress.total = n
            progress.update(done)

        for attempt in range(MAX_OOM_RETRIES + 1):
            try:
                if tile is not None:
                    return vae.decode(latent, tile=tile, progress=on_progress, should_stop=host.should_stop)
                return vae.decode(latent, memory_budget=budget, progress=on_progress, should_stop=host.should_stop)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
                if not host.is_oom(exc):
                    raise
                what = f"tile {tile}" if tile is not None else f"budget {budget / MiB:.0f} MiB"
                logger.warning("Mochi VAE decode out of memory with %s (attempt %d)", what, attempt + 1)
            # outside the except block: the exception's frames no longer pin the failed attempt's tensors
            host.soft_empty_cache()
            if tile is not None:
                budget = vae.working_set_bytes(tuple(latent.shape), TilePlan(*tile))
                tile = None
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

        if vae.encoder is None:
            raise InvalidInputError(
                "this VAE file has no encoder: load mochi_vae.safetensors (Comfy-Org) or Genmo's encoder file"
            )
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
        with host.interrupt_errors("Mochi VAE Encode"), vae_on_device(vae, vae.weight_bytes() + 4 * GiB) as dev:
            latent = vae.encode(video.to(dev))
            progress.update(1)
        return ({"samples": latent.to(torch.float32).to(host.output_device())},)
