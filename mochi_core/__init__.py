"""mochi_core: Genmo Mochi 1 (AsymmDiT, causal video VAE, T5 encoding, sampler) without ComfyUI.

The public API is imported lazily (PEP 562) so that ``import mochi_core`` is cheap and has no side
effects. See README.md "Python API".
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "MochiError": "mochi_core.errors",
    "InvalidInputError": "mochi_core.errors",
    "UnsupportedCheckpointError": "mochi_core.errors",
    "DoesNotFitError": "mochi_core.errors",
    "MochiInterrupted": "mochi_core.errors",
    "MissingBackendError": "mochi_core.errors",
    # DiT
    "DiTConfig": "mochi_core.dit",
    "load_dit": "mochi_core.dit",
    # LoRA
    "load_lora": "mochi_core.lora",
    "apply_loras": "mochi_core.lora",
    # VAE
    "load_vae": "mochi_core.vae",
    "normalize_latent": "mochi_core.vae",
    "denormalize_latent": "mochi_core.vae",
    # text
    "load_text_encoder": "mochi_core.text",
    # sampling
    "linear_quadratic_schedule": "mochi_core.sampling",
    "make_noise": "mochi_core.sampling",
    "sample": "mochi_core.sampling",
    "latent_shape": "mochi_core.sampling",
    # pipeline
    "generate": "mochi_core.pipeline",
    # memory
    "plan": "mochi_core.memory",
    # video files
    "write_mp4": "mochi_core.video",
    "write_png_frames": "mochi_core.video",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mochi_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
