"""Plan a generation for the model files a user actually has: sizes and stored dtypes read from the headers.

:func:`plan_for_files` reads only the safetensors headers of the DiT, T5 and VAE files (no tensor data), infers
each model's configuration exactly as the loaders do (``DiTConfig.from_shapes``, ``DecoderConfig.from_shapes``,
:func:`mochi_core.formats.t5.inspect_t5`) and the storage format the weights will have in memory (the file's
own unless a conversion is asked for), then calls :func:`mochi_core.memory.planning.planner.plan`. So the full model and
tiny test models are planned the same way, and ``generate(budget=...)`` refuses a job that cannot fit before
any weight is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...errors import InvalidInputError
from ...formats.io import open_checkpoint
from ...precision import STORAGE_DTYPES, default_compute_dtype, dtype_name
from ...quants import QUANT_TYPES
from ..estimates import T5Sizes
from .planner import Plan, plan

__all__ = ["ModelFiles", "check_model_paths", "inspect_model_files", "plan_for_files"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ModelFiles:
    """What the headers say: model configurations and the storage format of the big linear weights."""

    dit_config: object
    dit_storage: str
    t5_sizes: T5Sizes
    t5_storage: str
    decoder_config: object


def _storage_name(fmt: str, dtype: torch.dtype, what: str) -> str:
    if fmt == "scaled_fp8" or fmt in QUANT_TYPES:
        return fmt
    if dtype not in STORAGE_DTYPES.values():
        raise InvalidInputError(f"{what}: weights stored as {dtype} cannot be planned")
    return dtype_name(dtype)


def _widest_block_type(formats: list[str]) -> str | None:
    """The GGUF type taking the most bytes per value among ``formats`` (a mixed file such as q4_k_m is planned at
    its widest block-weight type, so the plan never counts fewer bytes than the file holds); None if none."""
    found = [f for f in formats if f in QUANT_TYPES]
    return max(found, key=lambda f: QUANT_TYPES[f].bits_per_weight) if found else None


def _dit(path: PathLike) -> tuple[object, str]:
    from ...dit.loader import read_dit_header

    layout, cfg = read_dit_header(path)  # the loader's own checks: every tensor of the configuration is present
    src = layout.sources["blocks.0.mlp_x.w1.weight"]
    widest = _widest_block_type([s.fmt for k, s in layout.sources.items() if k.startswith("blocks.")])
    return cfg, widest or _storage_name(src.fmt, src.dtype, "DiT")


def _t5(path: PathLike) -> tuple[T5Sizes, str]:
    from ...formats.t5 import inspect_t5

    with open_checkpoint(path) as ckpt:
        layout = inspect_t5(ckpt, path=str(path))
        name = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
        if name not in layout.keys:
            name = next(k for k in layout.keys if k.startswith("encoder.block.0.") and k.endswith(".weight"))
        dtype = ckpt.infos[layout.keys[name]].dtype
        widest = _widest_block_type([q for n, q in layout.quant.items() if n.startswith("encoder.block.")])
    s = layout.shape
    sizes = T5Sizes(
        vocab_size=s.vocab_size,
        d_model=s.d_model,
        d_kv=s.d_kv,
        num_heads=s.num_heads,
        d_ff=s.d_ff,
        num_layers=s.num_layers,
        num_buckets=s.num_buckets,
    )
    scaled = name in layout.scales and dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if widest is not None:
        return sizes, widest
    return sizes, "scaled_fp8" if scaled else _storage_name("plain", dtype, "T5")


def _decoder(path: PathLike) -> object:
    from ...formats.vae import mapped_shapes, vae_key_map
    from ...vae.config import DecoderConfig

    with open_checkpoint(path) as ckpt:
        kmap = vae_key_map(ckpt.keys(), path=str(path))
        if kmap.decoder is None:
            raise InvalidInputError(f"{path}: this VAE file holds no decoder; a text-to-video job needs one")
        shapes = mapped_shapes(ckpt.infos, kmap.decoder)
    return DecoderConfig.from_shapes(shapes)


def check_model_paths(
    *, dit: PathLike | None = None, text_encoder: PathLike | None = None, vae: PathLike | None = None
) -> None:
    """Refuse, from the headers alone, a model file of the wrong kind, truncated, or incomplete (the loaders' own
    checks), for each path given; so a job is refused before any model loads, not after sampling."""
    if dit is not None:
        _dit(dit)
    if text_encoder is not None:
        _t5(text_encoder)
    if vae is not None:
        _decoder(vae)


def inspect_model_files(dit: PathLike, text_encoder: PathLike, vae: PathLike) -> ModelFiles:
    """Read the three headers (no tensor data); refuses files of the wrong kind like the loaders do."""
    cfg, dit_storage = _dit(dit)
    t5_sizes, t5_storage = _t5(text_encoder)
    return ModelFiles(cfg, dit_storage, t5_sizes, t5_storage, _decoder(vae))


def plan_for_files(
    width: int,
    height: int,
    frames: int,
    *,
    budget_bytes: int | str,
    dit: PathLike,
    text_encoder: PathLike,
    vae: PathLike,
    device: str = "cuda",
    dit_storage: str | None = None,
    t5_storage: str | None = None,
    vae_dtype: str | None = None,
    compute_dtype: str | None = None,
    attention: str = "sdpa",
    batch_cfg: bool | None = None,
    cfg_parallel: bool = False,
    sp: int = 1,
    loras: Sequence[Any] = (),
    teacache: bool = False,
) -> Plan:
    """:func:`~mochi_core.memory.planning.planner.plan` for these files; ``*_storage`` None = as stored in the file.

    ``vae_dtype`` None = the device's default compute dtype (``precision.default_compute_dtype``: bf16 on CUDA
    GPUs with native bf16, fp32 on older GPUs and on CPU). ``batch_cfg`` None lets the
    planner choose (batched when it fits). ``cfg_parallel`` / ``sp``: plan one rank of a multi-process run.
    ``loras``: LoRA files applied at run time (counted in the DiT blocks).
    ``teacache``: count TeaCache's state kept across steps.
    """
    files = inspect_model_files(dit, text_encoder, vae)
    dev = str(device).split(":")[0]
    try:  # what load_vae / load_dit pick on that device; a bad device is refused by plan() below
        default_compute = dtype_name(default_compute_dtype(torch.device(device), warn=False))
    except (RuntimeError, TypeError, ValueError):
        default_compute = "fp32"
    job = plan(
        width,
        height,
        frames,
        budget_bytes=budget_bytes,
        device=dev,
        dit_storage=dit_storage or files.dit_storage,
        t5_storage=t5_storage or files.t5_storage,
        vae_dtype=vae_dtype or default_compute,
        attention=attention,
        dit_config=files.dit_config,
        t5_sizes=files.t5_sizes,
        decoder_config=files.decoder_config,
        compute_dtype=compute_dtype,
        batch_cfg=batch_cfg,
        cfg_parallel=cfg_parallel,
        sp=sp,
        loras=loras,
        teacache=teacache,
    )
    stored = tuple(name for name, asked in (("dit", dit_storage), ("t5", t5_storage)) if asked is None)
    return replace(job, as_stored=stored)
