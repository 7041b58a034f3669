"""VAE checkpoint layouts -> official Genmo key names (docs/formats.md).

Recognised layouts (keys only, no data read):

- ``official``: genmo ``decoder.safetensors`` / ``encoder.safetensors`` (fp32), the first-release ``vae.safetensors``
  (decoder only) and Kijai's bf16 decoder / encoder files: official names, no prefix.
- ``comfy``: Comfy-Org ``mochi_vae.safetensors``: ``decoder.`` / ``encoder.`` prefixes (16-bit); also under ``vae.``
  or ``first_stage_model.`` (all-in-one files).
- ``diffusers``: ``AutoencoderKLMochi`` (``decoder.conv_in``, ``encoder.proj_in``, ...; mapping of
  diffusers ``scripts/convert_mochi_to_diffusers.py``), as a file or a folder of shards.

:func:`vae_key_map` gives, per component, ``{official key: [source keys]}``; several source keys are concatenated
along dim 0 (diffusers' separate ``to_q`` / ``to_k`` / ``to_v`` -> official ``attn.qkv``).
:func:`to_diffusers` is the inverse, for writers and tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsupportedCheckpointError
from .detect import VAE_DECODER, VAE_ENCODER, components, describe

__all__ = ["VaeKeyMap", "vae_key_map", "mapped_shapes", "to_diffusers"]

_OUTER = ("", "vae.", "first_stage_model.")
_RES_D2O = {
    "norm1.norm_layer": "stack.0",
    "conv1.conv": "stack.2",
    "norm2.norm_layer": "stack.3",
    "conv2.conv": "stack.5",
}
_RES_O2D = {v: k for k, v in _RES_D2O.items()}


@dataclass(frozen=True)
class VaeKeyMap:
    """layout: "official" | "comfy" | "diffusers"; decoder / encoder: {official key: [source keys]} or None."""

    layout: str
    decoder: dict[str, list[str]] | None
    encoder: dict[str, list[str]] | None


def _strip(keys: set[str], prefix: str) -> dict[str, list[str]]:
    n = len(prefix)
    return {k[n:]: [k] for k in keys if k.startswith(prefix)}


def _res_inner_d2o(rest: str) -> str:
    for d, o in _RES_D2O.items():
        if rest.startswith(d + "."):
            return o + rest[len(d) :]
    raise KeyError(rest)


def _diffusers_decoder(keys: set[str], prefix: str) -> dict[str, list[str]]:
    sub = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    n_up = len({m.group(1) for k in sub if (m := re.match(r"up_blocks\.(\d+)\.", k))})
    out: dict[str, list[str]] = {}
    for k in sub:
        src = [prefix + k]
        if m := re.match(r"conv_in\.(weight|bias)$", k):
            out[f"blocks.0.0.{m.group(1)}"] = src
        elif m := re.match(r"block_in\.resnets\.(\d+)\.(.+)$", k):
            out[f"blocks.0.{int(m.group(1)) + 1}.{_res_inner_d2o(m.group(2))}"] = src
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", k):
            out[f"blocks.{int(m.group(1)) + 1}.blocks.{m.group(2)}.{_res_inner_d2o(m.group(3))}"] = src
        elif m := re.match(r"up_blocks\.(\d+)\.proj\.(weight|bias)$", k):
            out[f"blocks.{int(m.group(1)) + 1}.proj.{m.group(2)}"] = src
        elif m := re.match(r"block_out\.resnets\.(\d+)\.(.+)$", k):
            out[f"blocks.{n_up + 1}.{m.group(1)}.{_res_inner_d2o(m.group(2))}"] = src
        elif m := re.match(r"proj_out\.(weight|bias)$", k):
            out[f"output_proj.{m.group(1)}"] = src
        else:
            raise UnsupportedCheckpointError(
                f"diffusers VAE decoder key {prefix + k!r} is not part of AutoencoderKLMochi"
            )
    return out


def _diffusers_encoder(keys: set[str], prefix: str) -> dict[str, list[str]]:
    sub = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    n0 = len({m.group(1) for k in sub if (m := re.match(r"block_in\.resnets\.(\d+)\.", k))})
    n_down = len({m.group(1) for k in sub if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    out: dict[str, list[str]] = {}
    qkv: dict[str, dict[str, str]] = {}

    def block_part(base: str, i: int, rest: str, kind: str) -> None:
        layer = f"{base}{i}"
        if kind == "resnets":
            out[f"{layer}.{_res_inner_d2o(rest)}"] = [src]
        elif kind == "norms":
            out[f"{layer}.attn_block.norm.{rest.removeprefix('norm_layer.')}"] = [src]
        elif m2 := re.match(r"to_([qkv])\.weight$", rest):
            qkv.setdefault(f"{layer}.attn_block.attn.qkv.weight", {})[m2.group(1)] = src
        elif m2 := re.match(r"to_out\.0\.(weight|bias)$", rest):
            out[f"{layer}.attn_block.attn.out.{m2.group(1)}"] = [src]
        else:
            raise KeyError(rest)

    for k in sub:
        src = prefix + k
        try:
            if m := re.match(r"proj_in\.(weight|bias)$", k):
                out[f"layers.0.{m.group(1)}"] = [src]
            elif m := re.match(r"block_in\.(resnets|norms|attentions)\.(\d+)\.(.+)$", k):
                block_part("layers.", 1 + int(m.group(2)), m.group(3), m.group(1))
            elif m := re.match(r"down_blocks\.(\d+)\.conv_in\.conv\.(weight|bias)$", k):
                out[f"layers.{1 + n0 + int(m.group(1))}.layers.0.{m.group(2)}"] = [src]
            elif m := re.match(r"down_blocks\.(\d+)\.(resnets|norms|attentions)\.(\d+)\.(.+)$", k):
                block_part(f"layers.{1 + n0 + int(m.group(1))}.layers.", int(m.group(3)) + 1, m.group(4), m.group(2))
            elif m := re.match(r"block_out\.(resnets|norms|attentions)\.(\d+)\.(.+)$", k):
                block_part("layers.", 1 + n0 + n_down + int(m.group(2)), m.group(3), m.group(1))
            elif m := re.match(r"norm_out\.norm_layer\.(weight|bias)$", k):
                out[f"output_norm.{m.group(1)}"] = [src]
            elif k == "proj_out.weight":
                out["output_proj.weight"] = [src]
            else:
                raise KeyError(k)
        except KeyError:
            raise UnsupportedCheckpointError(
                f"diffusers VAE encoder key {src!r} is not part of AutoencoderKLMochi"
            ) from None
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise UnsupportedCheckpointError(
                f"diffusers VAE encoder: {key} needs to_q, to_k and to_v; found {sorted(parts)}"
            )
        out[key] = [parts["q"], parts["k"], parts["v"]]
    return out


def vae_key_map(keys: Iterable[str], *, path: str = "checkpoint") -> VaeKeyMap:
    """Detect the layout of a VAE file and map its keys to official names; refuse other components / layouts."""
    ks = set(keys)
    for outer in _OUTER:
        if outer + "decoder.conv_in.weight" in ks or outer + "encoder.proj_in.weight" in ks:
            dec = _diffusers_decoder(ks, outer + "decoder.") if outer + "decoder.conv_in.weight" in ks else None
            enc = _diffusers_encoder(ks, outer + "encoder.") if outer + "encoder.proj_in.weight" in ks else None
            return VaeKeyMap("diffusers", dec, enc)
    for outer in _OUTER:
        dec_p = outer + "decoder."
        enc_p = outer + "encoder."
        has_dec = dec_p + "blocks.0.0.weight" in ks
        has_enc = enc_p + "layers.0.weight" in ks and enc_p + "output_proj.weight" in ks
        if has_dec or has_enc:
            return VaeKeyMap("comfy", _strip(ks, dec_p) if has_dec else None, _strip(ks, enc_p) if has_enc else None)
    for outer in _OUTER:
        if outer + "blocks.0.0.weight" in ks and outer + "output_proj.weight" in ks:
            return VaeKeyMap("official", _strip(ks, outer), None)
        if outer + "layers.0.weight" in ks and outer + "output_proj.weight" in ks:
            return VaeKeyMap("official", None, _strip(ks, outer))
    found = components(ks)
    other = {k: v for k, v in found.items() if k not in (VAE_DECODER, VAE_ENCODER)}
    if other:
        raise UnsupportedCheckpointError(
            f"{path}: this is not a Mochi VAE checkpoint; it holds {describe(other)}. "
            "Load DiT files with load_dit and T5 files with load_text_encoder."
        )
    sample = ", ".join(repr(k) for k in sorted(ks)[:5])
    raise UnsupportedCheckpointError(
        f"{path}: unknown VAE checkpoint layout ({len(ks)} tensors, first keys: {sample}). Supported: official Genmo "
        "decoder.safetensors / encoder.safetensors / vae.safetensors, Comfy-Org mochi_vae.safetensors, Kijai bf16 "
        "decoder / encoder, diffusers AutoencoderKLMochi."
    )


def mapped_shapes(infos: Mapping[str, Any], mapping: Mapping[str, list[str]]) -> dict[str, tuple[int, ...]]:
    """Shapes under official names for one component of a :class:`VaeKeyMap`, from header infos (anything with a
    ``shape``, keyed by source name): several sources of one key are concatenated along dim 0, as when loading."""
    out: dict[str, tuple[int, ...]] = {}
    for key, sources in mapping.items():
        shapes = [tuple(infos[src].shape) for src in sources]
        first = shapes[0]
        out[key] = (sum(s[0] for s in shapes), *first[1:]) if len(shapes) > 1 else first
    return out


def _official_res_to_diffusers(rest: str) -> str:
    for o, d in _RES_O2D.items():
        if rest.startswith(o + "."):
            return d + rest[len(o) :]
    raise KeyError(rest)


def to_diffusers(
    decoder: Mapping[str, torch.Tensor] | None, encoder: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """Official decoder / encoder state dicts -> one AutoencoderKLMochi state dict (``decoder.`` / ``encoder.``)."""
    out: dict[str, torch.Tensor] = {}
    if decoder is not None:
        n_stage = 1 + max(int(m.group(1)) for k in decoder if (m := re.match(r"blocks\.(\d+)\.", k)))
        for k, v in decoder.items():
            if m := re.match(r"blocks\.0\.0\.(weight|bias)$", k):
                nk = f"conv_in.{m.group(1)}"
            elif m := re.match(r"blocks\.0\.(\d+)\.(.+)$", k):
                nk = f"block_in.resnets.{int(m.group(1)) - 1}.{_official_res_to_diffusers(m.group(2))}"
            elif m := re.match(r"blocks\.(\d+)\.blocks\.(\d+)\.(.+)$", k):
                nk = f"up_blocks.{int(m.group(1)) - 1}.resnets.{m.group(2)}.{_official_res_to_diffusers(m.group(3))}"
            elif m := re.match(r"blocks\.(\d+)\.proj\.(.+)$", k):
                nk = f"up_blocks.{int(m.group(1)) - 1}.proj.{m.group(2)}"
            elif (m := re.match(r"blocks\.(\d+)\.(\d+)\.(.+)$", k)) and int(m.group(1)) == n_stage - 1:
                nk = f"block_out.resnets.{m.group(2)}.{_official_res_to_diffusers(m.group(3))}"
            elif k.startswith("output_proj."):
                nk = "proj_out." + k[len("output_proj.") :]
            else:
                raise KeyError(k)
            out["decoder." + nk] = v
    if encoder is not None:
        idx = sorted({int(m.group(1)) for k in encoder if (m := re.match(r"layers\.(\d+)\.", k))})
        down = sorted({int(m.group(1)) for k in encoder if (m := re.match(r"layers\.(\d+)\.layers\.0\.weight$", k))})
        n0 = down[0] - 1 if down else len(idx) - 1
        for k, v in encoder.items():
            if m := re.match(r"layers\.0\.(weight|bias)$", k):
                out[f"encoder.proj_in.{m.group(1)}"] = v
                continue
            if k.startswith("output_norm."):
                out["encoder.norm_out.norm_layer." + k[len("output_norm.") :]] = v
                continue
            if k == "output_proj.weight":
                out["encoder.proj_out.weight"] = v
                continue
            if m := re.match(r"layers\.(\d+)\.layers\.0\.(weight|bias)$", k):
                out[f"encoder.down_blocks.{down.index(int(m.group(1)))}.conv_in.conv.{m.group(2)}"] = v
                continue
            if m := re.match(r"layers\.(\d+)\.layers\.(\d+)\.(.+)$", k):
                base, i, rest = f"encoder.down_blocks.{down.index(int(m.group(1)))}", int(m.group(2)) - 1, m.group(3)
            elif m := re.match(r"layers\.(\d+)\.(.+)$", k):
                li = int(m.group(1))
                if li <= n0:
                    base, i = "encoder.block_in", li - 1
                else:
                    base, i = "encoder.block_out", li - 1 - n0 - len(down)
                rest = m.group(2)
            else:
                raise KeyError(k)
            if rest.startswith("attn_block.norm."):
                out[f"{base}.norms.{i}.norm_layer.{rest[len('attn_block.norm.') :]}"] = v
            elif rest == "attn_block.attn.qkv.weight":
                q, kk, vv = v.chunk(3, dim=0)
                for name, part in (("to_q", q), ("to_k", kk), ("to_v", vv)):
                    out[f"{base}.attentions.{i}.{name}.weight"] = part.contiguous()
            elif rest.startswith("attn_block.attn.out."):
                out[f"{base}.attentions.{i}.to_out.0.{rest[len('attn_block.attn.out.') :]}"] = v
            else:
                out[f"{base}.resnets.{i}.{_official_res_to_diffusers(rest)}"] = v
    return out
