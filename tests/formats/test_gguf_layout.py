"""GGUF Q8_0 / Q4_0 blocks built byte by byte from the format description (docs/formats.md, ggml's
``block_q8_0`` / ``block_q4_0``), not by our writer: the reader must give exactly d·q.

Q8_0 block (34 bytes): little-endian fp16 scale d, then 32 int8 values q; w = d·q.
Q4_0 block (18 bytes): fp16 d, then 16 bytes; byte j holds element j in its low nibble and element j + 16 in its
high nibble; w = d·(nibble − 8).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mochi_core import load_dit, ops
from mochi_core.testing.dit import write_dit

# (fp16 scale, 32 quants) per block; scales chosen exactly representable in fp16, signs and int8 extremes included
Q8_BLOCKS = [
    (0.5, list(range(-16, 16))),
    (-0.25, [-128, 127] + [0] * 30),
    (2.0**-14, [1, -1] * 16),  # smallest normal fp16
    (1.5, [(7 * i) % 256 - 128 for i in range(32)]),
]


def _q8_bytes(blocks: list[tuple[float, list[int]]]) -> bytes:
    return b"".join(struct.pack("<e", d) + struct.pack("<32b", *q) for d, q in blocks)


def _q8_expected(blocks: list[tuple[float, list[int]]]) -> list[float]:
    return [d * v for d, q in blocks for v in q]


def test_q8_0_blocks_built_by_hand() -> None:
    raw = torch.frombuffer(bytearray(_q8_bytes(Q8_BLOCKS)), dtype=torch.uint8).reshape(2, 2 * 34)  # 2 rows x 2 blocks
    w = ops.dequantize_q8_0(raw, (2, 64))
    expected = torch.tensor(_q8_expected(Q8_BLOCKS), dtype=torch.float64).reshape(2, 64)
    assert w.dtype == torch.float32
    assert torch.equal(w.double(), expected)  # every value d·q is exact in fp32
    # spot checks by hand: row 0 = blocks 0 and 1, row 1 = blocks 2 and 3
    assert w[0, 0].item() == -8.0 and w[0, 32].item() == 32.0 and w[0, 33].item() == -31.75
    assert w[1, 0].item() == 2.0**-14 and w[1, 32].item() == -192.0


def test_q4_0_blocks_built_by_hand() -> None:
    nibbles = [list(range(16)) + list(range(15, -1, -1)), [8] * 16 + [0] * 15 + [15]]
    scales = [0.125, -3.0]
    raw = b""
    for d, nib in zip(scales, nibbles):
        packed = bytes(nib[j] | (nib[j + 16] << 4) for j in range(16))
        raw += struct.pack("<e", d) + packed
    w = ops.dequantize_q4_0(torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(2, 18), (2, 32))
    expected = torch.tensor([[d * (v - 8) for v in nib] for d, nib in zip(scales, nibbles)], dtype=torch.float64)
    assert torch.equal(w.double(), expected)  # exact: fp16 scales times small integers are representable in fp32
    assert w[0, 0].item() == -1.0 and w[0, 16].item() == 0.875 and w[1, 31].item() == -21.0


def test_hand_built_q8_0_layer_loads_through_load_dit(tmp_path: Path, golden_dir: Path) -> None:
    """A layer whose Q8_0 bytes were written by hand (not by ops.quantize_q8_0) is read to the same exact values."""
    sd = load_file(str(golden_dir / "dit_tiny.safetensors"))
    path = write_dit(tmp_path / "q.safetensors", "gguf_q8_0", sd)
    tensors = load_file(str(path))
    key = "blocks.0.mlp_x.w2.Q8_0_qweight"  # logical (96, 256): 8 blocks per row
    assert tuple(tensors[key].shape) == (96, 8 * 34)
    g = torch.Generator().manual_seed(3)
    blocks = [
        (
            float(torch.tensor(0.01 + 0.02 * torch.rand((), generator=g).item()).half()),
            torch.randint(-128, 128, (32,), generator=g).tolist(),
        )
        for _ in range(96 * 8)
    ]
    tensors[key] = torch.frombuffer(bytearray(_q8_bytes(blocks)), dtype=torch.uint8).reshape(96, 8 * 34).clone()
    save_file(tensors, str(path))
    model = load_dit(path)
    w2 = model.blocks[0].mlp_x.w2
    assert w2.weight_format == "q8_0" and w2.weight_shape == (96, 256)
    got = w2.compute_weight(torch.float32, torch.device("cpu"))
    expected = torch.tensor(_q8_expected(blocks), dtype=torch.float64).reshape(96, 256)
    assert torch.equal(got.double(), expected)  # exact: one fp32 product of an fp16 scale and an int8 per value


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_q8_0_scale_is_applied_in_fp32(dtype: torch.dtype) -> None:
    """d·q is formed in fp32 and rounded once to the compute dtype (rounding d to bf16 first gives other values)."""
    g = torch.Generator().manual_seed(0)
    blocks = [(float(torch.rand((), generator=g).half()) + 0.001, list(range(-16, 16))) for _ in range(64)]
    raw = torch.frombuffer(bytearray(_q8_bytes(blocks)), dtype=torch.uint8).reshape(8, 8 * 34)
    once = ops.dequantize_q8_0(raw, (8, 256)).to(dtype)
    # exact by construction: both sides form d·q in fp32 and round once to ``dtype`` (same ops, same order)
    assert torch.equal(ops.dequantize_q8_0(raw, (8, 256), dtype), once)
