"""``load_lora``: read a Mochi LoRA file in Genmo's layout or the diffusers / peft layout, detected from its keys.

Layouts:

- **genmo** (Genmo's fine-tuner, ``model_{step}.lora.safetensors``): keys ``<official layer>.lora_A`` (r, in) and
  ``.lora_B`` (out, r), without ``.weight``; Genmo trains the four attention projections ``blocks.N.attn.qkv_x``,
  ``qkv_y``, ``proj_x``, ``proj_y`` (the last block has no ``proj_y``). The file's ``kwargs`` metadata is a JSON
  object with ``qkv_proj_lora_rank`` / ``_alpha`` (qkv layers) and ``out_proj_lora_rank`` / ``_alpha`` (output
  projections); scale = alpha / rank. Without metadata (or without an alpha in it) alpha = rank, scale 1, as with
  the fine-tuner's defaults (rank 16, alpha 16).
  Files from before a late-2024 fix of the fine-tuner may carry a ``qkv_proj_lora_mask`` tensor: it is skipped.
- **diffusers** (diffusers' ``save_lora_weights``, peft, trainers for diffusers' ``MochiTransformer3DModel``):
  keys ``[transformer.]transformer_blocks.N.attn1.<module>.lora_A.weight`` / ``.lora_B.weight`` with ``to_q``,
  ``to_k``, ``to_v``, ``to_out.0`` (video stream), ``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out``
  (text stream), and any other diffusers Linear (feed-forward, modulation) mapped as the checkpoint conversion maps
  it. The alpha is read from ``<module>.alpha`` tensors, else from the ``lora_adapter_metadata`` JSON that diffusers'
  training scripts store (peft's config: ``r``, ``lora_alpha``, ``alpha_pattern``, ``rank_pattern``, ``use_rslora``,
  keys optionally prefixed ``transformer.``); scale = alpha / rank (alpha / sqrt(rank) with rsLoRA). Without either,
  scale 1 (what diffusers assumes); the strength can make up for it. q, k and v updates that share one ``lora_A``
  are fused into one update of the qkv weight (exact: B_q A, B_k A, B_v A are its row thirds).

Refused with :class:`~mochi_core.errors.UnsupportedCheckpointError` naming the file: pickles (never unpickled), a
file with no LoRA tensors (what it holds is said), a LoRA for another model (no key names a Mochi layer), a key that
matches no layer (the first is named), a lora_A without its lora_B (or the reverse), factors whose ranks differ,
ranks that contradict the metadata, and malformed metadata.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError, UnsupportedCheckpointError
from ..formats.detect import components, describe
from ..formats.dit import diffusers_module_target
from ..formats.io import open_checkpoint
from .model import LoRA, LoRAPart

__all__ = ["load_lora", "check_lora_file", "LAYOUTS"]

logger = logging.getLogger(__name__)

LAYOUTS = ("genmo", "diffusers")

_GENMO_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])")
_PEFT_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_GENMO_IGNORED = "qkv_proj_lora_mask"
#: prefixes in front of diffusers module names: diffusers' save_lora_weights, peft's save_pretrained, none
_DIFFUSERS_PREFIXES = ("base_model.model.transformer.", "base_model.model.", "transformer.", "")
#: key fragments of LoRAs made for other model families (kohya / A1111 / ComfyUI naming)
_OTHER_LORA = re.compile(r"lora_down|lora_up|lora_unet_|lora_te\d?_|\.hada_|\.lokr_|diff_b$")
_GENMO_LAYER = re.compile(r"blocks\.\d+\.(attn\.(qkv_x|qkv_y|proj_x|proj_y)|mod_x|mod_y|mlp_[xy]\.w[12])")
_SUPPORTED = (
    "Mochi LoRAs have keys like 'blocks.0.attn.qkv_x.lora_A' (Genmo's fine-tuner) or "
    "'transformer.transformer_blocks.0.attn1.to_q.lora_A.weight' (diffusers / peft)"
)


def _refuse(name: str, what: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(f"LoRA file {name}: {what}")


def _pairs(keys: list[str], pattern: re.Pattern[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """module -> {"A": key, "B": key} for the keys matching ``pattern``; and the keys that do not match."""
    pairs: dict[str, dict[str, str]] = {}
    rest: list[str] = []
    for k in keys:
        m = pattern.fullmatch(k)
        if m:
            pairs.setdefault(m.group("module"), {})[m.group("ab")] = k
        else:
            rest.append(k)
    return pairs, rest


def _check_pair(name: str, module: str, pair: dict[str, str], shapes: Mapping[str, tuple[int, ...]]) -> None:
    if set(pair) != {"A", "B"}:
        have, missing = next(iter(pair.values())), "lora_B" if "A" in pair else "lora_A"
        raise _refuse(name, f"{have!r} has no matching {missing} tensor for {module!r}")
    a, b = shapes[pair["A"]], shapes[pair["B"]]
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise _refuse(
            name,
            f"{module!r}: lora_A {list(a)} and lora_B {list(b)} do not form a low-rank pair "
            "(lora_A must be [rank, in_features], lora_B [out_features, rank])",
        )


def _metadata_json(name: str, metadata: Mapping[str, str], field: str) -> dict[str, Any] | None:
    raw = metadata.get(field)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _refuse(name, f"its {field!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _refuse(name, f"its {field!r} metadata must be a JSON object; got {type(value).__name__}")
    return value


def _number(name: str, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _refuse(name, f"metadata {field}={value!r} must be a positive number")
    return float(value)


# ----------------------------------------------------------------------------------------------
# Genmo
# ----------------------------------------------------------------------------------------------


def _genmo_scale(name: str, module: str, rank: int, kwargs: dict[str, Any] | None) -> float:
    leaf = module.rsplit(".", 1)[-1]
    group = "qkv_proj" if leaf.startswith("qkv") else "out_proj" if leaf.startswith("proj") else None
    if kwargs is None or group is None:
        return 1.0  # the fine-tuner's default: alpha = rank (16 and 16)
    r = kwargs.get(f"{group}_lora_rank")
    r_value = float(rank) if r is None else _number(name, f"{group}_lora_rank", r)
    if r_value != rank:
        raise _refuse(name, f"{module!r} has rank {rank} but its kwargs metadata says {group}_lora_rank={r}")
    alpha = kwargs.get(f"{group}_lora_alpha")
    return 1.0 if alpha is None else _number(name, f"{group}_lora_alpha", alpha) / r_value


def _read_genmo(name: str, ckpt: Any, pairs: dict[str, dict[str, str]]) -> list[LoRAPart]:
    kwargs = _metadata_json(name, ckpt.metadata, "kwargs")
    if kwargs is None:
        logger.warning("LoRA %s has no kwargs metadata: using Genmo's default alpha = rank (scale 1)", name)
    parts = []
    for module, pair in pairs.items():
        down, up = ckpt.get(pair["A"]), ckpt.get(pair["B"])
        scale = _genmo_scale(name, module, int(down.shape[0]), kwargs)
        parts.append(LoRAPart(module, pair["A"], down.clone(), up.clone(), None, scale))
    return parts


# ----------------------------------------------------------------------------------------------
# diffusers / peft
# ----------------------------------------------------------------------------------------------


def _peft_config(name: str, metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """peft's LoraConfig dict from ``lora_adapter_metadata``, keys without the ``transformer.`` prefix."""
    cfg = _metadata_json(name, metadata, "lora_adapter_metadata")
    if cfg is None:
        return None
    if any(k.startswith("transformer.") for k in cfg):
        cfg = {k.removeprefix("transformer."): v for k, v in cfg.items() if k.startswith("transformer.")}
    return cfg


def _pattern_value(patterns: Any, module: str) -> Any:
    """peft's per-module override: the value of the first pattern that matches the end of ``module``."""
    if not isinstance(patterns, dict):
        return None
    for pat, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pat})", module):
            return value
    return None


def _diffusers_scale(
    name: str, module: str, rank: int, alpha_tensor: torch.Tensor | None, cfg: dict[str, Any] | None
) -> float | None:
    """alpha / rank for ``module`` (or alpha / sqrt(rank) with rsLoRA); None when the file gives no alpha."""
    rslora = bool(cfg.get("use_rslora", False)) if cfg else False
    if alpha_tensor is not None:
        if alpha_tensor.numel() != 1:
            raise _refuse(name, f"{module}.alpha must hold one value; got shape {list(alpha_tensor.shape)}")
        alpha = _number(name, f"{module}.alpha", float(alpha_tensor.reshape(()).to(torch.float64)))
    elif cfg is not None and ("lora_alpha" in cfg or _pattern_value(cfg.get("alpha_pattern"), module) is not None):
        value = _pattern_value(cfg.get("alpha_pattern"), module)
        alpha = _number(name, "lora_alpha", cfg["lora_alpha"] if value is None else value)
        r_cfg = _pattern_value(cfg.get("rank_pattern"), module) or cfg.get("r")
        if r_cfg is not None and _number(name, "r", r_cfg) != rank:
            raise _refuse(name, f"{module!r} has rank {rank} but its lora_adapter_metadata says r={r_cfg}")
    else:
        return None
    return alpha / (math.sqrt(rank) if rslora else rank)


def _diffusers_prefix(pairs: dict[str, dict[str, str]]) -> str:
    for prefix in _DIFFUSERS_PREFIXES:
        if any(m.startswith(prefix) and diffusers_module_target(m[len(prefix) :]) for m in pairs):
            return prefix
    return ""


def _fuse_thirds(parts: list[LoRAPart]) -> list[LoRAPart]:
    """q, k and v parts of one fused weight that share lora_A and scale become one part (exact)."""
    by_layer: dict[str, dict[int, LoRAPart]] = {}
    for p in parts:
        if p.third is not None:
            by_layer.setdefault(p.layer, {})[p.third] = p
    fused: dict[str, LoRAPart] = {}
    for layer, thirds in by_layer.items():
        if set(thirds) != {0, 1, 2}:
            continue
        q, k, v = thirds[0], thirds[1], thirds[2]
        same_shape = q.down.shape == k.down.shape == v.down.shape and q.up.shape == k.up.shape == v.up.shape
        if same_shape and q.scale == k.scale == v.scale and torch.equal(q.down, k.down) and torch.equal(q.down, v.down):
            up = torch.cat([q.up, k.up, v.up], dim=0)
            fused[layer] = LoRAPart(layer, q.key, q.down, up, None, q.scale)
    out, done = [], set()
    for p in parts:
        if p.third is not None and p.layer in fused:
            if p.layer not in done:
                out.append(fused[p.layer])
                done.add(p.layer)
            continue
        out.append(p)
    return out


def _read_diffusers(name: str, ckpt: Any, pairs: dict[str, dict[str, str]], alphas: dict[str, str]) -> list[LoRAPart]:
    prefix = _diffusers_prefix(pairs)
    cfg = _peft_config(name, ckpt.metadata)
    parts: list[LoRAPart] = []
    no_alpha: list[str] = []
    for module, pair in pairs.items():
        inner = module[len(prefix) :] if module.startswith(prefix) else module
        target = diffusers_module_target(inner) if module.startswith(prefix) else None
        if target is None:
            raise _refuse(name, f"key {pair.get('A', pair.get('B'))!r} matches no layer of the Mochi DiT")
        layer, third, swap = target
        down, up = ckpt.get(pair["A"]), ckpt.get(pair["B"])
        alpha_key = alphas.get(module)
        scale = _diffusers_scale(name, inner, int(down.shape[0]), ckpt.get(alpha_key) if alpha_key else None, cfg)
        if scale is None:
            no_alpha.append(inner)
            scale = 1.0
        if swap:  # diffusers orders these outputs [second half | first half] relative to the official weight
            first, second = up.chunk(2, dim=0)
            up = torch.cat([second, first], dim=0)
        parts.append(LoRAPart(layer, pair["A"], down.clone(), up.clone(), third, scale))
    if no_alpha:
        logger.warning(
            "LoRA %s gives no alpha for %d layers (e.g. %s): scale 1 (alpha = rank), as diffusers assumes; "
            "adjust the strength if the trainer used another alpha",
            name,
            len(no_alpha),
            no_alpha[0],
        )
    return _fuse_thirds(parts)


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def _not_mochi(name: str, keys: list[str]) -> UnsupportedCheckpointError:
    lora_keys = [k for k in keys if "lora" in k.lower() or k.endswith(".alpha")]
    if not lora_keys:
        found = components(keys)
        holds = f"it holds {describe(found)}" if found else f"its {len(keys)} tensors have no LoRA names"
        return _refuse(name, f"this is not a LoRA file ({holds}, first key {keys[0]!r}). {_SUPPORTED}")
    return _refuse(
        name,
        f"this is a LoRA for another model: no key names a Mochi DiT layer (first key {lora_keys[0]!r}). {_SUPPORTED}",
    )


def _detect(name: str, keys: list[str]) -> str:
    if not keys:
        raise _refuse(name, "the file holds no tensors")
    if any(_OTHER_LORA.search(k) for k in keys):
        raise _not_mochi(name, keys)
    peft, _ = _pairs(keys, _PEFT_KEY)
    if peft:
        prefix = _diffusers_prefix(peft)
        if any(m.startswith(prefix) and diffusers_module_target(m[len(prefix) :]) for m in peft):
            return "diffusers"
        raise _not_mochi(name, keys)
    genmo, _ = _pairs(keys, _GENMO_KEY)
    if genmo and any(_GENMO_LAYER.fullmatch(m) for m in genmo):
        return "genmo"
    raise _not_mochi(name, keys)


def _existing(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"LoRA path must be a file path; got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"LoRA file {p} does not exist (or is not a file)")
    return p


def check_lora_file(path: str | os.PathLike[str]) -> str:
    """The layout ("genmo" / "diffusers") of the LoRA file ``path``, from its header only (cheap: for queue-time
    checks); raises as :func:`load_lora` does for pickles, other models' LoRAs and files that are no LoRA."""
    p = _existing(path)
    with open_checkpoint(p) as ckpt:
        return _detect(p.name, ckpt.keys())


def load_lora(path: str | os.PathLike[str]) -> LoRA:
    """Read a Mochi LoRA (``.safetensors``, Genmo's or the diffusers / peft layout, detected from the keys).

    Returns a :class:`~mochi_core.lora.model.LoRA` holding the factors as stored (CPU tensors) and the file's scale
    per layer; whether its layers fit a given DiT is checked by :func:`mochi_core.apply_loras`. Raises
    :class:`~mochi_core.errors.UnsupportedCheckpointError` naming the file (see the module docstring).
    """
    p = _existing(path)
    name = p.name
    with open_checkpoint(p) as ckpt:
        keys = ckpt.keys()
        layout = _detect(name, keys)
        shapes = {k: tuple(i.shape) for k, i in ckpt.infos.items()}
        bad = [k for k, i in ckpt.infos.items() if not i.dtype.is_floating_point]
        if bad:
            raise _refuse(name, f"tensor {bad[0]!r} is {ckpt.infos[bad[0]].dtype}, not a floating-point LoRA factor")
        if layout == "genmo":
            keys = [k for k in keys if not k.endswith(_GENMO_IGNORED)]
            pairs, rest = _pairs(keys, _GENMO_KEY)
            if rest:
                raise _refuse(name, f"key {rest[0]!r} matches no layer of the Mochi DiT (not a lora_A / lora_B)")
            for module, pair in pairs.items():
                _check_pair(name, module, pair, shapes)
            parts = _read_genmo(name, ckpt, pairs)
        else:
            pairs, rest = _pairs(keys, _PEFT_KEY)
            alphas = {k.removesuffix(".alpha"): k for k in rest if k.endswith(".alpha")}
            rest = [k for k in rest if not k.endswith(".alpha")]
            if rest:
                raise _refuse(name, f"key {rest[0]!r} matches no layer of the Mochi DiT (not a lora_A / lora_B)")
            stray = [k for m, k in alphas.items() if m not in pairs]
            if stray:
                raise _refuse(name, f"key {stray[0]!r} is an alpha without lora_A / lora_B tensors")
            for module, pair in pairs.items():
                _check_pair(name, module, pair, shapes)
            parts = _read_diffusers(name, ckpt, pairs, alphas)
    lora = LoRA(name=name, path=str(p), layout=layout, parts=tuple(parts))
    logger.info("LoRA %s: %s layout, %d layers, rank %s", name, layout, len(lora.layers), list(lora.ranks))
    return lora
