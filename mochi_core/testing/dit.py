"""Tiny random Mochi DiT weights with the official keys, and writers for every published DiT layout.

Layouts (docs/formats.md): ``official`` (fp32, no prefix), ``comfy_bf16`` (``model.diffusion_model.``,
bf16), ``comfy_scaled_fp8`` (Linear weights fp8_e4m3fn + ``scale_weight``, marker ``scaled_fp8``, rest bf16),
``comfy_all_in_one`` (the scaled-fp8 DiT plus small VAE and T5 tensors under their prefixes), ``kijai_fp8``
(block Linear weights cast to fp8_e4m3fn without scale, rest fp32), ``kijai_bf16`` (bf16 with fp32
``pos_frequencies`` and norms), ``gguf_q8_0`` / ``gguf_q4_0`` (block Linear weights whose input width is a multiple
of 32 as ``<layer>.Q8_0_qweight`` / ``.Q4_0_qweight`` uint8 blocks, the rest fp32), ``diffusers`` (one
``diffusion_pytorch_model.safetensors`` in a folder) and ``diffusers_sharded`` (two shards + index).
Which tensors the real fp8 / GGUF files quantize is not published (spec §10); these writers make one plausible choice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import ops
from ..dit.config import DiTConfig
from ..formats.dit import diffusers_name

__all__ = [
    "DIT_FORMATS",
    "tiny_dit_config",
    "random_dit_state_dict",
    "to_diffusers_state_dict",
    "write_dit",
    "write_vae_like",
    "write_t5_like",
]

DIT_FORMATS = (
    "official",
    "comfy_bf16",
    "comfy_scaled_fp8",
    "comfy_all_in_one",
    "kijai_fp8",
    "kijai_bf16",
    "gguf_q8_0",
    "gguf_q4_0",
    "diffusers",
    "diffusers_sharded",
)
COMFY_PREFIX = "model.diffusion_model."


def tiny_dit_config() -> DiTConfig:
    """The golden tiny configuration (depth 2, widths 96/48, 2 heads, T5 width 32)."""
    return DiTConfig.tiny()


def random_dit_state_dict(config: DiTConfig | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights with the official keys: q/k norm weights 1 + 0.05·N(0,1), everything else 0.05·N(0,1)."""
    cfg = config or tiny_dit_config()
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in cfg.expected_shapes().items():
        t = torch.randn(shape, generator=g) * 0.05
        out[key] = t + 1.0 if "_norm_" in key else t
    return out


def _is_linear_weight(key: str, t: torch.Tensor) -> bool:
    return key.endswith(".weight") and t.dim() == 2


def to_diffusers_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official -> diffusers ``MochiTransformer3DModel`` names (q/k/v split, SwiGLU and final-mod halves swapped)."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        last = key.startswith(f"blocks.{depth - 1}.")
        names = diffusers_name(key, last_block=last)
        if len(names) == 3:
            for n, part in zip(names, t.chunk(3, dim=0)):
                out[n] = part.contiguous()
            continue
        if key.endswith(("mlp_x.w1.weight", "mlp_y.w1.weight")) or key.startswith("final_layer.mod."):
            a, b = t.chunk(2, dim=0)
            t = torch.cat([b, a], dim=0)
        out[names[0]] = t.contiguous()
    return out


def _comfy_scaled(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {COMFY_PREFIX + "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, t in sd.items():
        if _is_linear_weight(key, t):
            q, s = ops.quantize_scaled_fp8(t)
            out[COMFY_PREFIX + key] = q
            out[COMFY_PREFIX + key[: -len(".weight")] + ".scale_weight"] = s
        else:
            out[COMFY_PREFIX + key] = t.to(torch.bfloat16)
    return out


def _gguf(sd: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.startswith("blocks.") and _is_linear_weight(key, t) and t.shape[1] % ops.QK == 0:
            q = ops.quantize_q8_0(t) if fmt == "q8_0" else ops.quantize_q4_0(t)
            out[key[: -len(".weight")] + f".{fmt.upper()}_qweight"] = q
        else:
            out[key] = t.to(torch.float32)
    return out


def write_vae_like(path: str | os.PathLike[str]) -> Path:
    """A small file that holds (only) official VAE decoder/encoder key names, for refusal tests."""
    p = Path(path)
    save_file(
        {
            "blocks.0.0.weight": torch.zeros(4, 12, 1, 1, 1),
            "blocks.2.blocks.3.stack.5.weight": torch.zeros(4, 4, 3, 3, 3),
            "output_proj.weight": torch.zeros(3, 4),
        },
        str(p),
    )
    return p


def write_t5_like(path: str | os.PathLike[str]) -> Path:
    """A small file with T5 encoder key names, for refusal tests."""
    p = Path(path)
    save_file(
        {
            "shared.weight": torch.zeros(8, 4),
            "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4),
            "encoder.final_layer_norm.weight": torch.ones(4),
        },
        str(p),
    )
    return p


def write_dit(path: str | os.PathLike[str], fmt: str, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write official-key weights ``state_dict`` (default: :func:`random_dit_state_dict`) in layout ``fmt``.

    Returns the path to pass to ``load_dit``: a file, or a folder for the diffusers layouts.
    """
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in (state_dict or random_dit_state_dict()).items()}
    p = Path(path)
    if fmt not in DIT_FORMATS:
        raise ValueError(f"unknown DiT format {fmt!r}; allowed: {', '.join(DIT_FORMATS)}")
    if fmt in ("diffusers", "diffusers_sharded"):
        p.mkdir(parents=True, exist_ok=True)
        dsd = to_diffusers_state_dict(sd)
        if fmt == "diffusers":
            save_file(dsd, str(p / "diffusion_pytorch_model.safetensors"))
            return p
        names = list(dsd)
        half = len(names) // 2
        shards = {
            "diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
            "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:],
        }
        weight_map = {}
        for shard, keys in shards.items():
            save_file({k: dsd[k] for k in keys}, str(p / shard))
            weight_map.update({k: shard for k in keys})
        (p / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1)
        )
        return p
    if fmt == "official":
        out = sd
    elif fmt == "comfy_bf16":
        out = {COMFY_PREFIX + k: v.to(torch.bfloat16) for k, v in sd.items()}
    elif fmt == "comfy_scaled_fp8":
        out = _comfy_scaled(sd)
    elif fmt == "comfy_all_in_one":
        out = _comfy_scaled(sd)
        g = torch.Generator().manual_seed(1)
        out.update(
            {
                "vae.decoder.blocks.0.0.weight": torch.randn(8, 12, 1, 1, 1, generator=g).to(torch.bfloat16),
                "vae.encoder.layers.0.weight": torch.randn(8, 15, generator=g).to(torch.bfloat16),
                "vae.encoder.output_proj.weight": torch.randn(24, 8, generator=g).to(torch.bfloat16),
                "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": torch.ones(32, dtype=torch.float16),
                "text_encoders.t5xxl.transformer.shared.weight": torch.randn(10, 32, generator=g).to(torch.float16),
            }
        )
    elif fmt == "kijai_fp8":
        out = {
            k: (v.to(torch.float8_e4m3fn) if k.startswith("blocks.") and _is_linear_weight(k, v) else v)
            for k, v in sd.items()
        }
    elif fmt == "kijai_bf16":
        out = {k: (v if k == "pos_frequencies" or "_norm_" in k else v.to(torch.bfloat16)) for k, v in sd.items()}
    else:  # gguf_q8_0 / gguf_q4_0
        out = _gguf(sd, fmt.split("_", 1)[1])
    save_file(out, str(p))
    return p
