"""``.gguf`` containers (llama.cpp's format), read with the ``gguf`` package into a :class:`Checkpoint`.

A ``.gguf`` file opens like every other checkpoint (:func:`mochi_core.formats.io.open_checkpoint` detects it from
its ``GGUF`` magic), so the DiT and T5 loaders, the queue-time checks of the nodes and the planner see the same
``infos`` / ``get`` interface as for safetensors. Facts of the published files this module relies on:

- The container is memory-mapped (``gguf.GGUFReader``, a private copy-on-write mapping like safetensors', so
  :mod:`mochi_core.memory.streaming.pages` can give a streamed block's pages back; weights are never written); a tensor's dimensions are stored innermost first, so the
  torch shape is their reverse. ``general.architecture`` names the model.
- Mochi DiT files made with the ComfyUI-GGUF conversion tools keep the checkpoint's own tensor names (official
  Genmo names, sometimes under Comfy's ``model.diffusion_model.`` prefix); their architecture field is
  ``mochi``, ``pig`` (a generic tag of some converters) or absent. A tensor the converter flattened to rows of 256
  values to quantize it carries its real shape in the metadata key ``comfy.gguf.orig_shape.<tensor name>``
  (an array of int32 in torch order).
- T5 encoder files made with llama.cpp (architecture ``t5encoder``, or ``t5`` with a decoder) use llama.cpp's
  names, mapped here to Hugging Face ``T5EncoderModel`` names: ``token_embd`` -> ``shared``,
  ``enc.blk.N.attn_q/k/v/o`` -> ``encoder.block.N.layer.0.SelfAttention.q/k/v/o``, ``attn_rel_b`` ->
  ``relative_attention_bias``, ``attn_norm`` -> ``layer.0.layer_norm``, ``ffn_gate/ffn_up/ffn_down`` ->
  ``layer.1.DenseReluDense.wi_0/wi_1/wo`` (``ffn_up`` is ``wi`` in an ungated T5), ``ffn_norm`` ->
  ``layer.1.layer_norm``, ``enc.output_norm`` -> ``encoder.final_layer_norm``; decoder tensors are set aside.

Tensor types: F32, F16, BF16 and the block formats of :mod:`mochi_core.quants` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q2_K ... Q6_K). A quantized tensor's :class:`TensorInfo` has ``dtype`` uint8, its logical ``shape`` and ``quant``
(the lower-case type name); :meth:`GGUFCheckpoint.get` returns its bytes as a uint8 tensor of shape
(rows, bytes per row) when each row of the logical shape is whole blocks, else flat.

Refused, naming the file: a type this pack does not dequantize (named, with the supported list), a file of another
architecture (an LLM, another image or video model), a truncated or damaged file, a big-endian file.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import quants
from ..errors import UnsupportedCheckpointError
from .io import Checkpoint, TensorInfo

__all__ = [
    "GGUF_MAGIC",
    "DIT_ARCHITECTURES",
    "T5_ARCHITECTURES",
    "GGUFCheckpoint",
    "is_gguf",
    "open_gguf",
    "t5_hf_name",
]

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
#: ``general.architecture`` values of Mochi DiT files (absent is accepted too; tensor names then decide).
DIT_ARCHITECTURES = ("mochi", "pig")
#: ``general.architecture`` values of T5 encoder files (llama.cpp).
T5_ARCHITECTURES = ("t5", "t5encoder")
#: Architectures of other image / video diffusion models found in ComfyUI-world ``.gguf`` files.
_OTHER_DIFFUSION = {
    "flux",
    "sd1",
    "sdxl",
    "sd3",
    "aura",
    "hidream",
    "cosmos",
    "ltxv",
    "hyvid",
    "wan",
    "lumina2",
    "qwen_image",
    "chroma",
}
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."

_T5_BLOCK = {
    "attn_q": "layer.0.SelfAttention.q",
    "attn_k": "layer.0.SelfAttention.k",
    "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o",
    "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "attn_norm": "layer.0.layer_norm",
    "ffn_gate": "layer.1.DenseReluDense.wi_0",
    "ffn_up": "layer.1.DenseReluDense.wi_1",
    "ffn_down": "layer.1.DenseReluDense.wo",
    "ffn_norm": "layer.1.layer_norm",
}
_T5_BLOCK_RE = re.compile(r"^enc\.blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def is_gguf(path: Path) -> bool:
    """True when ``path`` is a file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def t5_hf_name(name: str, gated: bool = True) -> str:
    """llama.cpp T5 tensor name -> Hugging Face ``T5EncoderModel`` name (``decoder.`` + name for decoder tensors,
    unknown names unchanged). ``gated``: the block has an ``ffn_gate`` (T5 v1.1), so ``ffn_up`` is ``wi_1``."""
    if name == "token_embd.weight":
        return "shared.weight"
    if name == "enc.output_norm.weight":
        return "encoder.final_layer_norm.weight"
    m = _T5_BLOCK_RE.match(name)
    if m and m.group(2) in _T5_BLOCK:
        hf = _T5_BLOCK[m.group(2)]
        if m.group(2) == "ffn_up" and not gated:
            hf = "layer.1.DenseReluDense.wi"
        return f"encoder.block.{m.group(1)}.{hf}.{m.group(3)}"
    if name.startswith("dec.") or name == "output.weight":
        return "decoder." + name
    return name


@dataclass
class GGUFCheckpoint(Checkpoint):
    """A ``.gguf`` file as a :class:`Checkpoint`: ``infos`` under the names the loaders use, ``get`` returning
    memory-mapped tensors (do not write to them). ``architecture``: the file's ``general.architecture`` or None."""

    architecture: str | None = None
    _reader: Any = field(default=None, repr=False)
    _tensors: dict[str, Any] = field(default_factory=dict, repr=False)

    def get(self, key: str) -> torch.Tensor:
        info = self.infos[key]
        rt = self._tensors[key]
        with warnings.catch_warnings():  # arrays of a read-only reader would make torch warn
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(rt.data)
        if info.quant is not None:
            per_row = quants.row_bytes(info.quant, math.prod(info.shape[1:])) if info.shape else None
            return raw.reshape(info.shape[0], per_row) if per_row is not None else raw.reshape(-1)
        if info.dtype == torch.bfloat16:
            raw = raw.reshape(-1).view(torch.bfloat16)
        return raw.reshape(info.shape)

    def close(self) -> None:
        self._tensors.clear()
        self._reader = None
        super().close()


def _refuse(path: Path, what: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(f"{path.name}: {what}")


def _read(path: Path) -> Any:
    """``gguf.GGUFReader`` of ``path``; the package's errors become messages naming the file."""
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path), "c")  # private (copy-on-write) mapping: CPU streaming can give pages back
    except ValueError as exc:
        m = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(exc))
        if m:
            raise _refuse(
                path,
                f"a tensor is stored in GGUF type id {m.group(1)}, unknown to this pack; supported types: "
                f"{', '.join(quants.SUPPORTED_TYPES)}",
            ) from None
        raise _refuse(
            path, f"cannot be read as GGUF ({exc}): the file is truncated or damaged (incomplete download?)"
        ) from None
    except (IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError, MemoryError) as exc:
        raise _refuse(
            path,
            f"cannot be read as GGUF ({type(exc).__name__}: {exc}): the file is truncated or damaged "
            f"(incomplete download?); it is {size} bytes long",
        ) from None
    if reader.byte_order == "S":
        raise _refuse(path, "big-endian GGUF files are not supported; use the little-endian file")
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise _refuse(
            path,
            f"file is truncated: its tensors need {end} bytes but the file has {size} (incomplete download?)",
        )
    return reader


def _string_field(reader: Any, key: str) -> str | None:
    from gguf import GGUFValueType

    f = reader.get_field(key)
    if f is None or f.types != [GGUFValueType.STRING]:
        return None
    return bytes(f.parts[f.data[-1]]).decode("utf-8", errors="replace")


def _orig_shape(reader: Any, path: Path, name: str, numel: int) -> tuple[int, ...] | None:
    """The ``comfy.gguf.orig_shape.<name>`` shape, checked to hold ``numel`` values; None when absent."""
    from gguf import GGUFValueType

    f = reader.get_field(ORIG_SHAPE_KEY + name)
    if f is None:
        return None
    if (
        len(f.types) != 2
        or f.types[0] != GGUFValueType.ARRAY
        or f.types[1]
        not in (
            GGUFValueType.INT32,
            GGUFValueType.INT64,
            GGUFValueType.UINT32,
            GGUFValueType.UINT64,
        )
    ):
        raise _refuse(path, f"metadata {ORIG_SHAPE_KEY + name!r} is not an array of integers")
    shape = tuple(int(f.parts[i][0]) for i in f.data)
    if math.prod(shape) != numel or any(s <= 0 for s in shape):
        raise _refuse(
            path, f"metadata {ORIG_SHAPE_KEY + name!r} = {list(shape)} does not hold the {numel} values stored"
        )
    return shape


def _check_architecture(path: Path, arch: str | None) -> None:
    if arch is None or arch in DIT_ARCHITECTURES or arch in T5_ARCHITECTURES:
        return
    from gguf import MODEL_ARCH_NAMES

    if arch in _OTHER_DIFFUSION:
        kind = "another image or video diffusion model"
    elif arch in MODEL_ARCH_NAMES.values():
        kind = "a language model (LLM) or another network known to llama.cpp"
    else:
        kind = "an unknown model"
    raise _refuse(
        path,
        f"this .gguf file is for architecture {arch!r} ({kind}), not Mochi. The Mochi loaders read .gguf files of the "
        f"Mochi DiT (general.architecture {' or '.join(repr(a) for a in DIT_ARCHITECTURES)}, or none, with Mochi "
        f"tensor names; models/diffusion_models) and of the T5 v1.1 XXL encoder "
        f"({' or '.join(repr(a) for a in T5_ARCHITECTURES)}; models/text_encoders)",
    )


def open_gguf(path: str | Path) -> GGUFCheckpoint:
    """Open a ``.gguf`` file lazily (header only; tensor data stays memory-mapped). Refuses what the module
    docstring lists with :class:`UnsupportedCheckpointError` naming the file."""
    p = Path(path)
    reader = _read(p)
    arch = _string_field(reader, "general.architecture")
    _check_architecture(p, arch)
    names = [t.name for t in reader.tensors]
    llama_t5 = arch in T5_ARCHITECTURES or any(n.startswith("enc.blk.") for n in names)
    gated = {m.group(1) for n in names if (m := _T5_BLOCK_RE.match(n)) and m.group(2) == "ffn_gate"}
    infos: dict[str, TensorInfo] = {}
    tensors: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for t in reader.tensors:
        tname = t.tensor_type.name
        if tname not in quants.SUPPORTED_TYPES:
            raise _refuse(
                p,
                f"tensor {t.name!r} is stored as {tname}, which this pack cannot dequantize; supported GGUF types: "
                f"{', '.join(quants.SUPPORTED_TYPES)} (pick a file quantized with one of them)",
            )
        counts[tname] = counts.get(tname, 0) + 1
        numel = int(t.n_elements)
        shape = _orig_shape(reader, p, t.name, numel) or tuple(int(d) for d in reversed(t.shape.tolist()))
        key = t.name
        if llama_t5:
            m = _T5_BLOCK_RE.match(key)
            key = t5_hf_name(key, gated=m is None or m.group(1) in gated)
        low = tname.lower()
        if low in quants.QUANT_TYPES:
            info = TensorInfo(torch.uint8, shape, p, quant=low)
        else:
            info = TensorInfo(quants.FLOAT_TYPES[low], shape, p)
        if key in infos:
            raise _refuse(p, f"two tensors map to the name {key!r}")
        infos[key], tensors[key] = info, t
    meta = {"format": "gguf", "gguf.types": ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))}
    if arch is not None:
        meta["general.architecture"] = arch
    logger.debug("%s: GGUF, architecture %s, %d tensors (%s)", p.name, arch, len(infos), meta["gguf.types"])
    return GGUFCheckpoint(path=p, infos=infos, metadata=meta, architecture=arch, _reader=reader, _tensors=tensors)
