"""Tell which Mochi components a checkpoint holds, from its key names alone (docs/formats.md).

Every loader calls :func:`components` first so that a file for another component is refused with a
message that says what the file is and which loader takes it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UnsupportedCheckpointError

__all__ = [
    "DIT",
    "VAE_DECODER",
    "VAE_ENCODER",
    "T5",
    "DIT_PREFIXES",
    "VAE_PREFIXES",
    "T5_PREFIXES",
    "components",
    "require_component",
    "describe",
]

DIT = "dit"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
T5 = "t5"

_LOADER_OF = {
    DIT: "load_dit / the Mochi DiT loader (models/diffusion_models)",
    VAE_DECODER: "load_vae / the Mochi VAE loader (models/vae)",
    VAE_ENCODER: "load_vae / the Mochi VAE loader (models/vae)",
    T5: "load_text_encoder / the Mochi T5 loader (models/text_encoders)",
}

# The one definition of the key prefixes under which each component is found (docs/formats.md), longest first so
# that an all-in-one file's prefix wins over a shorter one; "" (no prefix) last. Every format module imports these.

#: DiT: Comfy split / all-in-one files, other single-file savers, diffusers-in-a-pipeline, none (official, Kijai).
DIT_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.", "transformer.", "")
#: VAE (outer prefix, before ``decoder.`` / ``encoder.``): Comfy all-in-one, SD-style, none.
VAE_PREFIXES: tuple[str, ...] = ("vae.", "first_stage_model.", "")
#: T5 encoder: Comfy all-in-one, Comfy text-encoder files, none (HF names).
T5_PREFIXES: tuple[str, ...] = (
    "text_encoders.t5xxl.transformer.",
    "text_encoders.t5xxl.",
    "t5xxl.transformer.",
    "transformer.",
    "",
)


def _has(keys: set[str], prefixes: Iterable[str], suffixes: Iterable[str]) -> str | None:
    for p in prefixes:
        for s in suffixes:
            if p + s in keys:
                return p + s
    return None


def components(keys: Iterable[str]) -> dict[str, str]:
    """Map of component name -> one key that proves it is present (empty when nothing is recognised)."""
    ks = set(keys)
    found: dict[str, str] = {}
    dit = _has(
        ks,
        DIT_PREFIXES,
        (
            "t5_yproj.weight",
            "blocks.0.attn.qkv_x.weight",
            "blocks.0.attn.qkv_x.Q8_0_qweight",
            "blocks.0.attn.qkv_x.Q4_0_qweight",
            "blocks.0.mod_x.weight",
            "transformer_blocks.0.attn1.to_q.weight",
            "patch_embed.proj.weight",
        ),
    )
    if dit:
        found[DIT] = dit
    dec = _has(
        ks,
        tuple(p + s for p in VAE_PREFIXES for s in ("", "decoder.")),
        ("blocks.0.0.weight", "output_proj.weight", "decoder.conv_in.weight", "conv_in.weight"),
    )
    # "output_proj.weight" alone is ambiguous (the encoder has one too): require a decoder-only key.
    if dec and dec.endswith("output_proj.weight"):
        prefix = dec[: -len("output_proj.weight")]
        dec = dec if prefix + "blocks.0.0.weight" in ks else None
    if dec and dec.endswith("conv_in.weight") and "decoder." not in dec:
        dec = None
    if dec:
        found[VAE_DECODER] = dec
    enc = _has(
        ks,
        tuple(p + s for p in VAE_PREFIXES for s in ("", "encoder.")),
        ("layers.0.weight", "encoder.proj_in.weight"),
    )
    if enc and enc.endswith("layers.0.weight"):
        # T5 has no "layers.0", but be strict: an encoder also has an output_proj without bias.
        prefix = enc[: -len("layers.0.weight")]
        enc = enc if prefix + "output_proj.weight" in ks else None
    if enc:
        found[VAE_ENCODER] = enc
    t5 = _has(
        ks,
        T5_PREFIXES,
        ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight"),
    )
    if t5:
        found[T5] = t5
    return found


def describe(found: dict[str, str]) -> str:
    if not found:
        return "no Mochi component"
    return ", ".join(f"{name} (key {key!r})" for name, key in found.items())


def require_component(
    keys: Iterable[str], wanted: str, *, path: str, alternatives: Iterable[str] = ()
) -> dict[str, str]:
    """Refuse a file that lacks component ``wanted`` (or any of ``alternatives``), naming what it holds instead."""
    ks = list(keys)
    found = components(ks)
    if wanted in found or any(a in found for a in alternatives):
        return found
    if found:
        other = next(iter(found))
        raise UnsupportedCheckpointError(
            f"{path}: this is not a {wanted} checkpoint; it holds {describe(found)}. Load it with {_LOADER_OF[other]}."
        )
    sample = ", ".join(repr(k) for k in ks[:5])
    raise UnsupportedCheckpointError(
        f"{path}: unknown checkpoint layout for {wanted} ({len(ks)} tensors, first keys: {sample}). "
        "Supported: official Genmo, Comfy-Org repackaged (bf16, fp8_scaled, all-in-one), Kijai (bf16, fp8, GGUF), diffusers."
    )
