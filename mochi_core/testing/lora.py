"""Random LoRA files for a DiT configuration, in Genmo's fine-tuner layout or the diffusers / peft layout.

Genmo's layout (``model_{step}.lora.safetensors``): ``blocks.N.attn.{qkv_x,qkv_y,proj_x,proj_y}.lora_A`` (r, in) /
``.lora_B`` (out, r) in bfloat16, no ``proj_y`` in the last block, metadata ``kwargs`` = JSON with the ranks and
alphas. diffusers layout: ``transformer.transformer_blocks.N.attn1.<module>.lora_A.weight`` / ``.lora_B.weight`` in
float32, q / k / v sharing the fused layer's lora_A with lora_B split by rows, alpha in ``lora_adapter_metadata``.
Values are random (normal, std ``std``), not a trained LoRA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..dit.config import DiTConfig
from ..formats.dit import diffusers_name

__all__ = ["GENMO_LORA_LAYERS", "random_lora_factors", "write_lora"]

GENMO_LORA_LAYERS = ("attn.qkv_x", "attn.qkv_y", "attn.proj_x", "attn.proj_y")


def random_lora_factors(
    config: DiTConfig, *, rank: int = 4, seed: int = 0, std: float = 0.05
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Official layer name -> (lora_A (rank, in), lora_B (out, rank)) float32 for Genmo's four attention layers,
    values rounded to bfloat16 (so both layouts can hold exactly the same numbers)."""
    shapes = config.expected_shapes()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(config.depth):
        for leaf in GENMO_LORA_LAYERS:
            layer = f"blocks.{i}.{leaf}"
            if layer + ".weight" not in shapes:
                continue  # the last block has no proj_y
            out_f, in_f = shapes[layer + ".weight"]
            a = (torch.randn(rank, in_f, generator=g) * std).to(torch.bfloat16).to(torch.float32)
            b = (torch.randn(out_f, rank, generator=g) * std).to(torch.bfloat16).to(torch.float32)
            out[layer] = (a, b)
    return out


def write_lora(
    path: str | os.PathLike[str],
    layout: str = "genmo",
    config: DiTConfig | None = None,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    """Write a random LoRA for ``config`` (default: the tiny golden configuration) in ``layout`` "genmo" or
    "diffusers" (same values for the same seed); returns the path."""
    cfg = config or DiTConfig.tiny()
    factors = random_lora_factors(cfg, rank=rank, seed=seed, std=std)
    tensors: dict[str, torch.Tensor] = {}
    if layout == "genmo":
        for layer, (a, b) in factors.items():
            tensors[layer + ".lora_A"] = a.to(torch.bfloat16)
            tensors[layer + ".lora_B"] = b.to(torch.bfloat16)
        kwargs = {
            "qkv_proj_lora_rank": rank,
            "qkv_proj_lora_alpha": alpha,
            "qkv_proj_lora_dropout": 0.0,
            "out_proj_lora_rank": rank,
            "out_proj_lora_alpha": alpha,
            "out_proj_lora_dropout": 0.0,
        }
        metadata = {"kwargs": json.dumps(kwargs)}
    elif layout == "diffusers":
        modules = []
        for layer, (a, b) in factors.items():
            last = int(layer.split(".")[1]) == cfg.depth - 1
            names = [n.removesuffix(".weight") for n in diffusers_name(layer + ".weight", last_block=last)]
            for name, rows in zip(names, b.chunk(len(names), dim=0)):
                tensors[f"transformer.{name}.lora_A.weight"] = a.clone()
                tensors[f"transformer.{name}.lora_B.weight"] = rows.contiguous()
                modules.append(name)
        config_dict = {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": sorted(modules)}
        metadata = {
            "format": "pt",
            "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config_dict.items()}, indent=2),
        }
    else:
        raise ValueError(f"layout must be 'genmo' or 'diffusers'; got {layout!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(p), metadata=metadata)
    return p
