"""T5 v1.1 encoder checkpoints: key prefixes, storage formats and the configuration implied by the shapes.

Layouts read (docs/numerics.md §6, docs/formats.md):

- Comfy-Org ``t5xxl_fp16.safetensors``: HF ``T5EncoderModel`` names (``shared.weight``, ``encoder.block.{i}...``)
  in fp16, no prefix;
- Comfy ``t5xxl_fp8_e4m3fn.safetensors``: same names, Linear weights stored as plain fp8;
- Comfy ``t5xxl_fp8_e4m3fn_scaled.safetensors``: a ``scaled_fp8`` marker tensor (its dtype names the fp8 format)
  and, per quantized Linear, an fp8 ``<layer>.weight`` plus an fp32 scalar ``<layer>.scale_weight``
  (W = W_fp8 * scale, semantics of Comfy-Org/ComfyUI ``comfy/ops.py`` scaled_fp8_ops);
- the HF ``google/t5-v1_1-xxl`` / ``genmo/mochi-1-preview`` ``text_encoder`` folder: sharded safetensors with a
  ``model.safetensors.index.json`` (``encoder.embed_tokens.weight`` is accepted for ``shared.weight``);
- the Comfy all-in-one file: T5 under ``text_encoders.t5xxl.transformer.`` next to the DiT and the VAE;
- llama.cpp ``.gguf`` encoders (e.g. ``t5-v1_1-xxl-encoder-Q5_K_M.gguf``), whose names
  :mod:`mochi_core.formats.gguf` maps to the HF ones; quantized tensors are listed in :attr:`T5Layout.quant`.

Nothing here builds a model: :func:`inspect_t5` reads the header only and returns a :class:`T5Layout`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import torch

from ..errors import UnsupportedCheckpointError
from .detect import T5, T5_PREFIXES, require_component
from .io import Checkpoint

__all__ = ["T5Layout", "T5Shape", "inspect_t5", "T5_PREFIXES"]

logger = logging.getLogger(__name__)


_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.")
_IGNORED_PREFIXES = ("decoder.", "lm_head.")
_IGNORED_KEYS = {"scaled_fp8", "logit_scale", "spiece_model"}


@dataclass(frozen=True)
class T5Shape:
    """T5 encoder sizes derived from the weight shapes (T5-XXL: 32128, 4096, 64, 64, 10240, 24, 32, gated)."""

    vocab_size: int
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    num_buckets: int
    gated: bool

    def config_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``transformers.T5Config`` (T5 v1.1: gated GELU, untied embeddings)."""
        return {
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_kv": self.d_kv,
            "num_heads": self.num_heads,
            "d_ff": self.d_ff,
            "num_layers": self.num_layers,
            "num_decoder_layers": 0,
            "relative_attention_num_buckets": self.num_buckets,
            "relative_attention_max_distance": 128,
            "dropout_rate": 0.0,
            "layer_norm_epsilon": 1e-6,
            "feed_forward_proj": "gated-gelu" if self.gated else "relu",
            "tie_word_embeddings": False,
            "is_encoder_decoder": False,
            "use_cache": False,
            "pad_token_id": 0,
            "eos_token_id": 1,
        }


@dataclass
class T5Layout:
    """Where the T5 tensors of a checkpoint are and how they are stored.

    ``keys`` maps each HF ``T5EncoderModel`` parameter name to its key in the file; ``scales`` maps a Linear
    weight name (``...q.weight``) to the file key of its ``scale_weight`` (scaled fp8 only).
    """

    prefix: str
    shape: T5Shape
    keys: dict[str, str]
    scales: dict[str, str] = field(default_factory=dict)
    marker_dtype: torch.dtype | None = None
    stored_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    quant: dict[str, str] = field(default_factory=dict)

    @property
    def format_name(self) -> str:
        """A short name of the published layout: ``fp32``/``fp16``/``bf16``/``fp8_e4m3fn``/``fp8_e4m3fn_scaled``, or
        ``gguf_<type>`` (the type of the first attention weight) for a ``.gguf`` file with quantized tensors."""
        q = "encoder.block.0.layer.0.SelfAttention.q.weight"
        if self.quant:
            return "gguf_" + self.quant.get(q, next(iter(self.quant.values())))
        w = self.stored_dtypes.get(q, torch.float32)
        from ..dtypes import dtype_name

        name = dtype_name(w)
        return name + ("_scaled" if self.scales else "")


def _find_prefix(keys: set[str]) -> str:
    for p in T5_PREFIXES:
        if (
            p + "encoder.final_layer_norm.weight" in keys
            or p + "encoder.block.0.layer.0.SelfAttention.q.weight" in keys
        ):
            return p
    raise UnsupportedCheckpointError("no T5 encoder keys found")  # require_component ran first; defensive


def inspect_t5(ckpt: Checkpoint, *, path: str | None = None) -> T5Layout:
    """Read the header of ``ckpt`` and describe its T5 encoder (no tensor data read).

    Refuses a file of another component (naming what it holds), a T5 with missing tensors (naming them)
    and shapes that do not form a T5 encoder.
    """
    where = path or str(ckpt.path)
    all_keys = set(ckpt.keys())
    require_component(all_keys, T5, path=where)
    prefix = _find_prefix(all_keys)
    keys: dict[str, str] = {}
    scales: dict[str, str] = {}
    ignored: list[str] = []
    for k in all_keys:
        if not k.startswith(prefix):
            continue
        name = k[len(prefix) :]
        if name in _IGNORED_KEYS or name.startswith(_IGNORED_PREFIXES) or name.endswith(".scale_input"):
            ignored.append(name)
            continue
        if name.endswith(".scale_weight"):
            info = ckpt.infos[k]
            if math.prod(info.shape) != 1 or not info.dtype.is_floating_point:
                raise UnsupportedCheckpointError(
                    f"{where}: {k!r} must be a single floating-point scale (scaled fp8); it has shape "
                    f"{list(info.shape)} and dtype {str(info.dtype).replace('torch.', '')}"
                )
            scales[name[: -len(".scale_weight")] + ".weight"] = k
            continue
        if name == "encoder.embed_tokens.weight":
            name = "shared.weight" if prefix + "shared.weight" not in all_keys else ""
            if not name:
                ignored.append("encoder.embed_tokens.weight")
                continue
        keys[name] = k
    if ignored:
        logger.debug("%s: ignoring %d tensors not used by the T5 encoder (e.g. %s)", where, len(ignored), ignored[0])
    marker = prefix + "scaled_fp8"
    marker_dtype = ckpt.infos[marker].dtype if marker in ckpt.infos else None
    if marker_dtype is None and "scaled_fp8" in ckpt.infos:
        marker_dtype = ckpt.infos["scaled_fp8"].dtype

    def shape_of(name: str) -> tuple[int, ...]:
        if name not in keys:
            raise UnsupportedCheckpointError(f"{where}: T5 encoder tensor {prefix + name!r} is missing")
        return ckpt.infos[keys[name]].shape

    vocab, d_model = _two(shape_of("shared.weight"), "shared.weight", where)
    layers = sorted({int(m.group(1)) for n in keys if (m := _BLOCK_RE.match(n))})
    if not layers or layers != list(range(len(layers))):
        raise UnsupportedCheckpointError(f"{where}: T5 encoder blocks are not numbered 0..n-1 (found {layers[:8]})")
    buckets, heads = _two(
        shape_of("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"), "bias", where
    )
    inner, dm = _two(shape_of("encoder.block.0.layer.0.SelfAttention.q.weight"), "q.weight", where)
    if dm != d_model or inner % heads:
        raise UnsupportedCheckpointError(
            f"{where}: inconsistent T5 shapes: q.weight {(inner, dm)} with d_model {d_model} and {heads} heads"
        )
    ff_prefix = "encoder.block.0.layer.1.DenseReluDense."
    gated = ff_prefix + "wi_0.weight" in keys
    d_ff, _ = _two(shape_of(ff_prefix + ("wi_0.weight" if gated else "wi.weight")), "wi.weight", where)
    shape = T5Shape(vocab, d_model, inner // heads, heads, d_ff, len(layers), buckets, gated)

    expected = _expected_names(shape)
    missing = [n for n in expected if n not in keys]
    if missing:
        raise UnsupportedCheckpointError(
            f"{where}: T5 encoder checkpoint is incomplete: {len(missing)} tensors missing (e.g. {prefix + missing[0]!r})"
        )
    extra = sorted(set(keys) - set(expected))
    if extra:
        logger.debug("%s: ignoring %d unexpected T5 tensors (e.g. %s)", where, len(extra), extra[0])
    keys = {n: keys[n] for n in expected}
    scales = {n: s for n, s in scales.items() if n in keys}
    stored = {n: ckpt.infos[k].dtype for n, k in keys.items()}
    quant = {n: q for n, k in keys.items() if (q := ckpt.infos[k].quant) is not None}
    layout = T5Layout(prefix, shape, keys, scales, marker_dtype, stored, quant)
    logger.info(
        "%s: T5 encoder %s, %d layers, d_model %d, %d heads x %d, d_ff %d, vocab %d%s",
        where,
        layout.format_name,
        shape.num_layers,
        shape.d_model,
        shape.num_heads,
        shape.d_kv,
        shape.d_ff,
        shape.vocab_size,
        f", prefix {prefix!r}" if prefix else "",
    )
    return layout


def _two(shape: tuple[int, ...], what: str, where: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise UnsupportedCheckpointError(f"{where}: T5 tensor {what} should be 2-D, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _expected_names(shape: T5Shape) -> list[str]:
    """Every parameter name of ``T5EncoderModel`` for ``shape`` (HF naming, no prefix)."""
    names = ["shared.weight", "encoder.final_layer_norm.weight"]
    ff = ("wi_0", "wi_1", "wo") if shape.gated else ("wi", "wo")
    for i in range(shape.num_layers):
        b = f"encoder.block.{i}.layer."
        names += [f"{b}0.SelfAttention.{p}.weight" for p in ("q", "k", "v", "o")]
        if i == 0:
            names.append(f"{b}0.SelfAttention.relative_attention_bias.weight")
        names.append(f"{b}0.layer_norm.weight")
        names += [f"{b}1.DenseReluDense.{p}.weight" for p in ff]
        names.append(f"{b}1.layer_norm.weight")
    return names
