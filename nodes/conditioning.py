"""Text conditioning: MochiTextEncode -> core ``CONDITIONING``, and reading core CONDITIONING back for the sampler.

Format (ComfyUI ``comfy/sd.py`` ``CLIP.encode_from_tokens_scheduled`` with ``comfy/text_encoders/genmo.py``):
a list of ``[cond (1, L, 4096) float, {"attention_mask": (1, L) int64 0/1, "pooled_output": None}]``; core's
Mochi T5 pads to at least 256 tokens and keeps longer prompts whole. Our encode node produces the same structure
with the official Genmo tokenization (256 tokens, truncated; an empty prompt has an all-zero mask, as in Genmo's
pipeline), so core conditioning nodes can pass it along and core ``CLIPTextEncode`` output feeds our sampler.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import host
from .placement import placed, plan_text
from .registry import register
from .validation import invalid

logger = logging.getLogger(__name__)

__all__ = ["MochiTextEncode", "make_conditioning", "conditioning_to_t5", "check_text", "encode_on_compute_device"]


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

    listed = isinstance(conditioning, (list, tuple))
    entry = conditioning[0] if listed and conditioning else None
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], torch.Tensor):
        problem = "is empty" if listed and not conditioning else "is not a ComfyUI CONDITIONING ([[tensor, dict], ...])"
        raise InvalidInputError(
            f"{name} conditioning {problem}: connect a Mochi Text Encode (or CLIPTextEncode) output"
        )
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

    @classmethod
    def VALIDATE_INPUTS(cls, text: Any) -> bool | str:
        try:
            check_text(text)
        except ValueError as exc:
            return str(exc)
        return True

    def encode(self, t5: Any, text: str) -> tuple[list[list[Any]]]:
        check_text(text)
        feat, mask = encode_on_compute_device(t5, text)
        out = host.output_device()
        return (make_conditioning(feat.to(out), mask.to(out)),)


def check_text(text: Any) -> None:
    """``text`` must be one prompt string (``None`` = linked, checked at run time). ComfyUI turns a widget value
    into a string itself, so at queue time this catches API prompts that send a list (``"text": []`` or a list of
    prompts), which ComfyUI reads as a malformed link. Raises InvalidInputError."""
    if text is None or isinstance(text, str):
        return
    shown = "an empty list" if isinstance(text, (list, tuple)) and not text else f"{type(text).__name__} {text!r:.80}"
    raise invalid(
        f"text must be a prompt string (empty string = the official unconditional prompt), got {shown}; "
        "for several prompts use one Mochi Text Encode per prompt"
    )


def encode_on_compute_device(t5: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``text`` with the T5 placed on ComfyUI's compute device by the core planner (all layers resident, or
    the planned number with the others streamed from system RAM; :mod:`nodes.placement`).

    Out of memory while moving the weights falls back to encoding in system RAM (the encoder is whole there again,
    never left split between devices); any other error propagates with the weights back home.
    """
    from mochi_core.errors import DoesNotFitError

    device = host.compute_device()
    job = plan_text(t5, device)
    spec = job.plan.t5_streaming
    streamed = spec.depth - spec.resident_blocks
    logger.info(
        "%s",
        job.describe(
            "Mochi Text Encode",
            device,
            f"T5 {spec.resident_blocks}/{spec.depth} layers resident"
            + (f" ({streamed} streamed from system RAM)" if streamed else ""),
        ),
    )
    job.check("Mochi Text Encode")

    def set_device(dev: torch.device) -> None:
        t5.device = dev

    try:
        with (
            host.relative_paths("text_encoders"),
            placed("T5", t5.model, device, streaming=spec, blocks=t5.model.encoder.block, set_device=set_device),
        ):
            return t5.encode([text])
    except DoesNotFitError as exc:
        logger.warning("Mochi Text Encode: %s; encoding in system RAM instead", exc)
    return t5.encode([text])
