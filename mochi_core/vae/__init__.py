"""Mochi causal video VAE: decoder, encoder, tiled / budgeted decoding, latent normalisation.

See README "VAE and tiled decoding". Semantics of genmoai/mochi ``src/genmo/mochi_preview/vae/``; docs/numerics.md §4-§5.
"""

from __future__ import annotations

from .config import DecoderConfig, EncoderConfig
from .decoder import Decoder
from .encoder import Encoder
from .latents import (
    LATENT_RGB_BIAS,
    LATENT_RGB_FACTORS,
    LATENTS_MEAN,
    LATENTS_STD,
    denormalize_latent,
    latent_preview,
    normalize_latent,
)
from .layers import add_fourier_features
from .loader import VAE, VAE_STORAGE_DTYPES, build_from_state_dict, check_vae_storage_dtype, load_vae
from .tiling import TilePlan, choose_tiles, count_tiles, decode_working_set_bytes, min_decode_bytes, smallest_tile

__all__ = [
    "VAE",
    "load_vae",
    "build_from_state_dict",
    "check_vae_storage_dtype",
    "VAE_STORAGE_DTYPES",
    "DecoderConfig",
    "EncoderConfig",
    "Decoder",
    "Encoder",
    "TilePlan",
    "choose_tiles",
    "decode_working_set_bytes",
    "min_decode_bytes",
    "smallest_tile",
    "count_tiles",
    "normalize_latent",
    "denormalize_latent",
    "latent_preview",
    "add_fourier_features",
    "LATENTS_MEAN",
    "LATENTS_STD",
    "LATENT_RGB_FACTORS",
    "LATENT_RGB_BIAS",
]
