"""LoRA for the Mochi DiT: Genmo's fine-tuner files and diffusers / peft files, stacked, at run time or merged.

``load_lora(path)`` reads a file (:mod:`.reader`); ``apply_loras(dit, [(lora, strength), ...])`` makes that list the
active LoRAs of a loaded DiT, ``[]`` removes them (:mod:`.apply`).
"""

from __future__ import annotations

from .apply import ActiveLoRAs, active_loras, apply_loras, check_loras, loras_applied, remove_loras
from .model import LoRA, LoRAPart
from .reader import LAYOUTS, check_lora_file, load_lora

__all__ = [
    "LAYOUTS",
    "LoRA",
    "LoRAPart",
    "ActiveLoRAs",
    "load_lora",
    "check_lora_file",
    "apply_loras",
    "check_loras",
    "remove_loras",
    "active_loras",
    "loras_applied",
]
