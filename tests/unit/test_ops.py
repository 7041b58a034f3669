"""Cast-on-use layers and quantized weight blocks."""

from __future__ import annotations

import pytest
import torch

from mochi_core import ops
from mochi_core.errors import InvalidInputError
from tests.numerics import reorder_tol


def test_q8_0_roundtrip_error_is_within_half_a_step() -> None:
    w = torch.randn(8, 64)
    raw = ops.quantize_q8_0(w)
    assert raw.dtype == torch.uint8 and raw.shape == (8, 64 // 32 * 34)
    back = ops.dequantize_q8_0(raw, (8, 64))
    step = w.reshape(8, 2, 32).abs().amax(-1, keepdim=True) / 127
    # half a quantization step, plus the fp16 rounding of the scale (127 * 2**-11 relative ≈ 0.062 step)
    assert ((back - w).reshape(8, 2, 32).abs() <= step * (0.5 + 0.065) + 1e-7).all()


def test_q4_0_layout_low_then_high_nibbles() -> None:
    w = torch.zeros(1, 32)
    w[0, 0] = -8.0  # d = 1
    w[0, 16] = 3.0
    raw = ops.quantize_q4_0(w)
    assert raw.shape == (1, 18)
    # element 0 (q = -8 + 8 = 0) in the low nibble, element 16 (q = 3 + 8 = 11) in the high nibble of byte 0
    assert raw[0, 2].item() == 0 | (11 << 4)
    assert raw[0, 3].item() == 8 | (8 << 4)
    back = ops.dequantize_q4_0(raw, (1, 32))
    torch.testing.assert_close(back, w, atol=0, rtol=0)


def test_q4_0_error_bound() -> None:
    w = torch.randn(4, 96)
    back = ops.dequantize_q4_0(ops.quantize_q4_0(w), (4, 96))
    d = w.reshape(4, 3, 32).abs().amax(-1, keepdim=True) / 8
    err = (back - w).reshape(4, 3, 32).abs()
    # Q4_0 maps [-8d, 8d) to 16 levels: half a step inside, one full step where +8d clips to 7d
    assert (err <= d * (1 + 8 * 2**-11) + 1e-7).all()
    assert err.mean() <= (d * 0.3).mean()


@pytest.mark.parametrize("fmt", ["plain", "scaled_fp8", "q8_0", "q4_0"])
def test_linear_formats_match_dense(fmt: str) -> None:
    dense = torch.nn.Linear(64, 16)
    lin = ops.Linear(64, 16, device="meta")
    w = dense.weight.detach()
    if fmt == "plain":
        ops.set_weight(lin, w.to(torch.bfloat16))
        tol = 1e-2
    elif fmt == "scaled_fp8":
        q, s = ops.quantize_scaled_fp8(w)
        ops.set_weight(lin, q, fmt=fmt, scale=s)
        tol = 0.1
    elif fmt == "q8_0":
        ops.set_weight(lin, ops.quantize_q8_0(w), fmt=fmt, shape=(16, 64))
        tol = 2e-2
    else:
        ops.set_weight(lin, ops.quantize_q4_0(w), fmt=fmt, shape=(16, 64))
        tol = 0.2
    lin.bias = torch.nn.Parameter(dense.bias.detach().clone(), requires_grad=False)
    x = torch.randn(3, 64)
    out = lin(x)
    assert out.dtype == torch.float32
    assert (out - dense(x)).abs().max().item() < tol


def _stored_linear(fmt: str, dense: torch.nn.Linear) -> ops.Linear:
    """``dense`` with its weight held in ``fmt`` (plain = fp8_e4m3fn, a cast is needed)."""
    out_f, in_f = dense.weight.shape
    lin = ops.Linear(in_f, out_f, device="meta")
    w = dense.weight.detach()
    if fmt == "plain":
        ops.set_weight(lin, w.to(torch.float8_e4m3fn))
    elif fmt == "scaled_fp8":
        q, s = ops.quantize_scaled_fp8(w)
        ops.set_weight(lin, q, fmt=fmt, scale=s)
    else:
        quant = ops.quantize_q8_0 if fmt == "q8_0" else ops.quantize_q4_0
        ops.set_weight(lin, quant(w), fmt=fmt, shape=(out_f, in_f))
    lin.bias = torch.nn.Parameter(dense.bias.detach().clone(), requires_grad=False)
    return lin


@pytest.mark.numerics
@pytest.mark.parametrize("fmt", ["plain", "scaled_fp8", "q8_0", "q4_0"])
def test_cpu_linear_casts_large_weights_in_row_slices(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight whose cast exceeds CPU_CAST_CHUNK_BYTES is cast slice by slice: same output, small cast buffer."""
    from mochi_core.testing.memory import PeakMemoryTracker

    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 200)
    lin = _stored_linear(fmt, dense)
    x = torch.randn(2, 5, 256)
    with torch.inference_mode(), PeakMemoryTracker() as whole:
        ref = lin(x)
    full_cast = 200 * 256 * 4
    monkeypatch.setattr(ops, "CPU_CAST_CHUNK_BYTES", full_cast // 8)
    rows = ops.cast_chunk_rows(200, 256, 4)
    assert rows == 25
    calls: list[tuple[int, int] | None] = []
    original = ops.CastWeights.compute_weight

    def spy(self: ops.CastWeights, dtype: torch.dtype, device: torch.device, rows: tuple[int, int] | None = None):
        calls.append(rows)
        return original(self, dtype, device, rows)

    monkeypatch.setattr(ops.CastWeights, "compute_weight", spy)
    with torch.inference_mode(), PeakMemoryTracker() as sliced:
        out = lin(x)
    assert calls == [(i, i + 25) for i in range(0, 200, 25)]
    assert out.shape == (2, 5, 200) and out.dtype == torch.float32
    # each output element is the same 256-term dot product; a 25-row weight may be blocked differently than a
    # 200-row one (inputs randn, weights U(-1/16, 1/16): the products' magnitudes add up to <= 16)
    torch.testing.assert_close(out, ref, atol=reorder_tol(scale=16.0, terms=256), rtol=0)
    # the whole fp32 cast (200 KB) is replaced by an eighth of it plus one slice of output (the tracker also counts
    # the stored weight once a slice of it is taken: at most 34/32 byte per value)
    assert whole.peak_bytes - sliced.peak_bytes >= full_cast // 2


def test_linear_without_a_cast_is_never_sliced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight already in the compute dtype needs no cast buffer: one matmul, no slices."""
    monkeypatch.setattr(ops, "CPU_CAST_CHUNK_BYTES", 1024)
    lin = ops.Linear(64, 32, bias=False, device="meta")
    ops.set_weight(lin, torch.randn(32, 64))
    calls: list[object] = []
    original = ops.CastWeights.compute_weight
    monkeypatch.setattr(
        ops.CastWeights, "compute_weight", lambda self, *a: calls.append(a[2:] or None) or original(self, *a)
    )
    lin(torch.randn(3, 64))
    assert calls == [None]


def test_gguf_needs_block_multiple() -> None:
    with pytest.raises(InvalidInputError, match="multiple of 32"):
        ops.quantize_q8_0(torch.randn(4, 33))


def test_replace_linears_keeps_parameters() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(4, 2)))
    x = torch.randn(2, 4)
    ref = m(x)
    ops.replace_linears(m)
    assert isinstance(m[0], ops.Linear) and isinstance(m[2][0], ops.Linear)
    torch.testing.assert_close(m(x), ref)
