"""Cast-on-use layers and quantized weight blocks."""

from __future__ import annotations

import pytest
import torch

from mochi_core import ops
from mochi_core.errors import InvalidInputError


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
