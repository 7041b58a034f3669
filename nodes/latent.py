"""Latent nodes: an empty Mochi latent with frame and size validation.

The LATENT is ComfyUI's own ``{"samples": (B, 12, (frames-1)//6+1, H/8, W/8)}`` in VAE space, exactly like core
``EmptyMochiLatentVideo``, so it mixes with core nodes.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import register
from .validation import check_video_size, check_widget_values, video_size_inputs


def latent_samples(latent: Any, name: str) -> torch.Tensor:
    """The ``samples`` tensor (B, 12, T, H/8, W/8) of the Mochi LATENT input ``name``; refuses anything else
    (InvalidInputError naming ``name`` and the shape it got)."""
    from mochi_core.checks import check_tensor

    samples = latent.get("samples") if isinstance(latent, dict) else None
    return check_tensor(name, samples, (None, 12, None, None, None), layout="(B, 12, T, H/8, W/8) (a Mochi LATENT)")


@register("MochiEmptyLatent", "Mochi Empty Latent Video")
class MochiEmptyLatent:
    CATEGORY = "Mochi/latent"
    DESCRIPTION = (
        "An all-zero Mochi latent for a video of the given size and length (frames = 6k+1, sizes multiples of 16). "
        "Same layout as core EmptyMochiLatentVideo: [batch, 12, (frames-1)/6+1, height/8, width/8]."
    )
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Zero latent in VAE space, shape [batch, 12, (frames-1)/6+1, height/8, width/8].",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                **video_size_inputs(),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Number of videos in the batch."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width: Any, height: Any, frames: Any, batch_size: Any) -> bool | str:
        try:
            check_latent_inputs(width, height, frames, batch_size)
        except ValueError as exc:
            return str(exc)
        return True

    def make(self, width: int, height: int, frames: int, batch_size: int) -> tuple[dict[str, torch.Tensor]]:
        check_latent_inputs(width, height, frames, batch_size)  # linked inputs are known only now
        t = (frames - 1) // 6 + 1
        return ({"samples": torch.zeros(batch_size, 12, t, height // 8, width // 8)},)


def check_latent_inputs(width: Any, height: Any, frames: Any, batch_size: Any) -> None:
    """Ranges of ``INPUT_TYPES`` (ComfyUI skips them for inputs ``VALIDATE_INPUTS`` takes) and the Mochi size rules.

    ``None`` = linked, not known at queue time: skipped (checked again at run time). Raises InvalidInputError.
    """
    values = {"width": width, "height": height, "frames": frames, "batch_size": batch_size}
    check_widget_values(MochiEmptyLatent, values)
    # a linked (unknown) value is replaced by a valid stand-in so the known ones are still checked
    check_video_size(16 if width is None else width, 16 if height is None else height, 1 if frames is None else frames)
