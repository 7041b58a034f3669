"""Text conditioning: MochiTextEncode -> core ``CONDITIONING``, and reading core CONDITIONING back for the sampler.

Format (ComfyUI ``comfy/sd.py`` ``CLIP.encode_from_tokens_scheduled`` with ``comfy/text_encoders/genmo.py``):
a list of ``[cond (1, L, 4096) float, {"attention_mask": (1, L) int64 0/1, "pooled_output": None}]``; core's
Mochi T5 pads to at least 256 tokens and keeps longer prompts whole. Our encode node produces the same structure
with the official Genmo tokenization (256 tokens, truncated; an empty prompt has an all-zero mask: mochi-spec.md
§3.3), so core conditioning nodes can pass it along and core ``CLIPTextEncode`` output feeds our sampler.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import host
from .registry import register

logger = logging.getLogger(__name__)

__all__ = ["MochiTextEncode", "make_conditioning", "conditioning_to_t5"]


def make_conditioning(feat: torch.Tensor, mask: torch.Tensor) -> list[list[Any]]:
    """``feat (1, L, D)``, ``mask (1, L)`` bool -> core CONDITIONING ``[[feat, {"attention_mask": int64 mask}]]``."""
    return [[feat, {"attention_mask": mask.to(torch.int64), "pooled_output": None}]]


def conditioning_to_t5(conditioning: Any, name: str = "positive") -> tuple[torch.Tensor, torch.Tensor]:
    """Core CONDITIONING -> ``(feat (B, L, D) float32, mask (B, L) bool)`` for :func:`mochi_core.sample`.

    Uses the first entry (area / timestep-range entries of other models are not part of Mochi); a missing
    ``attention_mask`` means every token is valid. Raises :class:`mochi_core.errors.InvalidInputError` naming
    ``name`` for anything that is not a Mochi T5 conditioning.
    """
    from mochi_core.errors import InvalidInputError

    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise InvalidInputError(f"{name} conditioning is empty: connect a Mochi Text Encode (or CLIPTextEncode) output")
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], torch.Tensor):
        raise InvalidInputError(f"{name} conditioning is not a ComfyUI CONDITIONING ([[tensor, dict], ...])")
    if len(conditioning) > 1:
        logger.warning("Mochi: %s conditioning has %d entries; using the first one", name, len(conditioning))
    feat, extra = entry[0], entry[1] if isinstance(entry[1], dict) else {}
    if feat.dim() == 2:
        feat = feat.unsqueeze(0)
    if feat.dim() != 3:
        raise InvalidInputError(f"{name} conditioning tensor must be (B, L, D); got shape {tuple(feat.shape)}")
    mask = extra.get("attention_mask")
    if mask is None:
        mask = torch.ones(feat.shape[:2], dtype=torch.bool)
    else:
        mask = torch.as_tensor(mask)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.shape != feat.shape[:2]:
            raise InvalidInputError(
                f"{name} conditioning: attention_mask shape {tuple(mask.shape)} does not match the tokens {tuple(feat.shape[:2])}"
            )
        mask = mask.to(torch.bool)
    return feat.to(torch.float32), mask.to(feat.device)


@register("MochiTextEncode", "Mochi Text Encode")
class MochiTextEncode:
    CATEGORY = "Mochi/conditioning"
    DESCRIPTION = (
        "Encodes a prompt with T5-XXL exactly like Genmo's pipeline (256 tokens, attention mask; an empty prompt "
        "carries no text token, the official unconditional input). Output is core CONDITIONING with the mask inside."
    )
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Core CONDITIONING: [[T5 features (1, 256, 4096), {'attention_mask': (1, 256)}]].",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "t5": ("MOCHI_T5", {"tooltip": "The T5 encoder from Mochi T5 Loader."}),
                "text": (
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "default": "",
                        "tooltip": "The prompt. Leave empty for the negative prompt (official: no text token at all). Long prompts are cut at 256 tokens.",
                    },
                ),
            }
        }

    def encode(self, t5: Any, text: str) -> tuple[list[list[Any]]]:
        from mochi_core.errors import InvalidInputError
        from mochi_core.memory.streaming import move_module

        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
        device = host.compute_device()
        home = t5.device
        moved = False
        if device.type != "cpu" and device != home:
            need = int(t5.nbytes * 1.2) + 512 * 1024**2
            if host.make_room(need, device) > need:
                move_module(t5.model, device)
                t5.device, moved = device, True
            else:
                logger.info("Mochi: T5 stays on %s (not enough free memory on %s)", home, device)
        try:
            feat, mask = t5.encode([text])
        finally:
            if moved:
                move_module(t5.model, home)
                t5.device = home
                host.soft_empty_cache()
        out = host.output_device()
        return (make_conditioning(feat.to(out), mask.to(out)),)
