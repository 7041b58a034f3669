"""The CUDA-only parts of block streaming, proven on the CPU: the order of a prefetch's allocation, side-stream
copy and waits (run by the real :class:`CudaPrefetcher` against recording stand-ins for torch's stream and event
objects, which need a GPU), and exact-size page-locked host memory given back on ``remove()`` (the real packing
code with a recording stand-in for ``cudaHostRegister``). The GPU-only figures (allocator peak with prefetch, real
pinned bytes) are measured by ``bench/gpu_check.py``."""

from __future__ import annotations

import contextlib
import gc
import math
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mochi_core.dit.block import AsymmetricJointBlock
from mochi_core.dit.config import DiTConfig
from mochi_core.memory import enable_block_streaming
from mochi_core.memory.streaming import CudaPrefetcher, block_nbytes
from mochi_core.memory.streaming.pinning import ALIGN, PinPolicy, packed_layout
from tests.unit.test_streaming import _model

# ------------------------------------------------------------------------------------------------ stand-ins


class Recorder:
    """Log shared by the stand-in streams, events, host registrar and the dispatch mode."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.current = "main"


class FakeStream:
    def __init__(self, rec: Recorder, name: str) -> None:
        self.rec, self.name = rec, name

    def wait_stream(self, other: FakeStream) -> None:
        self.rec.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event: FakeEvent) -> None:
        self.rec.log.append(("wait_event", self.name, event.id))

    def synchronize(self) -> None:
        self.rec.log.append(("synchronize", self.name))


class FakeEvent:
    count = 0

    def __init__(self, rec: Recorder) -> None:
        FakeEvent.count += 1
        self.rec, self.id = rec, FakeEvent.count

    def record(self, stream: FakeStream) -> None:
        self.rec.log.append(("record", stream.name, self.id))


class AllocAndCopy(TorchDispatchMode):
    """Logs every allocation of a new tensor and every copy into one, with the stream current at that moment."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func)
        if name.startswith(("aten.empty", "aten.copy_")):
            self.rec.log.append(("alloc" if "empty" in name else "copy", self.rec.current))
        return func(*args, **(kwargs or {}))


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, rec: Recorder) -> dict[str, FakeStream]:
    streams = {"main": FakeStream(rec, "main"), "side": FakeStream(rec, "side")}

    @contextlib.contextmanager
    def stream(s: FakeStream):  # type: ignore[no-untyped-def]
        before, rec.current = rec.current, s.name
        try:
            yield
        finally:
            rec.current = before

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: streams["side"])
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams[rec.current])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Event", lambda: FakeEvent(rec))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: rec.log.append(("record_stream",)))
    return streams


class FakeRegistrar:
    """Stands in for cudaHostRegister / cudaHostUnregister: records the ranges."""

    def __init__(self, rec: Recorder | None = None, refuse: bool = False) -> None:
        self.rec = rec
        self.live: dict[int, int] = {}
        self.calls: list[tuple[str, int, int]] = []
        self.refuse = refuse

    def register(self, ptr: int, nbytes: int) -> bool:
        self.calls.append(("register", ptr, nbytes))
        if self.refuse:
            return False
        self.live[ptr] = nbytes
        return True

    def unregister(self, ptr: int) -> bool:
        self.calls.append(("unregister", ptr, self.live.pop(ptr)))
        if self.rec is not None:
            self.rec.log.append(("unregister", ptr))
        return True


# ------------------------------------------------------------------------------------------------ prefetch order


def _streamer_with_prefetcher(model: torch.nn.Module, rec: Recorder, **kw: Any) -> Any:
    """A CPU streamer whose loads allocate real copies, driven by the real CudaPrefetcher on stand-in streams;
    every prefetch is bracketed in the log, and every block's forward and release is logged."""
    handle = enable_block_streaming(model, 1, device="cpu", prefetch=True, copy_on_load=True, **kw)
    handle._prefetcher = CudaPrefetcher(torch.device("cpu"))
    real_copy_ahead = handle._prefetcher.copy_ahead
    real_unload = handle._unload

    def copy_ahead(home):  # type: ignore[no-untyped-def]
        index = next(i for i, h in enumerate(handle._home) if h is home)
        rec.log.append(("prefetch", index))
        copies, event = real_copy_ahead(home)
        rec.log.append(("prefetched", index, event.id))
        return copies, event

    def unload(index: int, *, log: bool = True) -> None:
        real_unload(index, log=log)
        rec.log.append(("released", index))

    handle._prefetcher.copy_ahead = copy_ahead
    handle._unload = unload
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: rec.log.append(("forward", i)))
    return handle


def _check_order(log: list[tuple[Any, ...]], depth: int, resident: int) -> None:
    assert ("record_stream",) not in log, "prefetch memory must belong to the main stream (no record_stream)"
    live = 0
    for i in range(resident, depth):
        start = log.index(("prefetch", i))
        end = next(k for k in range(start, len(log)) if log[k][0] == "prefetched" and log[k][1] == i)
        event = log[end][2]
        window = log[start:end]
        waits = [k for k, e in enumerate(window) if e == ("wait_stream", "side", "main")]
        allocs = [k for k, e in enumerate(window) if e[0] == "alloc"]
        copies = [k for k, e in enumerate(window) if e[0] == "copy"]
        recs = [k for k, e in enumerate(window) if e == ("record", "side", event)]
        assert allocs and copies and len(waits) == 1 and len(recs) == 1, window
        assert all(window[k][1] == "main" for k in allocs), "copies must be allocated on the main stream"
        assert all(window[k][1] == "side" for k in copies), "copies must run on the side stream"
        assert max(allocs) < waits[0] < min(copies) and max(copies) < recs[0]
        wait_main = log.index(("wait_event", "main", event))
        released = log.index(("released", i))
        assert wait_main < released, f"block {i} released before the main stream waited for its copy"
        if ("forward", i) in log:
            assert wait_main < log.index(("forward", i))
    # simultaneous streamed copies (allocated on the main stream, not yet released): at most current + prefetch
    for entry in log:
        if entry[0] == "prefetch":
            live += 1
        elif entry[0] == "released" and entry[1] >= resident:
            live -= 1
        assert live <= 2


@torch.no_grad()
def test_prefetch_allocates_on_main_side_waits_main_waits_before_use_and_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = Recorder()
    model = _model(5)
    x = torch.randn(4, 16)
    ref = model(x)
    _fake_cuda(monkeypatch, rec)
    handle = _streamer_with_prefetcher(model, rec)
    with AllocAndCopy(rec):
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # same kernels, same order: the copies are exact
    _check_order(rec.log, depth=5, resident=1)
    handle.remove()


@torch.no_grad()
def test_prefetched_block_that_never_runs_is_waited_for_before_release(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    model = _model(5)
    _fake_cuda(monkeypatch, rec)
    handle = _streamer_with_prefetcher(model, rec)
    model.blocks[2].fail = True  # block 3 is prefetched when block 2 starts, and never runs
    with AllocAndCopy(rec), pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(2, 16))
    assert ("forward", 3) not in rec.log and ("prefetch", 3) in rec.log
    event = next(e[2] for e in rec.log if e[0] == "prefetched" and e[1] == 3)
    assert rec.log.index(("wait_event", "main", event)) < rec.log.index(("released", 3))
    handle.remove()


@torch.no_grad()
def test_remove_waits_for_copies_before_unpinning(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    model = _model(4)
    _fake_cuda(monkeypatch, rec)
    registrar = FakeRegistrar(rec)
    handle = _streamer_with_prefetcher(model, rec, pin_memory=PinPolicy(registrar=registrar))
    model(torch.randn(2, 16))
    handle.remove()
    sync = rec.log.index(("synchronize", "side"))
    unpins = [k for k, e in enumerate(rec.log) if e[0] == "unregister"]
    assert len(unpins) == 3 and sync < min(unpins)


# ------------------------------------------------------------------------------------------------ pinned memory


@torch.no_grad()
def test_pinned_bytes_equal_block_sizes_and_are_released_by_remove() -> None:
    model = _model(6)
    x = torch.randn(4, 16)
    ref = model(x)
    registrar = FakeRegistrar()
    handle = enable_block_streaming(
        model, 2, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=registrar)
    )
    sizes = [block_nbytes(model.blocks[i]) for i in range(2, 6)]
    # every tensor of the toy block is a multiple of ALIGN bytes, so packing adds nothing
    assert [handle.pinned_block_bytes(i) for i in range(2, 6)] == sizes
    assert [c[2] for c in registrar.calls] == sizes
    assert handle.stats.pinned_bytes == sum(sizes) and handle.pin_memory
    assert [handle.pinned_block_bytes(i) for i in range(2)] == [0, 0]
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    handle.remove()
    assert registrar.live == {} and handle.stats.pinned_bytes == 0 and not handle.pin_memory
    assert [c[0] for c in registrar.calls] == ["register"] * 4 + ["unregister"] * 4
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)  # the unpinned home tensors still hold the weights


@torch.no_grad()
def test_a_block_packed_before_is_pinned_again_without_a_copy() -> None:
    """The next prompt streams the same model again: its blocks, packed by the first streamer, are page-locked
    where they are (same buffer, same bytes), not copied."""
    model = _model(4)
    x = torch.randn(4, 16)
    ref = model(x)
    registrar = FakeRegistrar()
    first = enable_block_streaming(model, 1, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=registrar))
    first.remove()
    pointers = [p.data_ptr() for b in model.blocks[1:] for p in b.parameters()]
    second = enable_block_streaming(
        model, 1, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=registrar)
    )
    registered = [c[1:] for c in registrar.calls if c[0] == "register"]
    assert registered[3:] == registered[:3]  # the same three ranges as the first time
    assert second.stats.pinned_bytes == sum(block_nbytes(b) for b in model.blocks[1:])
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    second.remove()
    assert [p.data_ptr() for b in model.blocks[1:] for p in b.parameters()] == pointers
    assert registrar.live == {}


@torch.no_grad()
def test_a_model_dropped_while_streamed_is_unpinned_before_its_memory_is_freed() -> None:
    """No remove(): when the last tensor viewing a block's buffer goes, the buffer is unregistered before the
    memory returns to the system (a freed range must not stay registered with the driver)."""
    registrar = FakeRegistrar()
    model = _model(4)
    handle = enable_block_streaming(
        model, 1, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=registrar)
    )
    model(torch.randn(2, 16))
    assert len(registrar.live) == 3
    del model, handle
    gc.collect()
    assert registrar.live == {}
    assert [c[0] for c in registrar.calls] == ["register"] * 3 + ["unregister"] * 3


@torch.no_grad()
def test_pinning_stops_at_the_cap_and_can_be_disabled() -> None:
    model = _model(6)
    x = torch.randn(4, 16)
    ref = model(x)
    per_block = block_nbytes(model.blocks[0])
    registrar = FakeRegistrar()
    policy = PinPolicy(limit_bytes=int(2.5 * per_block), registrar=registrar)
    handle = enable_block_streaming(model, 2, device="cpu", copy_on_load=True, pin_memory=policy)
    assert [handle.pinned_block_bytes(i) for i in range(2, 6)] == [per_block, per_block, 0, 0]
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    handle.remove()

    def pointers(m: torch.nn.Module) -> list[int]:
        return [p.data_ptr() for p in m.blocks[3].parameters()]

    model = _model(6)
    before = pointers(model)
    registrar = FakeRegistrar()
    handle = enable_block_streaming(
        model, 2, device="cpu", copy_on_load=True, pin_memory=PinPolicy(enabled=False, registrar=registrar)
    )
    handle.remove()
    assert registrar.calls == [] and handle.stats.pinned_bytes == 0
    assert pointers(model) == before  # not packed: the block keeps its own tensors

    model = _model(6)
    before = pointers(model)
    handle = enable_block_streaming(
        model, 2, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=registrar)
    )
    handle.remove()
    assert pointers(model) != before  # packed into the (now unpinned) block buffer


@torch.no_grad()
def test_refused_registration_leaves_blocks_pageable_and_correct() -> None:
    model = _model(4)
    x = torch.randn(4, 16)
    ref = model(x)
    handle = enable_block_streaming(
        model, 1, device="cpu", copy_on_load=True, pin_memory=PinPolicy(registrar=FakeRegistrar(refuse=True))
    )
    assert handle.stats.pinned_bytes == 0 and not handle.pin_memory
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    handle.remove()


def test_full_size_block_packs_to_its_exact_size_not_a_power_of_two() -> None:
    """A full-size Mochi block in bf16 (meta: shapes only) packs into exactly its bytes; torch's pinned allocator,
    given the tensors one by one, rounds each up to a power of two (1.45x in all)."""
    cfg = DiTConfig()
    with torch.device("meta"):
        block = AsymmetricJointBlock(
            cfg.hidden_size_x, cfg.hidden_size_y, cfg.num_heads, cfg.mlp_hidden_x, cfg.mlp_hidden_y, update_y=True
        ).to(torch.bfloat16)
    tensors = [t for _, t in block.state_dict().items()]
    _, total = packed_layout(tensors)
    size = block_nbytes(block)
    assert total == size
    assert all(t.numel() * t.element_size() % ALIGN == 0 for t in tensors)
    assert size == 415_283_200
    rounded = sum(2 ** math.ceil(math.log2(t.numel() * t.element_size())) for t in tensors)
    assert rounded == 604_042_240  # what pin_memory() tensor by tensor took for this block
