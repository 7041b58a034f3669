"""Mochi LoRA node: adds a LoRA (Genmo's fine-tuner file or a diffusers / peft file) to a ``MOCHI_DIT``, chainable.

The node never changes the loaded model: it returns a new ``MOCHI_DIT`` handle (the same cached base model plus the
list of (LoRA, strength) so far). The sampler makes exactly that list active for its run and removes it afterwards
(:func:`lora_scope`), so another graph using the same cached base model (one without the LoRA, or with other
strengths) samples the base model bit for bit. Files come from ComfyUI's ``loras`` folder; ``VALIDATE_INPUTS``
reads only the header, so a pickle, a LoRA for another model (SD, Flux...) or a full checkpoint is refused when the
prompt is queued; layers and shapes are checked against the DiT when the node runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from . import host
from .loaders import _cached, _file_changed, _fingerprint, _queue_check
from .registry import register
from .validation import check_widget_values, invalid

logger = logging.getLogger(__name__)

FOLDER = "loras"


def check_lora_name(name: Any) -> str:
    """Resolve ``name`` in ComfyUI's ``models/loras`` and check from its header that it is a Mochi LoRA; returns the
    full path. Raises InvalidInputError naming the file and what it holds."""
    from mochi_core.errors import MochiError
    from mochi_core.lora import check_lora_file

    if not isinstance(name, str) or not name:
        raise invalid(f"no LoRA file selected (got {name!r}): put a file in models/{FOLDER} and pick it")
    listed = host.filename_list(FOLDER)
    if host.comfy_available() and name not in listed:
        shown = ", ".join(listed[:8]) + (" ..." if len(listed) > 8 else "") if listed else "(folder is empty)"
        raise invalid(f"lora_name={name!r} is not in models/{FOLDER}; available: {shown}")
    try:
        path = host.full_path(FOLDER, name)
        check_lora_file(path)
    except (MochiError, OSError) as exc:
        raise invalid(str(exc)) from exc
    return path


@register("MochiLoRA", "Mochi LoRA")
class MochiLoRA:
    CATEGORY = "Mochi/loaders"
    DESCRIPTION = (
        "Adds a Mochi LoRA from models/loras to the DiT: Genmo's fine-tuner files (model_N.lora.safetensors, alpha "
        "from their metadata) or diffusers / peft files (CogVideoX-factory, FastVideo). Chain several nodes to stack "
        "LoRAs. Works with every weight storage (fp8 and GGUF weights stay as stored); the loaded model itself is "
        "not changed, so graphs without the LoRA keep the base model."
    )
    RETURN_TYPES = ("MOCHI_DIT",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The DiT with this LoRA added to the ones before; connect it to Mochi Sampler or another LoRA.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MOCHI_DIT", {"tooltip": "The DiT from Mochi DiT Loader (or from another Mochi LoRA)."}),
                "lora_name": (
                    host.filename_list(FOLDER),
                    {"tooltip": "LoRA file in models/loras (Genmo's model_N.lora.safetensors or a diffusers LoRA)."},
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -10.0,
                        "max": 10.0,
                        "step": 0.05,
                        "tooltip": "How strongly the LoRA acts: 1 = as trained (with the alpha stored in the file), "
                        "0 = off, negative = subtracted.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name: Any, strength: Any) -> bool | str:
        def check() -> None:
            check_widget_values(cls, {"strength": strength})
            if lora_name is not None:  # None = linked: checked when the node runs
                check_lora_name(lora_name)

        return _queue_check(check)

    @classmethod
    def IS_CHANGED(cls, lora_name: Any, **_: Any) -> str:
        return _file_changed(FOLDER, lora_name)

    def apply(self, model: Any, lora_name: str, strength: float) -> tuple[Any]:
        import mochi_core
        from mochi_core.lora import check_loras

        check_widget_values(type(self), {"strength": strength})
        path = check_lora_name(lora_name)
        lora = _cached(("lora", path, _fingerprint(path)), lambda: mochi_core.load_lora(path))
        loras = (*model.loras, (lora, float(strength)))
        check_loras(model.model, list(loras))  # names and shapes against this DiT, nothing changed
        logger.info(
            "Mochi: LoRA %s at strength %g on %s (%d in the chain)", lora_name, strength, model.name, len(loras)
        )
        return (dataclasses.replace(model, loras=loras),)


@contextlib.contextmanager
def lora_scope(handle: Any) -> Iterator[None]:
    """Make exactly ``handle.loras`` active on the handle's (shared, cached) model for the body, none afterwards."""
    from mochi_core.lora import apply_loras

    dit = handle.model
    apply_loras(dit, list(handle.loras))
    try:
        yield
    finally:
        apply_loras(dit, [])
