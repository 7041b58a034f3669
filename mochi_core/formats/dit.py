"""Detect the layout of a Mochi DiT checkpoint and map its tensors to the official names.

Layouts (docs/formats.md): official Genmo ``dit.safetensors`` (no prefix, fp32); Comfy-Org split
files (``model.diffusion_model.`` prefix, bf16) and scaled fp8 (fp8 ``<layer>.weight`` + fp32
``<layer>.scale_weight``, marker tensor ``scaled_fp8``); Comfy all-in-one (DiT under ``model.diffusion_model.``,
VAE and T5 under other prefixes, ignored here); Kijai bf16 / fp8_e4m3fn (no prefix, mixed dtypes); Kijai
GGUF-in-safetensors (``<layer>.Q8_0_qweight`` / ``.Q4_0_qweight`` uint8 blocks); ``.gguf`` containers (official
names, any prefix above, each tensor in its own GGUF type: :mod:`mochi_core.formats.gguf`); diffusers
``MochiTransformer3DModel`` (renamed keys, q/k/v split, SwiGLU and final-modulation halves swapped), one file or
a folder of shards. Key mapping facts from huggingface/diffusers ``scripts/convert_mochi_to_diffusers.py`` and
Comfy-Org/ComfyUI ``comfy/ops.py`` / ``model_detection.py``; the code is our own.

Only header information (names, dtypes, shapes) is used for detection; tensors are read one at a time by
:func:`read_source`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import UnsupportedCheckpointError
from .detect import DIT_PREFIXES

__all__ = [
    "DiTSource",
    "DiTLayout",
    "detect_dit_layout",
    "read_source",
    "DIT_PREFIXES",
    "diffusers_name",
    "diffusers_module_target",
]

_ANCHORS = ("t5_yproj.weight", "x_embedder.proj.weight", "patch_embed.proj.weight", "pos_frequencies")
_Q_BYTES = {"q8_0": 34, "q4_0": 18}


class _Info(Protocol):
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DiTSource:
    """How to produce one official tensor from the file.

    ``keys``: file keys, concatenated along dim 0 when several (diffusers q/k/v); ``fmt``: storage format
    (plain, scaled_fp8, or a GGUF block format of :data:`mochi_core.quants.QUANT_TYPES`); ``shape``: logical official shape; ``scale_key``: the scaled-fp8 scale;
    ``swap_halves``: swap the two halves along dim 0 (diffusers SwiGLU w1 and final modulation).
    """

    keys: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    fmt: str = "plain"
    scale_key: str | None = None
    swap_halves: bool = False


@dataclass
class DiTLayout:
    """A detected layout: ``name`` (official, comfy_bf16, comfy_scaled_fp8, comfy_all_in_one, kijai_fp8,
    kijai_bf16, gguf_q8_0, gguf_q4_0, diffusers, ...), key ``prefix``, one source per official key, and the file
    keys that belong to other components (``ignored``)."""

    name: str
    prefix: str
    sources: dict[str, DiTSource]
    ignored: list[str] = field(default_factory=list)


def _prefix(keys: set[str], source: str) -> str:
    for p in DIT_PREFIXES:
        if any(p + a in keys for a in _ANCHORS):
            return p
    sample = ", ".join(repr(k) for k in sorted(keys)[:5])
    raise UnsupportedCheckpointError(
        f"{source}: unknown DiT layout ({len(keys)} tensors, first keys: {sample}); expected official Genmo names "
        "('t5_yproj.weight', 'blocks.0.attn.qkv_x.weight'), a Comfy 'model.diffusion_model.' prefix, or diffusers names"
    )


def _add(sources: dict[str, DiTSource], name: str, src: DiTSource, source: str, prefix: str) -> None:
    """Record the source of official tensor ``name``; refuse a second file key for the same tensor."""
    if name in sources:
        first = ", ".join(repr(prefix + k) for k in sources[name].keys)
        second = ", ".join(repr(prefix + k) for k in src.keys)
        raise UnsupportedCheckpointError(
            f"{source}: tensors {first} and {second} both give the DiT tensor {name!r}; a checkpoint must hold each "
            "tensor once (mixed or merged files are not supported)"
        )
    sources[name] = src


def _scale_keys(infos: Mapping[str, _Info], source: str, prefix: str) -> dict[str, str]:
    """Layer -> key of its scaled-fp8 ``scale_weight``; each must be a single floating value."""
    scales: dict[str, str] = {}
    for key, info in infos.items():
        if not key.endswith(".scale_weight"):
            continue
        if math.prod(info.shape) != 1 or not info.dtype.is_floating_point:
            raise UnsupportedCheckpointError(
                f"{source}: {prefix + key!r} must be a single floating-point scale (scaled fp8); it has shape "
                f"{list(info.shape)} and dtype {str(info.dtype).replace('torch.', '')}"
            )
        scales[key[: -len(".scale_weight")]] = key
    return scales


def _official_sources(
    infos: Mapping[str, _Info], source: str, prefix: str = ""
) -> tuple[dict[str, DiTSource], set[str]]:
    """Official-name sources of the (prefix-stripped) ``infos``; ``prefix`` only names file keys in messages."""
    sources: dict[str, DiTSource] = {}
    scales = _scale_keys(infos, source, prefix)
    formats: set[str] = set()
    for key, info in infos.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        quant = getattr(info, "quant", None)
        if quant is not None:  # a block-quantized tensor of a .gguf file: logical shape, the file's own type
            _add(sources, key, DiTSource((key,), tuple(info.shape), info.dtype, fmt=quant), source, prefix)
            formats.add(quant)
            continue
        m = re.match(r"(.*)\.(Q8_0|Q4_0)_qweight$", key)
        if m:
            layer, fmt = m.group(1), m.group(2).lower()
            if len(info.shape) != 2 or info.shape[1] % _Q_BYTES[fmt]:
                raise UnsupportedCheckpointError(
                    f"{source}: {key} has byte shape {list(info.shape)}, not a multiple of {_Q_BYTES[fmt]}-byte {fmt} blocks"
                )
            shape = (info.shape[0], info.shape[1] // _Q_BYTES[fmt] * 32)
            _add(sources, layer + ".weight", DiTSource((key,), shape, info.dtype, fmt=fmt), source, prefix)
            formats.add(fmt)
            continue
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is not None and layer in scales:
            src = DiTSource((key,), tuple(info.shape), info.dtype, fmt="scaled_fp8", scale_key=scales[layer])
            formats.add("scaled_fp8")
        else:
            src = DiTSource((key,), tuple(info.shape), info.dtype)
        _add(sources, key, src, source, prefix)
    return sources, formats


# ----------------------------------------------------------------------------------------------
# diffusers names
# ----------------------------------------------------------------------------------------------

_DIFFUSERS_SIMPLE = [
    (r"patch_embed\.proj\.(weight|bias)", r"x_embedder.proj.\1"),
    (r"time_embed\.timestep_embedder\.linear_1\.(weight|bias)", r"t_embedder.mlp.0.\1"),
    (r"time_embed\.timestep_embedder\.linear_2\.(weight|bias)", r"t_embedder.mlp.2.\1"),
    (r"time_embed\.pooler\.(to_kv|to_q|to_out)\.(weight|bias)", r"t5_y_embedder.\1.\2"),
    (r"time_embed\.caption_proj\.(weight|bias)", r"t5_yproj.\1"),
    (r"pos_frequencies", r"pos_frequencies"),
    (r"proj_out\.(weight|bias)", r"final_layer.linear.\1"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(weight|bias)", r"blocks.\1.mod_x.\2"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear(?:_1)?\.(weight|bias)", r"blocks.\1.mod_y.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_q\.weight", r"blocks.\1.attn.q_norm_x.weight"),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_k\.weight", r"blocks.\1.attn.k_norm_x.weight"),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_added_q\.weight", r"blocks.\1.attn.q_norm_y.weight"),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_added_k\.weight", r"blocks.\1.attn.k_norm_y.weight"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.proj_x.\2"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_add_out\.(weight|bias)", r"blocks.\1.attn.proj_y.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.weight", r"blocks.\1.mlp_x.w2.weight"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.weight", r"blocks.\1.mlp_y.w2.weight"),
]
_DIFFUSERS_SWAP = [
    (r"norm_out\.linear\.(weight|bias)", r"final_layer.mod.\1"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.weight", r"blocks.\1.mlp_x.w1.weight"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.weight", r"blocks.\1.mlp_y.w1.weight"),
]
_DIFFUSERS_QKV = [
    (r"transformer_blocks\.(\d+)\.attn1\.to_(q|k|v)\.weight", r"blocks.\1.attn.qkv_x.weight"),
    (r"transformer_blocks\.(\d+)\.attn1\.add_(q|k|v)_proj\.weight", r"blocks.\1.attn.qkv_y.weight"),
]


def diffusers_name(official: str, *, last_block: bool = False) -> list[str]:
    """Official key -> diffusers key(s) (three for a fused qkv). Inverse of the detection mapping; used by writers."""
    m = re.match(r"blocks\.(\d+)\.(.*)$", official)
    if m:
        i, rest = m.group(1), m.group(2)
        tb = f"transformer_blocks.{i}."
        table = {
            "mod_x.weight": ["norm1.linear.weight"],
            "mod_x.bias": ["norm1.linear.bias"],
            "mod_y.weight": ["norm1_context.linear_1.weight" if last_block else "norm1_context.linear.weight"],
            "mod_y.bias": ["norm1_context.linear_1.bias" if last_block else "norm1_context.linear.bias"],
            "attn.qkv_x.weight": ["attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"],
            "attn.qkv_y.weight": ["attn1.add_q_proj.weight", "attn1.add_k_proj.weight", "attn1.add_v_proj.weight"],
            "attn.q_norm_x.weight": ["attn1.norm_q.weight"],
            "attn.k_norm_x.weight": ["attn1.norm_k.weight"],
            "attn.q_norm_y.weight": ["attn1.norm_added_q.weight"],
            "attn.k_norm_y.weight": ["attn1.norm_added_k.weight"],
            "attn.proj_x.weight": ["attn1.to_out.0.weight"],
            "attn.proj_x.bias": ["attn1.to_out.0.bias"],
            "attn.proj_y.weight": ["attn1.to_add_out.weight"],
            "attn.proj_y.bias": ["attn1.to_add_out.bias"],
            "mlp_x.w1.weight": ["ff.net.0.proj.weight"],
            "mlp_x.w2.weight": ["ff.net.2.weight"],
            "mlp_y.w1.weight": ["ff_context.net.0.proj.weight"],
            "mlp_y.w2.weight": ["ff_context.net.2.weight"],
        }
        return [tb + n for n in table[rest]]
    top = {
        "pos_frequencies": "pos_frequencies",
        "x_embedder.proj.weight": "patch_embed.proj.weight",
        "x_embedder.proj.bias": "patch_embed.proj.bias",
        "t_embedder.mlp.0.weight": "time_embed.timestep_embedder.linear_1.weight",
        "t_embedder.mlp.0.bias": "time_embed.timestep_embedder.linear_1.bias",
        "t_embedder.mlp.2.weight": "time_embed.timestep_embedder.linear_2.weight",
        "t_embedder.mlp.2.bias": "time_embed.timestep_embedder.linear_2.bias",
        "t5_yproj.weight": "time_embed.caption_proj.weight",
        "t5_yproj.bias": "time_embed.caption_proj.bias",
        "final_layer.mod.weight": "norm_out.linear.weight",
        "final_layer.mod.bias": "norm_out.linear.bias",
        "final_layer.linear.weight": "proj_out.weight",
        "final_layer.linear.bias": "proj_out.bias",
    }
    if official in top:
        return [top[official]]
    m = re.match(r"t5_y_embedder\.(.*)$", official)
    if m:
        return ["time_embed.pooler." + m.group(1)]
    raise KeyError(official)


def diffusers_module_target(module: str) -> tuple[str, int | None, bool] | None:
    """diffusers module name (``transformer_blocks.0.attn1.to_q``) -> where its weight sits in the official model:
    (official module name, index 0/1/2 of the q/k/v third of a fused qkv weight or None, halves swapped), or None
    when the module has no official counterpart. The same tables as the checkpoint conversion (used for LoRAs)."""
    key = module + ".weight"
    for pat, rep in _DIFFUSERS_QKV:
        m = re.fullmatch(pat, key)
        if m:
            return m.expand(rep).removesuffix(".weight"), "qkv".index(m.group(2)), False
    for table, swap in ((_DIFFUSERS_SIMPLE, False), (_DIFFUSERS_SWAP, True)):
        for pat, rep in table:
            m = re.fullmatch(pat, key)
            if m:
                return m.expand(rep).removesuffix(".weight"), None, swap
    return None


def _diffusers_sources(infos: Mapping[str, _Info], source: str, prefix: str = "") -> dict[str, DiTSource]:
    sources: dict[str, DiTSource] = {}
    qkv: dict[str, dict[str, str]] = {}
    for key, info in infos.items():
        for pat, rep in _DIFFUSERS_QKV:
            m = re.fullmatch(pat, key)
            if m:
                qkv.setdefault(m.expand(rep), {})[m.group(2)] = key  # file keys are unique: one per (layer, q/k/v)
                break
        else:
            for table, swap in ((_DIFFUSERS_SIMPLE, False), (_DIFFUSERS_SWAP, True)):
                hit = next(((p, r) for p, r in table if re.fullmatch(p, key)), None)
                if hit:
                    name = re.sub(hit[0], hit[1], key)
                    src = DiTSource((key,), tuple(info.shape), info.dtype, swap_halves=swap)
                    _add(sources, name, src, source, prefix)
                    break
            else:
                raise UnsupportedCheckpointError(f"{source}: diffusers tensor {key!r} has no Mochi DiT equivalent")
    for name, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise UnsupportedCheckpointError(
                f"{source}: {name} needs q, k and v projections; found only {sorted(parts)}"
            )
        keys = (parts["q"], parts["k"], parts["v"])
        shapes = [tuple(infos[k].shape) for k in keys]
        if len({s[1:] for s in shapes}) != 1:
            raise UnsupportedCheckpointError(f"{source}: q/k/v shapes {shapes} of {name} cannot be concatenated")
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        _add(sources, name, DiTSource(keys, shape, infos[keys[0]].dtype), source, prefix)
    return sources


def detect_dit_layout(infos: Mapping[str, _Info], *, source: str = "checkpoint") -> DiTLayout:
    """Detect the DiT layout from header facts (key names, dtypes, shapes) and map every tensor to its source."""
    keys = set(infos)
    prefix = _prefix(keys, source)
    mine = {k[len(prefix) :]: v for k, v in infos.items() if k.startswith(prefix)}
    ignored = sorted(k for k in infos if not k.startswith(prefix))
    if "patch_embed.proj.weight" in mine:
        return DiTLayout("diffusers", prefix, _diffusers_sources(mine, source, prefix), ignored)
    sources, formats = _official_sources(mine, source, prefix)
    dtypes = {s.dtype for s in sources.values()}
    if "q8_0" in formats or "q4_0" in formats:
        name = "gguf_" + ("q8_0" if "q8_0" in formats else "q4_0")
    elif prefix == "model.diffusion_model.":
        if ignored:
            name = "comfy_all_in_one"
        elif "scaled_fp8" in formats:
            name = "comfy_scaled_fp8"
        else:
            name = "comfy_" + ("fp8" if dtypes & {torch.float8_e4m3fn, torch.float8_e5m2} else "bf16")
    elif "scaled_fp8" in formats:
        name = "scaled_fp8"
    elif dtypes & {torch.float8_e4m3fn, torch.float8_e5m2}:
        name = "kijai_fp8"
    elif dtypes == {torch.float32}:
        name = "official"
    else:
        name = "kijai_bf16" if torch.bfloat16 in dtypes else "official_" + "_".join(sorted(str(d)[6:] for d in dtypes))
    return DiTLayout(name, prefix, sources, ignored)


def read_source(ckpt: object, src: DiTSource, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read one tensor (and its scaled-fp8 scale) in official layout from an open checkpoint, as stored.

    ``ckpt`` has ``get(key) -> Tensor`` (see :class:`mochi_core.formats.io.Checkpoint`).
    """
    get = ckpt.get  # type: ignore[attr-defined]
    parts = [get(prefix + k) for k in src.keys]
    t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    if src.swap_halves:
        a, b = t.chunk(2, dim=0)
        t = torch.cat([b, a], dim=0)
    scale = get(prefix + src.scale_key) if src.scale_key else None
    return t, scale
