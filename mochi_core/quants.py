"""GGUF block quantization in torch: the one code path that turns quantized bytes into weights.

Every quantized weight of the pack goes through :func:`dequantize`: the blocks of a ``.gguf`` file (read by
:mod:`mochi_core.formats.gguf`), the GGUF-in-safetensors ``Q8_0`` / ``Q4_0`` files and the weights we quantize
ourselves (``storage_dtype="q8_0"``). It runs on whatever device the bytes are on, so a quantized weight is
expanded on the GPU when it is used (cast on use, :mod:`mochi_core.ops`).

Block layouts (ggml's ``block_*`` structs, all little-endian; ``d``/``m``/``dmin`` are fp16):

========  =====  =====  ===============================================================================
type      values bytes  layout and value of element i
========  =====  =====  ===============================================================================
Q8_0       32     34    d, int8 q[32]                                   w = d·q
Q4_0       32     18    d, 16 bytes of nibbles (i<16 low, i>=16 high)   w = d·(q − 8)
Q4_1       32     20    d, m, 16 bytes of nibbles                       w = d·q + m
Q5_0       32     22    d, 4 bytes of 5th bits (bit i), 16 nibble bytes w = d·(q − 16)
Q5_1       32     24    d, m, 4 bytes of 5th bits, 16 nibble bytes      w = d·q + m
Q2_K      256     84    16 bytes of (scale | min << 4), 64 bytes of 2-bit q, d, dmin
                        w = (d·scale_j)·q − (dmin·min_j), j = i // 16
Q3_K      256    110    32 bytes of high bits, 64 bytes of 2-bit low bits, 12 bytes of 6-bit scales, d
                        w = (d·(scale_j − 32))·(q_low − 4·(1 − high)), j = i // 16
Q4_K      256    144    d, dmin, 12 bytes of 6-bit scales and mins, 128 nibble bytes
                        w = (d·scale_j)·q − (dmin·min_j), j = i // 32
Q5_K      256    176    d, dmin, 12 bytes of scales and mins, 32 bytes of 5th bits, 128 nibble bytes
                        as Q4_K with q = nibble | high << 4
Q6_K      256    210    128 bytes of low nibbles, 64 bytes of 2-bit highs, int8 scale[16], d
                        w = (d·scale_j)·(q − 32), j = i // 16
========  =====  =====  ===============================================================================

Precision: the scales (d·scale_j, dmin·min_j) are formed in fp32, like ggml's reference dequantization
(``gguf.quants.dequantize``), and the integer codes are exact in every float dtype (|q| <= 128). The code tensor
is created in the requested ``dtype`` (one weight-sized buffer) and scaled in place, so each product is formed
in fp32 and rounded once. In fp32 every type therefore equals the reference bit for bit (same operations in the
same order). In bf16/fp16 the "type-0" formats (Q8_0, Q4_0, Q5_0, Q3_K, Q6_K: one product) equal the fp32
reference rounded once; the "type-1" formats (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K: a product, then a min added or
subtracted) round the product before the min is applied, so they are within one rounding of that dtype of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InvalidInputError

__all__ = [
    "QuantType",
    "QUANT_TYPES",
    "FLOAT_TYPES",
    "SUPPORTED_TYPES",
    "quant_type",
    "row_bytes",
    "dequantize",
    "quantize_q8_0",
    "quantize_q4_0",
]

QK = 32  # values per block of the legacy formats
QK_K = 256  # values per super-block of the K formats


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 at byte ``start`` of every block, as fp32: (n, 1)."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(n, k, b) bytes -> (n, k, 2b): the low nibbles of the b bytes, then their high nibbles."""
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)


def _bits(packed: torch.Tensor, per_byte: int, width: int) -> torch.Tensor:
    """(n, k, b) bytes -> (n, k, per_byte, b): field s of every byte is ``(byte >> s·width) & mask``."""
    shifts = torch.arange(0, per_byte * width, width, dtype=torch.uint8, device=packed.device)
    return (packed.unsqueeze(-2) >> shifts.view(per_byte, 1)) & ((1 << width) - 1)


def _codes(q: torch.Tensor, dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
    """Integer codes as a fresh ``dtype`` tensor, ``offset`` subtracted (small integers: exact in every dtype)."""
    out = q.to(dtype)
    return out.sub_(offset) if offset else out


# ----------------------------------------------------------------------------------------------
# Legacy 32-value blocks
# ----------------------------------------------------------------------------------------------


def _q8_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = b[:, 2:].contiguous().view(torch.int8)
    return _codes(q, dtype).mul_(_f16(b, 0))


def _q4_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _codes(_nibbles(b[:, 2:]), dtype, 8).mul_(_f16(b, 0))


def _q4_1(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _codes(_nibbles(b[:, 4:]), dtype).mul_(_f16(b, 0)).add_(_f16(b, 2))


def _five_bit(b: torch.Tensor, high_at: int) -> torch.Tensor:
    """Q5_0 / Q5_1 codes 0..31: nibbles from byte ``high_at + 4`` on, 5th bit i of the 32-bit field at ``high_at``."""
    low = _nibbles(b[:, high_at + 4 :])  # (n, 32)
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
    high = (b[:, high_at : high_at + 4].unsqueeze(-1) >> shifts) & 1  # (n, 4, 8): bit s of byte k is element 8k + s
    return low | (high.reshape(-1, QK) << 4)


def _q5_0(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _codes(_five_bit(b, 2), dtype, 16).mul_(_f16(b, 0))


def _q5_1(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _codes(_five_bit(b, 4), dtype).mul_(_f16(b, 0)).add_(_f16(b, 2))


# ----------------------------------------------------------------------------------------------
# K formats: 256-value super-blocks of 8 or 16 sub-blocks
# ----------------------------------------------------------------------------------------------


def _q2_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, :16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).view(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).view(n, 16, 1)
    q = _bits(b[:, 16:80].reshape(n, 2, 32), 4, 2)  # (n, 2, 4, 32): element 128h + 32s + l
    return _codes(q.reshape(n, 16, 16), dtype).mul_(dl).sub_(ml).view(n, QK_K)


def _q3_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    raw = b[:, 96:108]
    low = _bits(raw[:, :8].reshape(n, 1, 8), 2, 4).reshape(n, 16)  # scale j < 8: low nibble of byte j, else high
    high = _bits(raw[:, 8:].reshape(n, 1, 4), 4, 2).reshape(n, 16)  # bits 4-5 of scale j: field j // 4 of byte j % 4
    scale = ((low | (high << 4)).to(torch.float32) - 32.0).view(n, 16, 1)
    dl = _f16(b, 108).view(n, 1, 1) * scale
    q_low = _bits(b[:, 32:96].reshape(n, 2, 32), 4, 2).reshape(n, 16, 16)
    q_high = _bits(b[:, :32].reshape(n, 1, 32), 8, 1).reshape(n, 16, 16)
    q = (q_low - ((q_high ^ 1) << 2)).view(torch.int8)  # -4..3: uint8 arithmetic wraps, int8 reads it signed
    return _codes(q, dtype).mul_(dl).view(n, QK_K)


def _scale_min_k4(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and 8 six-bit mins packed in 12 bytes (Q4_K / Q5_K): (n, 8) each, fp32."""
    n = raw.shape[0]
    r = raw.reshape(n, 3, 4)
    d, m, md = r[:, 0], r[:, 1], r[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    return (_f16(b, 0) * sc).view(n, 8, 1), (_f16(b, 2) * mn).view(n, 8, 1)


def _q4_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    dl, ml = _k_scales(b)
    q = _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32)  # chunk c of 64 values: 32 low, then 32 high
    return _codes(q, dtype).mul_(dl).sub_(ml).view(n, QK_K)


def _q5_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    dl, ml = _k_scales(b)
    low = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = _bits(b[:, 16:48].reshape(n, 1, 32), 8, 1).reshape(n, 8, 32)
    return _codes(low | (high << 4), dtype).mul_(dl).sub_(ml).view(n, QK_K)


def _q6_k(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n = b.shape[0]
    scale = b[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    dl = (_f16(b, 208) * scale).view(n, 16, 1)
    low = _nibbles(b[:, :128].reshape(n, 2, 64)).reshape(n, 8, 32)  # half h: 64 low nibbles, then 64 high
    high = _bits(b[:, 128:192].reshape(n, 2, 32), 4, 2).reshape(n, 8, 32)
    return _codes((low | (high << 4)).view(n, 16, 16), dtype, 32).mul_(dl).view(n, QK_K)


# ----------------------------------------------------------------------------------------------
# Table and entry points
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantType:
    """One block format: ``name`` (lower case, as in ``weight_format``), values and bytes per block."""

    name: str
    block_size: int
    type_size: int
    expand: Callable[[torch.Tensor, torch.dtype], torch.Tensor]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def nbytes(self, numel: int) -> int:
        """Bytes of ``numel`` values (a multiple of ``block_size``)."""
        return numel // self.block_size * self.type_size


#: Every block format the pack dequantizes, by its lower-case name.
QUANT_TYPES: dict[str, QuantType] = {
    q.name: q
    for q in (
        QuantType("q8_0", QK, 34, _q8_0),
        QuantType("q4_0", QK, 18, _q4_0),
        QuantType("q4_1", QK, 20, _q4_1),
        QuantType("q5_0", QK, 22, _q5_0),
        QuantType("q5_1", QK, 24, _q5_1),
        QuantType("q2_k", QK_K, 84, _q2_k),
        QuantType("q3_k", QK_K, 110, _q3_k),
        QuantType("q4_k", QK_K, 144, _q4_k),
        QuantType("q5_k", QK_K, 176, _q5_k),
        QuantType("q6_k", QK_K, 210, _q6_k),
    )
}
#: Unquantized GGUF tensor types, with the torch dtype they are read as.
FLOAT_TYPES: dict[str, torch.dtype] = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
#: Every GGUF tensor type a ``.gguf`` file may use here (upper case, as GGUF names them).
SUPPORTED_TYPES: tuple[str, ...] = tuple(n.upper() for n in (*FLOAT_TYPES, *QUANT_TYPES))


def quant_type(name: str) -> QuantType:
    """The :class:`QuantType` named ``name`` (any case); refuses others naming the supported ones."""
    q = QUANT_TYPES.get(str(name).lower())
    if q is None:
        raise InvalidInputError(
            f"quantization type {name!r} is not supported; supported: {', '.join(n.upper() for n in QUANT_TYPES)}"
        )
    return q


def row_bytes(qtype: str, row_len: int) -> int | None:
    """Bytes of one row of ``row_len`` values in ``qtype``, or None when a row is not a whole number of blocks."""
    q = quant_type(qtype)
    return None if row_len % q.block_size else row_len // q.block_size * q.type_size


def dequantize(
    raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 blocks (any shape holding ``prod(shape)`` values, on any device) -> a ``shape`` tensor of ``dtype`` on
    ``raw``'s device. Rows of ``shape`` may cut blocks only if ``raw`` holds whole blocks in order (it always does)."""
    q = quant_type(qtype)
    numel = 1
    for s in shape:
        numel *= int(s)
    if raw.dtype != torch.uint8 or numel % q.block_size or raw.numel() != q.nbytes(numel):
        raise InvalidInputError(
            f"{q.name.upper()} data of {raw.numel()} {str(raw.dtype).replace('torch.', '')} elements cannot hold a "
            f"{tuple(shape)} weight (needs {q.nbytes(numel)} uint8 bytes, {q.type_size} per {q.block_size} values)"
        )
    blocks = raw.reshape(-1, q.type_size)
    return q.expand(blocks, dtype).reshape(shape)


def _check_blocks(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2 or shape[1] % QK:
        raise InvalidInputError(
            f"GGUF blocks need a 2-D weight whose input width is a multiple of {QK}; got {tuple(shape)}"
        )
    return int(shape[0]), int(shape[1])


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """(out, in) float -> (out, in/32*34) uint8: per block an fp16 scale d = max|w|/127, then 32 int8 round(w/d)."""
    out_f, in_f = _check_blocks(tuple(w.shape))
    blocks = w.detach().to(torch.float32).reshape(out_f, in_f // QK, QK)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(blocks * inv).clamp(-127, 127).to(torch.int8)
    raw = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=-1)  # (out, nb, 2 + 32)
    return raw.reshape(out_f, in_f // QK * 34).contiguous()


def quantize_q4_0(w: torch.Tensor) -> torch.Tensor:
    """(out, in) float -> (out, in/32*18) uint8 (d = max-by-magnitude / -8, nibbles q + 8; element j < 16 in the low
    nibble of byte j, element j + 16 in its high nibble)."""
    out_f, in_f = _check_blocks(tuple(w.shape))
    blocks = w.detach().to(torch.float32).reshape(out_f, in_f // QK, QK)
    idx = blocks.abs().argmax(dim=-1, keepdim=True)
    d = torch.gather(blocks, -1, idx) / -8.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.floor(blocks * inv + 8.5), 0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    raw = torch.cat([d.to(torch.float16).view(torch.uint8), packed], dim=-1)
    return raw.reshape(out_f, in_f // QK * 18).contiguous()
