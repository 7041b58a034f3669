"""Tiny random Mochi VAE weights with the official key layout, and writers for every published VAE format.

Recipe (the one the golden test files were made with): GroupNorm weights 1 + 0.05 * randn, all other parameters
normal(0, 0.05), in parameter order after ``torch.manual_seed(seed)``. Formats (docs/formats.md):
official ``decoder.safetensors`` / ``encoder.safetensors`` (fp32), first-release ``vae.safetensors`` (decoder only),
Comfy-Org ``mochi_vae.safetensors`` (``decoder.`` / ``encoder.`` prefixes, 16-bit), Kijai bf16 decoder / encoder,
diffusers ``AutoencoderKLMochi`` (a ``vae/`` folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..formats.vae import to_diffusers
from ..vae.config import DecoderConfig, EncoderConfig
from ..vae.decoder import Decoder
from ..vae.encoder import Encoder
from ..vae.layers import GroupNormPerFrame

__all__ = [
    "random_decoder_state_dict",
    "random_encoder_state_dict",
    "write_official_decoder",
    "write_official_encoder",
    "write_first_release_vae",
    "write_comfy_vae",
    "write_kijai_decoder",
    "write_kijai_encoder",
    "write_diffusers_vae",
    "write_all_vae_formats",
    "VAE_FORMATS",
]

VAE_FORMATS = (
    "official_decoder",
    "official_encoder",
    "first_release_vae",
    "comfy_vae",
    "kijai_decoder_bf16",
    "kijai_encoder_bf16",
    "diffusers",
)


def _random(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    norms = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, GroupNormPerFrame)}
    out = {}
    for name, p in model.named_parameters():
        if name in norms:
            out[name] = 1 + 0.05 * torch.randn(p.shape)
        else:
            out[name] = torch.empty(p.shape).normal_(0, 0.05)
    return out


def random_decoder_state_dict(config: DecoderConfig | None = None, seed: int = 1) -> dict[str, torch.Tensor]:
    """Official-key decoder weights (fp32); default config = the golden tiny decoder."""
    with torch.device("meta"):
        model = Decoder(config or DecoderConfig.tiny())
    return _random(model, seed)


def random_encoder_state_dict(config: EncoderConfig | None = None, seed: int = 2) -> dict[str, torch.Tensor]:
    """Official-key encoder weights (fp32); default config = the golden tiny encoder."""
    with torch.device("meta"):
        model = Encoder(config or EncoderConfig.tiny())
    return _random(model, seed)


def _save(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sd.items()}, str(path))
    return path


def write_official_decoder(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    """genmo/mochi-1-preview ``decoder.safetensors``: official keys, fp32."""
    return _save(sd, Path(path), torch.float32)


def write_official_encoder(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    """genmo/mochi-1-preview ``encoder.safetensors``: official keys, fp32."""
    return _save(sd, Path(path), torch.float32)


def write_first_release_vae(path: str | Path, decoder_sd: dict[str, torch.Tensor]) -> Path:
    """First-release ``vae.safetensors`` (Oct 2024): the decoder alone, official keys, fp32."""
    return _save(decoder_sd, Path(path), torch.float32)


def write_comfy_vae(
    path: str | Path,
    decoder_sd: dict[str, torch.Tensor],
    encoder_sd: dict[str, torch.Tensor] | None,
    dtype: torch.dtype = torch.bfloat16,
    outer: str = "",
) -> Path:
    """Comfy-Org ``mochi_vae.safetensors``: ``decoder.`` / ``encoder.`` prefixes, 16-bit (``outer`` e.g. "vae.")."""
    sd = {f"{outer}decoder.{k}": v for k, v in decoder_sd.items()}
    if encoder_sd is not None:
        sd.update({f"{outer}encoder.{k}": v for k, v in encoder_sd.items()})
    return _save(sd, Path(path), dtype)


def write_kijai_decoder(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    """Kijai ``mochi_preview_vae_decoder_bf16.safetensors``: official keys, bf16."""
    return _save(sd, Path(path), torch.bfloat16)


def write_kijai_encoder(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    """Kijai ``mochi_preview_vae_encoder_bf16.safetensors``: official keys, bf16."""
    return _save(sd, Path(path), torch.bfloat16)


def write_diffusers_vae(
    folder: str | Path,
    decoder_sd: dict[str, torch.Tensor] | None,
    encoder_sd: dict[str, torch.Tensor] | None,
    decoder_config: DecoderConfig | None = None,
    encoder_config: EncoderConfig | None = None,
) -> Path:
    """diffusers ``AutoencoderKLMochi`` folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``."""
    folder = Path(folder)
    dcfg = decoder_config or DecoderConfig.tiny()
    ecfg = encoder_config or EncoderConfig(channels=(64, 32, 64, 32), num_res_blocks=dcfg.num_res_blocks)
    config = {
        "_class_name": "AutoencoderKLMochi",
        "in_channels": ecfg.in_channels,
        "out_channels": dcfg.out_channels,
        "encoder_block_out_channels": list(ecfg.channels),
        "decoder_block_out_channels": list(dcfg.channels),
        "latent_channels": dcfg.latent_dim,
        "layers_per_block": list(dcfg.num_res_blocks),
        "temporal_expansions": list(dcfg.temporal_expansions),
        "spatial_expansions": list(dcfg.spatial_expansions),
        "add_attention_block": list(ecfg.has_attentions),
        "scaling_factor": 1.0,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    _save(to_diffusers(decoder_sd, encoder_sd), folder / "diffusion_pytorch_model.safetensors")
    return folder


def write_all_vae_formats(
    folder: str | Path, decoder_sd: dict[str, torch.Tensor], encoder_sd: dict[str, torch.Tensor]
) -> dict[str, Path]:
    """Every format of :data:`VAE_FORMATS` under ``folder``; returns {format: path}."""
    folder = Path(folder)
    return {
        "official_decoder": write_official_decoder(folder / "decoder.safetensors", decoder_sd),
        "official_encoder": write_official_encoder(folder / "encoder.safetensors", encoder_sd),
        "first_release_vae": write_first_release_vae(folder / "vae.safetensors", decoder_sd),
        "comfy_vae": write_comfy_vae(folder / "mochi_vae.safetensors", decoder_sd, encoder_sd),
        "kijai_decoder_bf16": write_kijai_decoder(folder / "mochi_preview_vae_decoder_bf16.safetensors", decoder_sd),
        "kijai_encoder_bf16": write_kijai_encoder(folder / "mochi_preview_vae_encoder_bf16.safetensors", encoder_sd),
        "diffusers": write_diffusers_vae(folder / "vae", decoder_sd, encoder_sd),
    }
