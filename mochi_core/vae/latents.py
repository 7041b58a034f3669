"""Latent normalisation between DiT space and VAE space, and a cheap latent -> RGB preview.

Semantics of genmoai/mochi ``src/genmo/mochi_preview/vae/vae_stats.py`` (dit_latents_to_vae_latents /
vae_latents_to_dit_latents; the 12 means and stds, docs/numerics.md §4.1). The preview factors are the facts of
ComfyUI ``comfy/latent_formats.py`` class Mochi (they apply to DiT-space latents).
"""

from __future__ import annotations

import torch

from ..checks import check_tensor

__all__ = [
    "LATENT_CHANNELS",
    "LATENTS_MEAN",
    "LATENTS_STD",
    "LATENT_RGB_FACTORS",
    "LATENT_RGB_BIAS",
    "normalize_latent",
    "denormalize_latent",
    "latent_preview",
]

LATENT_CHANNELS = 12

LATENTS_MEAN: tuple[float, ...] = (
    -0.06730895953510081,
    -0.038011381506090416,
    -0.07477820912866141,
    -0.05565264470995561,
    0.012767231469026969,
    -0.04703542746246419,
    0.043896967884726704,
    -0.09346305707025976,
    -0.09918314763016893,
    -0.008729793427399178,
    -0.011931556316503654,
    -0.0321993391887285,
)
LATENTS_STD: tuple[float, ...] = (
    0.9263795028493863,
    0.9248894543193766,
    0.9393059390890617,
    0.959253732819592,
    0.8244560132752793,
    0.917259975397747,
    0.9294154431013696,
    1.3720942357788521,
    0.881393668867029,
    0.9168315692124348,
    0.9185249279345552,
    0.9274757570805041,
)

#: (12, 3) matrix: DiT-space latent channel -> RGB in about [-1, 1] (ComfyUI latent_formats.Mochi).
LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (-0.0069, -0.0045, 0.0018),
    (0.0154, -0.0692, -0.0274),
    (0.0333, 0.0019, 0.0206),
    (-0.1390, 0.0628, 0.1678),
    (-0.0725, 0.0134, -0.1898),
    (0.0074, -0.0270, -0.0209),
    (-0.0176, -0.0277, -0.0221),
    (0.5294, 0.5204, 0.3852),
    (-0.0326, -0.0446, -0.0143),
    (-0.0659, 0.0153, -0.0153),
    (0.0185, -0.0217, 0.0014),
    (-0.0396, -0.0495, -0.0281),
)
LATENT_RGB_BIAS: tuple[float, float, float] = (-0.0940, -0.1418, -0.1453)


def _stats(z: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor(f"{what}: latent", z, (None, LATENT_CHANNELS, None, None, None), layout="(B, 12, T, H, W)")
    mean = torch.tensor(LATENTS_MEAN, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENTS_STD, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
    return mean.to(z.dtype), std.to(z.dtype)


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """DiT space -> VAE space: ``z * std + mean`` per channel. z: (B, 12, T, H, W), same dtype out."""
    mean, std = _stats(z, "denormalize_latent")
    return z * std + mean


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """VAE space -> DiT space: ``(z - mean) / std`` per channel. z: (B, 12, T, H, W), same dtype out."""
    mean, std = _stats(z, "normalize_latent")
    return (z - mean) / std


def latent_preview(z_dit: torch.Tensor) -> torch.Tensor:
    """Cheap preview of a DiT-space latent (B, 12, T, H, W) -> (B, T, H, W, 3) in [0, 1] (no decoder)."""
    _stats(z_dit, "latent_preview")
    f = torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=z_dit.device)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32, device=z_dit.device)
    rgb = torch.einsum("bcthw,cr->bthwr", z_dit.to(torch.float32), f) + bias
    return ((rgb + 1) / 2).clamp(0, 1)
