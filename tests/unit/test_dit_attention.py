"""Joint attention: per-sample valid text tokens, zero-token samples, and the three backends' packing logic.

flash-attn and SageAttention are not installed on the CPU test machine; their code paths are exercised with
stand-in modules whose kernels run torch SDPA (as the golden case_c stand-in for flash_varlen_attn did).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from mochi_core.dit.attention import check_backend, joint_attention
from mochi_core.errors import InvalidInputError
from tests.numerics import reorder_tol

# randn inputs, head dim 8: logits q.k sum 8 products (magnitudes add up to <= 16), a softmax over <= 16 keys, then
# values of magnitude <= 4 averaged; a logit error d moves the output by <= d * 4, and the reference runs other
# kernels (explicit matmuls) in another order. 5.6e-5
TOL = reorder_tol(scale=16.0, terms=16, depth=3)

pytestmark = pytest.mark.numerics


def _reference(qx, kx, vx, qy, ky, vy, counts):
    """Naive per-sample loop: [visual, first counts[b] text tokens], SDPA, text padding positions zero."""
    b, n, h, d = qx.shape
    out_x, out_y = [], torch.zeros(b, qy.shape[1], h * d)
    for i, c in enumerate(counts):
        q = torch.cat([qx[i], qy[i, :c]]).transpose(0, 1)
        k = torch.cat([kx[i], ky[i, :c]]).transpose(0, 1)
        v = torch.cat([vx[i], vy[i, :c]]).transpose(0, 1)
        scores = (q @ k.transpose(-1, -2)) / d**0.5
        o = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n + c, h * d)
        out_x.append(o[:n])
        out_y[i, :c] = o[n:]
    return torch.stack(out_x), out_y


def _inputs(b=3, n=10, ly=6, h=2, d=8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, s, h, d, generator=g) for s in (n, n, n, ly, ly, ly)]


@pytest.mark.parametrize("counts", [[6, 6, 6], [0, 0, 0], [2, 0, 6], [3, 3, 1]])
def test_sdpa_matches_naive_reference(counts) -> None:
    args = _inputs()
    ox, oy = joint_attention(*args, counts, "sdpa")
    rx, ry = _reference(*args, counts)
    torch.testing.assert_close(ox, rx, atol=TOL, rtol=0)
    torch.testing.assert_close(oy, ry, atol=TOL, rtol=0)


def _install_fake(monkeypatch, name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)


def test_flash_varlen_packing(monkeypatch) -> None:
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):
        outs = []
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            outs.append(F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v))).transpose(0, 1))
        return torch.cat(outs)

    _install_fake(monkeypatch, "flash_attn", flash_attn_varlen_func=flash_attn_varlen_func)
    assert check_backend("flash") == "flash"
    args = _inputs()
    for counts in ([2, 0, 6], [6, 6, 6]):
        ox, oy = joint_attention(*args, counts, "flash")
        rx, ry = _reference(*args, counts)
        torch.testing.assert_close(ox, rx, atol=TOL, rtol=0)
        torch.testing.assert_close(oy, ry, atol=TOL, rtol=0)


def test_sage_layout(monkeypatch) -> None:
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False):
        assert tensor_layout == "NHD" and not is_causal
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    _install_fake(monkeypatch, "sageattention", sageattn=sageattn)
    assert check_backend("SAGE") == "sage"
    args = _inputs()
    ox, oy = joint_attention(*args, [1, 4, 0], "sage")
    rx, ry = _reference(*args, [1, 4, 0])
    torch.testing.assert_close(ox, rx, atol=TOL, rtol=0)
    torch.testing.assert_close(oy, ry, atol=TOL, rtol=0)


def test_unknown_backend() -> None:
    with pytest.raises(InvalidInputError, match="allowed: sdpa, flash, sage"):
        check_backend("math")


def test_optional_backend_needs_cuda_bf16(golden_dir, monkeypatch) -> None:
    from mochi_core import load_dit

    _install_fake(monkeypatch, "flash_attn", flash_attn_varlen_func=None)
    model = load_dit(golden_dir / "dit_tiny.safetensors", attention="flash")
    with pytest.raises(InvalidInputError, match="only on CUDA with a bf16/fp16 compute dtype"):
        model(
            torch.randn(1, 12, 1, 4, 4), torch.tensor([0.5]), torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
        )
