"""No host-device synchronisation inside a DiT block: every op a block dispatches is recorded (TorchDispatchMode) and
none may build an index tensor from Python values, index with a tensor, or read a value back to the host. On CUDA
each of those is a host-to-device copy or a device-to-host read that stalls the host once per block.

flash-attn is not installed on the CPU test machine: its path runs a stand-in whose kernel is torch SDPA.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mochi_core import load_dit
from mochi_core.dit.attention import TokenCounts, joint_attention
from tests.numerics import TINY_DIT_TOL, reorder_tol

#: aten ops that, on CUDA, mean a host<->device transfer or an index tensor built per call
SYNC_OPS = {
    "aten.lift_fresh.default",  # torch.tensor(python values)
    "aten.lift_fresh_copy.default",
    "aten.index_put_.default",  # t[list] = ...
    "aten._index_put_impl_.default",
    "aten.index.Tensor",  # t[list] / t[tensor]
    "aten.index_select.default",
    "aten._local_scalar_dense.default",  # .item(), bool(t), .tolist()
    "aten.nonzero.default",
}


class _OpCounter(TorchDispatchMode):
    """Counts aten ops while ``active`` (switched on only inside block forwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self.active:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny(golden_dir: Path) -> torch.nn.Module:
    return load_dit(golden_dir / "dit_tiny.safetensors")


@pytest.mark.parametrize("valid", [[16, 16], [9, 0], [5, 3, 5], [0, 7, 7, 2]])
def test_no_index_tensor_or_host_read_inside_blocks(tiny: torch.nn.Module, valid: list[int]) -> None:
    b = len(valid)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 12, 2, 4, 6, generator=gen)
    feat = torch.randn(b, 16, 32, generator=gen)
    mask = torch.arange(16)[None] < torch.tensor(valid)[:, None]
    counter = _OpCounter()
    seen_counts: list[object] = []

    def on(module, args):  # type: ignore[no-untyped-def]
        counter.active = True
        seen_counts.append(args[4])

    def off(module, args, output):  # type: ignore[no-untyped-def]
        counter.active = False

    hooks = [h for blk in tiny.blocks for h in (blk.register_forward_pre_hook(on), blk.register_forward_hook(off))]
    try:
        with counter:
            out = tiny(x, torch.full((b,), 0.7), feat, mask)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen_counts) == len(tiny.blocks)
    assert sum(counter.ops.values()) > 0, "the counter saw no block op"
    bad = {op: n for op, n in counter.ops.items() if op in SYNC_OPS}
    assert not bad, f"ops that sync or build index tensors inside blocks: {bad}"
    # one TokenCounts object per forward, shared by every block
    assert isinstance(seen_counts[0], TokenCounts) and all(c is seen_counts[0] for c in seen_counts)
    # and each sample still sees only its own valid tokens: equal to running it alone
    for i in range(b):
        alone = tiny(x[i : i + 1], torch.full((1,), 0.7), feat[i : i + 1], mask[i : i + 1])
        # a batch of one vs a slice of the batch: other blocking, the tiny DiT's summation-order bound
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=TINY_DIT_TOL)


def _install_fake_flash(monkeypatch: pytest.MonkeyPatch, seen: list[torch.Tensor]) -> None:
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):  # type: ignore[no-untyped-def]
        seen.append(cu_q)
        outs = []
        for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            outs.append(F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v))).transpose(0, 1))
        return torch.cat(outs)

    mod = types.ModuleType("flash_attn")
    mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    mod.flash_attn_varlen_func = flash_attn_varlen_func  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", mod)


def test_flash_cu_seqlens_built_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    _install_fake_flash(monkeypatch, seen)
    gen = torch.Generator().manual_seed(3)
    b, n, ly, h, d = 3, 10, 6, 2, 8
    args = [torch.randn(b, s, h, d, generator=gen) for s in (n, n, n, ly, ly, ly)]
    counts = TokenCounts([4, 0, 6])
    built = []
    real_tensor = torch.tensor

    def counting_tensor(*a, **k):  # type: ignore[no-untyped-def]
        built.append(a)
        return real_tensor(*a, **k)

    monkeypatch.setattr(torch, "tensor", counting_tensor)
    outs = [joint_attention(*args, counts, "flash") for _ in range(4)]  # four blocks of one forward
    monkeypatch.setattr(torch, "tensor", real_tensor)
    assert len(built) == 1, "cu_seqlens must be built once per forward, not per block"
    assert all(cu is seen[0] for cu in seen) and seen[0].dtype == torch.int32
    assert seen[0].tolist() == [0, 14, 24, 40]
    ref = joint_attention(*args, list(counts), "sdpa")
    for ox, oy in outs:
        # same math (SDPA per sample) in another batching: randn q/k/v as in test_dit_attention.py, the same bound
        torch.testing.assert_close(ox, ref[0], rtol=0, atol=reorder_tol(scale=16.0, terms=64, depth=3))
        torch.testing.assert_close(oy, ref[1], rtol=0, atol=reorder_tol(scale=16.0, terms=64, depth=3))
