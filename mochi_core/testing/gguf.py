"""Tiny ``.gguf`` files written with the ``gguf`` package's own ``GGUFWriter``, and the package's own reading of them.

Writers follow the published files' conventions (see :mod:`mochi_core.formats.gguf`): the DiT keeps its checkpoint
names (architecture ``mochi`` by default), the T5 encoder gets llama.cpp names (architecture ``t5encoder``).
Which tensors get which type follows the ComfyUI-GGUF converter: 1-D tensors (norms, biases) stay F32, a tensor
whose rows are not whole blocks falls back to F32, and a tensor flattened to rows of 256 values to be quantized
carries its real shape under ``comfy.gguf.orig_shape.<name>``.

Values: types ``gguf.quants.quantize`` supports (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) quantize the given
weights; the K types, which gguf-py can only dequantize, get valid random blocks (random codes, finite fp16
scales sized so that |w| stays near the given amplitude): the model then holds whatever the file holds, and
:func:`gguf_state_dict` (``gguf.quants.dequantize``, the reference) says what that is.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GGUF_TYPES",
    "random_blocks",
    "encode_tensor",
    "write_gguf",
    "write_dit_gguf",
    "write_t5_gguf",
    "gguf_state_dict",
    "T5_LLAMA_NAMES",
]

#: Every type the pack reads, as GGUF names them.
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Byte offsets of each block format's fp16 fields: (multiplied scales, mins); and the largest |code| each multiplies.
_SCALE_FIELDS: dict[str, tuple[tuple[int, ...], tuple[int, ...], float, float]] = {
    # type: (offsets of "d" fields, offsets of "min" fields, max |code·subscale|, max min-code)
    "Q8_0": ((0,), (), 127.0, 0.0),
    "Q4_0": ((0,), (), 8.0, 0.0),
    "Q4_1": ((0,), (2,), 15.0, 1.0),
    "Q5_0": ((0,), (), 16.0, 0.0),
    "Q5_1": ((0,), (2,), 31.0, 1.0),
    "Q2_K": ((80,), (82,), 45.0, 15.0),
    "Q3_K": ((108,), (), 128.0, 0.0),
    "Q4_K": ((0,), (2,), 945.0, 63.0),
    "Q5_K": ((0,), (2,), 1953.0, 63.0),
    "Q6_K": ((208,), (), 4096.0, 0.0),
}
# Middle code of the K types with a min (sub-block min code = scale code, dmin = d · middle centres them).
_MIDDLE = {"Q2_K": 1.5, "Q4_K": 7.5, "Q5_K": 15.5}
#: llama.cpp T5 names of the Hugging Face ``T5EncoderModel`` block tensors (``ffn_up`` is ``wi`` when ungated).
T5_LLAMA_NAMES = {
    "layer.0.SelfAttention.q": "attn_q",
    "layer.0.SelfAttention.k": "attn_k",
    "layer.0.SelfAttention.v": "attn_v",
    "layer.0.SelfAttention.o": "attn_o",
    "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b",
    "layer.0.layer_norm": "attn_norm",
    "layer.1.DenseReluDense.wi_0": "ffn_gate",
    "layer.1.DenseReluDense.wi_1": "ffn_up",
    "layer.1.DenseReluDense.wi": "ffn_up",
    "layer.1.DenseReluDense.wo": "ffn_down",
    "layer.1.layer_norm": "ffn_norm",
}


def _qtype(name: str):  # noqa: ANN202 - gguf.GGMLQuantizationType
    from gguf import GGMLQuantizationType

    return getattr(GGMLQuantizationType, name.upper())


def random_blocks(
    qtype: str, shape: tuple[int, ...], *, amplitude: float = 0.05, seed: int = 0, centered: bool = True
) -> np.ndarray:
    """Valid random ``qtype`` blocks for a ``shape`` tensor: uint8 (prod(shape[:-1]), bytes per row).

    Code bytes are uniform random and every fp16 scale is finite (amplitude / largest code · U(0.5, 1)), so values
    stay within about ±``amplitude``. Mins: with ``centered`` (for models), the K types with a min (Q2_K, Q4_K,
    Q5_K) get each sub-block's min code equal to its scale code and dmin = d · (middle code), so every sub-block
    is centred on zero like real quantized weights; without it (for format checks) the min codes stay random and
    dmin is amplitude / (largest min code) · U(0, 0.5). Q4_1 / Q5_1 get a negative m of up to amplitude / 2.
    """
    from gguf import GGML_QUANT_SIZES

    name = qtype.upper()
    block, size = GGML_QUANT_SIZES[_qtype(name)]
    if shape[-1] % block:
        raise ValueError(f"rows of {shape[-1]} values are not whole {name} blocks of {block}")
    rng = np.random.default_rng(seed)
    rows = math.prod(shape[:-1])
    n = rows * shape[-1] // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    d_at, m_at, code, min_code = _SCALE_FIELDS[name]
    middle = _MIDDLE.get(name) if centered else None
    if middle is not None:
        if name == "Q2_K":  # 16 bytes of (scale | min << 4): min = scale
            low = raw[:, :16] & 0x0F
            raw[:, :16] = low | (low << 4)
        else:  # Q4_K / Q5_K: 12 bytes after d, dmin; mins packed like the scales: copy their bits
            raw[:, 8:12] = raw[:, 4:8]
            low = raw[:, 12:16] & 0x0F
            raw[:, 12:16] = low | (low << 4)
        code = code / 2  # codes now run from -middle to +middle: half the range
    d = (amplitude / code * rng.uniform(0.5, 1.0, n)).astype(np.float16)
    for off in d_at:
        raw[:, off : off + 2] = d.view(np.uint8).reshape(n, 2)
    for off in m_at:
        if middle is not None:
            m = (d.astype(np.float32) * middle).astype(np.float16)
        else:
            sign = -1.0 if name in ("Q4_1", "Q5_1") else 1.0  # Q4_1 / Q5_1 add m: a negative offset
            m = (sign * amplitude / min_code * rng.uniform(0.0, 0.5, n)).astype(np.float16)
        raw[:, off : off + 2] = m.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, -1)


def encode_tensor(t: torch.Tensor, qtype: str, *, seed: int = 0) -> np.ndarray:
    """The array ``GGUFWriter.add_tensor`` takes for ``t`` stored as ``qtype`` (see the module docstring)."""
    from gguf import quants as gq

    name = qtype.upper()
    data = t.detach().to(torch.float32).numpy()
    if name in _SCALE_FIELDS and name.endswith("_K"):
        return random_blocks(name, tuple(t.shape), amplitude=float(t.abs().max()) or 0.05, seed=seed)
    return gq.quantize(data, _qtype(name))


def _rows_fit(shape: tuple[int, ...], qtype: str) -> bool:
    from gguf import GGML_QUANT_SIZES

    return shape[-1] % GGML_QUANT_SIZES[_qtype(qtype)][0] == 0


def write_gguf(
    path: str | os.PathLike[str],
    tensors: dict[str, tuple[np.ndarray, str]],
    *,
    arch: str | None = "mochi",
    orig_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """Write ``{name: (array from encode_tensor, type)}`` with ``GGUFWriter`` (no architecture field when ``arch``
    is None); ``orig_shapes`` become ``comfy.gguf.orig_shape.<name>`` int32 arrays."""
    from gguf import GGUFWriter, Keys

    p = Path(path)
    writer = GGUFWriter(str(p), arch or "mochi")
    if arch is None:
        writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)
    for name, shape in (orig_shapes or {}).items():
        writer.add_array("comfy.gguf.orig_shape." + name, [int(s) for s in shape])
    for name, (arr, qtype) in tensors.items():
        writer.add_tensor(name, arr, raw_dtype=_qtype(qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return p


def _choose(key: str, t: torch.Tensor, qtype: str, mix: dict[str, str] | None) -> str:
    want = qtype.upper()
    for pattern, other in (mix or {}).items():
        if re.search(pattern, key):
            want = other.upper()
    if t.dim() == 1 or want == "F32":
        return "F32"
    return want if _rows_fit(tuple(t.shape), want) else "F32"


def write_dit_gguf(
    path: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    qtype: str,
    *,
    arch: str | None = "mochi",
    prefix: str = "",
    mix: dict[str, str] | None = None,
    flatten: bool = True,
    seed: int = 0,
) -> Path:
    """A DiT ``.gguf`` with the official names (under ``prefix``): 2-D+ tensors in ``qtype`` (or the type of the
    first ``mix`` pattern their name matches, e.g. ``{"mlp_x.w2": "Q6_K"}`` for a *_K_M-like mix), 1-D in F32.
    ``flatten``: a tensor whose rows are not whole blocks but whose size is a multiple of 256 is stored as rows of
    256 with its shape in ``comfy.gguf.orig_shape`` (the ComfyUI-GGUF converter's rule)."""
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    orig: dict[str, tuple[int, ...]] = {}
    for i, (key, t) in enumerate(state_dict.items()):
        name = prefix + key
        want = _choose(key, t, qtype, mix)
        if flatten and want == "F32" and t.dim() > 1 and t.numel() % 256 == 0 and qtype.upper() != "F32":
            t, orig[name] = t.reshape(-1, 256), tuple(t.shape)
            want = _choose(key, t, qtype, mix)
        tensors[name] = (encode_tensor(t, want, seed=seed + i), want)
    return write_gguf(path, tensors, arch=arch, orig_shapes=orig)


def _t5_llama_name(hf: str) -> str:
    if hf == "shared.weight":
        return "token_embd.weight"
    if hf == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    m = re.match(r"encoder\.block\.(\d+)\.(.*)\.(weight|bias)$", hf)
    if not m or m.group(2) not in T5_LLAMA_NAMES:
        raise KeyError(f"no llama.cpp name for T5 tensor {hf!r}")
    return f"enc.blk.{m.group(1)}.{T5_LLAMA_NAMES[m.group(2)]}.{m.group(3)}"


def write_t5_gguf(
    path: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    qtype: str,
    *,
    arch: str | None = "t5encoder",
    mix: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """A T5 encoder ``.gguf`` with llama.cpp names from a Hugging Face ``T5EncoderModel`` state dict: 2-D tensors
    (embedding, Linears, relative attention bias) in ``qtype`` where rows are whole blocks, norms in F32."""
    tensors = {}
    for i, (key, t) in enumerate(state_dict.items()):
        want = _choose(key, t, qtype, mix)
        tensors[_t5_llama_name(key)] = (encode_tensor(t, want, seed=seed + i), want)
    return write_gguf(path, tensors, arch=arch)


def gguf_state_dict(path: str | os.PathLike[str], *, t5: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.gguf`` file as fp32, expanded by ``gguf.quants.dequantize`` (the reference), in its
    real shape (``comfy.gguf.orig_shape`` applied); ``t5``: names mapped back to Hugging Face T5 names."""
    from gguf import GGUFReader
    from gguf import quants as gq

    reader = GGUFReader(str(path))
    inverse = {v: k for k, v in T5_LLAMA_NAMES.items() if k != "layer.1.DenseReluDense.wi"}
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        values = np.asarray(gq.dequantize(np.array(t.data), t.tensor_type), dtype=np.float32)
        f = reader.get_field("comfy.gguf.orig_shape." + t.name)
        shape = tuple(int(f.parts[i][0]) for i in f.data) if f else tuple(int(d) for d in reversed(t.shape.tolist()))
        name = t.name
        if t5:
            m = re.match(r"enc\.blk\.(\d+)\.([a-z_]+)\.(weight|bias)$", name)
            if name == "token_embd.weight":
                name = "shared.weight"
            elif name == "enc.output_norm.weight":
                name = "encoder.final_layer_norm.weight"
            elif m:
                name = f"encoder.block.{m.group(1)}.{inverse[m.group(2)]}.{m.group(3)}"
        out[name] = torch.from_numpy(values.reshape(shape).copy())
    return out
