"""Our torch dequantization of every GGUF block type against the ``gguf`` package's numpy reference.

Blocks are random bytes with valid (finite) fp16 scales, so every code, sub-scale and min pattern occurs; for the
types ``gguf.quants.quantize`` supports, its own quantization of random weights is checked too.

Equality: in fp32 every type must equal ``gguf.quants.dequantize`` bit for bit: both form the same fp32 products
(the sub-block scales d·scale_j first, then scale·code, then the min) in the same order, and a float32 product or
difference of the same operands is the same on every CPU (IEEE, no fused multiply-add in either: numpy and torch
apply the operations one by one). In bf16 / fp16 the "type-0" formats (one product per value) equal the fp32
reference rounded once; the "type-1" formats (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) round the product d·q to the dtype
before the min is applied, so they may differ from the rounded reference by that one extra rounding: half an ulp
of the product plus at most one ulp of the result, bounded here by eps·(|d·q| + |w|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mochi_core import ops, quants
from mochi_core.errors import InvalidInputError
from mochi_core.testing.gguf import random_blocks

gguf = pytest.importorskip("gguf")  # listed in requirements.txt: present in every supported environment

#: "type-1" formats and the byte offset of their fp16 min field (m added, or dmin multiplied and subtracted)
TYPE_1 = {"q4_1": 2, "q5_1": 2, "q2_k": 82, "q4_k": 2, "q5_k": 2}
QUANTIZABLE = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")  # what gguf.quants.quantize implements


def _reference(raw: np.ndarray, name: str) -> torch.Tensor:
    qt = getattr(gguf.GGMLQuantizationType, name.upper())
    return torch.from_numpy(np.asarray(gguf.quants.dequantize(raw.copy(), qt), dtype=np.float32))


@pytest.mark.parametrize("name", list(quants.QUANT_TYPES))
@pytest.mark.parametrize("centered", [False, True])
def test_random_blocks_equal_the_reference_in_fp32(name: str, centered: bool) -> None:
    q = quants.QUANT_TYPES[name]
    raw = random_blocks(name, (8, 2 * q.block_size), amplitude=3.0, seed=11, centered=centered)  # 16 blocks
    ref = _reference(raw, name).reshape(8, 2 * q.block_size)
    ours = quants.dequantize(torch.from_numpy(raw), name, (8, 2 * q.block_size))
    assert ours.dtype == torch.float32 and torch.isfinite(ref).all()
    assert torch.equal(ours, ref), f"{name}: max diff {(ours - ref).abs().max().item()}"


@pytest.mark.parametrize("name", list(quants.QUANT_TYPES))
def test_every_byte_pattern_equals_the_reference(name: str) -> None:
    """Uniform random bytes everywhere (scales included); values where the reference is finite must agree."""
    q = quants.QUANT_TYPES[name]
    raw = np.random.default_rng(5).integers(0, 256, size=(64, q.type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ref = _reference(raw, name).reshape(64, q.block_size)
    ours = quants.dequantize(torch.from_numpy(raw), name, (64, q.block_size))
    finite = torch.isfinite(ref)
    assert finite.float().mean() > 0.5
    assert torch.equal(ours[finite], ref[finite])
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_gguf_quantized_weights_equal_the_reference(name: str) -> None:
    w = np.random.default_rng(2).standard_normal((6, 128)).astype(np.float32) * 0.05
    raw = gguf.quants.quantize(w, getattr(gguf.GGMLQuantizationType, name.upper()))
    ours = quants.dequantize(torch.from_numpy(raw), name, (6, 128))
    assert torch.equal(ours, _reference(raw, name).reshape(6, 128))
    step = float(np.abs(w).max()) / 7  # coarsest: 4-bit codes over the block's range
    assert (ours - torch.from_numpy(w)).abs().max().item() <= step


@pytest.mark.parametrize("name", list(quants.QUANT_TYPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_is_the_reference_rounded_once(name: str, dtype: torch.dtype) -> None:
    q = quants.QUANT_TYPES[name]
    raw = random_blocks(name, (4, q.block_size * 2), amplitude=1.0, seed=3, centered=False)
    ref = _reference(raw, name).reshape(4, -1)
    ours = quants.dequantize(torch.from_numpy(raw), name, (4, q.block_size * 2), dtype)
    assert ours.dtype == dtype
    rounded = ref.to(dtype)
    if name not in TYPE_1:
        assert torch.equal(ours, rounded)
        return
    # the product p = d·q is rounded before the min is applied: |ours - rounded ref| <= eps·(|p| + |ref|) (half an
    # ulp of p, then at most one ulp of the result). p comes from the reference with the min field zeroed.
    no_min = raw.copy().reshape(-1, q.type_size)
    no_min[:, TYPE_1[name] : TYPE_1[name] + 2] = 0
    p = _reference(no_min, name).reshape(4, -1)
    eps = torch.finfo(dtype).eps
    bound = eps * (p.abs() + ref.abs()) + torch.finfo(dtype).tiny
    diff = (ours.float() - rounded.float()).abs()
    assert (diff <= bound).all(), f"{name}: {(diff - bound).max().item()}"
    assert (diff > 0).any() or name in ("q4_1", "q5_1")  # the other order really is used (not silently fp32)


def test_row_slices_expand_alone() -> None:
    """Rows are whole blocks: a slice of rows expands to the same values as the whole weight (CPU row slicing)."""
    raw = torch.from_numpy(random_blocks("q4_k", (6, 512), seed=1))
    whole = quants.dequantize(raw, "q4_k", (6, 512))
    assert torch.equal(quants.dequantize(raw[2:5], "q4_k", (3, 512)), whole[2:5])


def test_linear_with_a_k_quant_weight_casts_on_use_in_row_slices(monkeypatch) -> None:
    lin = ops.Linear(512, 40, bias=False, device="meta")
    raw = torch.from_numpy(random_blocks("q6_k", (40, 512), seed=4))
    ops.set_weight(lin, raw, fmt="q6_k", shape=(40, 512))
    w = quants.dequantize(raw, "q6_k", (40, 512))
    x = torch.randn(3, 512)
    whole = lin(x)
    monkeypatch.setattr(ops, "CPU_CAST_CHUNK_BYTES", 7 * 512 * 4)  # force 7-row slices
    assert torch.equal(lin(x), whole)
    assert torch.allclose(whole, x @ w.T, rtol=0, atol=1e-5)


def test_sizes_and_refusals() -> None:
    assert quants.QUANT_TYPES["q4_k"].bits_per_weight == 4.5 and quants.QUANT_TYPES["q8_0"].nbytes(64) == 68
    assert quants.row_bytes("q6_k", 512) == 420 and quants.row_bytes("q6_k", 96) is None
    with pytest.raises(InvalidInputError, match=r"'iq4_xs' is not supported; supported: Q8_0, Q4_0.*Q6_K"):
        quants.quant_type("iq4_xs")
    with pytest.raises(InvalidInputError, match="cannot hold a"):
        quants.dequantize(torch.zeros(10, dtype=torch.uint8), "q8_0", (1, 32))
    lin = ops.Linear(96, 4, device="meta")
    with pytest.raises(InvalidInputError, match="whole blocks per row"):
        ops.set_weight(lin, torch.zeros(4 * 96 // 256 * 210, dtype=torch.uint8), fmt="q6_k", shape=(4, 96))
