"""Block streaming and phase moves: keep N transformer blocks on the compute device, stream the rest.

Reproduces the *behaviour* of ComfyUI's partial loading for Mochi (weights that do not fit stay in system
memory and travel to the GPU when used) with our own mechanism: forward hooks on
``model.blocks[i]``.

- Blocks ``0..N-1`` and every non-block tensor (embedders, final layer) live on ``device``.
- Blocks ``N..depth-1`` live on the offload device (on a CUDA device: page-locked CPU memory of exactly the block's
  size, within :class:`~mochi_core.memory.streaming.pinning.PinPolicy`'s cap, given back by :meth:`BlockStreamer.remove`;
  see :mod:`mochi_core.memory.streaming.pinning`). A block's
  forward pre-hook brings it in, its forward hook sends it back (inference only: the home copy never
  changes, so "sending back" is dropping the device copy, no transfer). The forward hooks are registered with
  ``always_call=True``, and a model-level forward hook sends back every streamed block still on the device, so a
  forward that raises (out of memory, an interrupt, bad input) leaves only the N resident blocks on the device.
- One streamer per model: installing a second one while the first is attached is refused
  (:class:`~mochi_core.errors.InvalidInputError`); :meth:`BlockStreamer.remove` detaches it.
- With ``prefetch=True`` the pre-hook of block ``i`` also starts loading block ``i+1`` (on a side CUDA stream,
  so the copy overlaps block ``i``'s compute; on CPU the same logic runs synchronously). So at most
  ``N + 1 + prefetch`` blocks occupy the compute device at any moment; :class:`StreamingStats` records it.
- Order of a prefetch on CUDA (:class:`CudaPrefetcher`): the copy's memory is allocated on the *main* stream, the
  side stream waits for the main stream (that memory may be a block the main stream is still computing with,
  freed by the host ahead of the GPU), copies and records an event; the main stream waits for that event before
  the block computes, and before the block's copy is dropped in any case (a prefetch that never ran). Memory thus
  always belongs to the main stream and is reused by the allocator in the main stream's order: no
  ``record_stream``, whose deferred frees let a third block copy pile up while the host runs ahead.
- When ``device`` and the offload device are the same (CPU-only machines), an offloaded block's tensors are
  replaced by ``meta`` placeholders, so a block that the mechanism failed to bring in cannot compute and the
  residency counters describe real tensors, not bookkeeping. Weights that still sit in the checkpoint's memory
  mapping (loaded as stored) are then also given back to the OS after each use
  (:class:`~mochi_core.memory.streaming.pages.PageReleaser`): on the CPU, resident memory holds the N resident blocks and
  the block being computed, not the whole model.

Weights are rebound, never mutated: each parameter is replaced by a new ``nn.Parameter`` wrapping the home
tensor or its device copy (no requires-grad, inference only). This is the same per-tensor movement that
:func:`move_module` uses for whole-phase moves (text encoder in, DiT out, decoder in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import InvalidInputError
from ...options import StreamingSpec
from ...scalars import as_int
from .pages import PageReleaser
from .pinning import CudaHostRegistrar, PinnedBlock, PinPolicy, pin_block

__all__ = [
    "BlockStreamer",
    "CudaPrefetcher",
    "PinPolicy",
    "apply_streaming",
    "StreamingStats",
    "enable_block_streaming",
    "block_nbytes",
    "move_module",
    "make_room",
    "tensor_slots",
    "streaming_attached",
]

logger = logging.getLogger(__name__)

Slot = tuple[nn.Module, str, bool]  # (owner module, attribute name, is_parameter)
_MARK = "_mochi_block_streamer"  # attribute set on the model and its blocks list while a streamer is attached


def streaming_attached(model: nn.Module) -> bool:
    """True while a :class:`BlockStreamer` is installed on ``model`` (its block tensors are then captured)."""
    return model.__dict__.get(_MARK) is not None


def tensor_slots(module: nn.Module) -> list[Slot]:
    """Every parameter and buffer slot of ``module`` (recursively), each shared tensor once."""
    slots: list[Slot] = []
    seen: set[int] = set()
    for mod in module.modules():
        for name, p in mod._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                slots.append((mod, name, True))
        for name, b in mod._buffers.items():
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                slots.append((mod, name, False))
    return slots


def _get(slot: Slot) -> torch.Tensor:
    mod, name, is_param = slot
    return mod._parameters[name] if is_param else mod._buffers[name]  # type: ignore[return-value]


def _bind(slot: Slot, tensor: torch.Tensor) -> None:
    mod, name, is_param = slot
    if is_param:
        mod._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[name] = tensor


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def block_nbytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (shared tensors counted once)."""
    return sum(_nbytes(_get(s)) for s in tensor_slots(module))


def move_module(module: nn.Module, device: torch.device | str, *, pin_memory: bool = False) -> int:
    """Move every parameter and buffer of ``module`` to ``device`` in place, one tensor at a time.

    Unlike ``module.to`` this never holds two copies of the whole module, and it can pin host memory
    (``pin_memory=True`` with a CPU target) so later host-to-device copies are asynchronous.
    Returns the bytes moved.
    """
    dev = torch.device(device)
    moved = 0
    for slot in tensor_slots(module):
        t = _get(slot)
        if t.device == dev and not (pin_memory and not t.is_pinned()):
            continue
        new = t.to(dev)
        if pin_memory and dev.type == "cpu":
            new = new.pin_memory()
        _bind(slot, new)
        moved += _nbytes(t)
    return moved


def make_room(
    nbytes: int,
    device: torch.device | str,
    *,
    free_memory: Callable[[int, torch.device], object] | None = None,
) -> None:
    """Before a phase brings ``nbytes`` of weights and activations to ``device``, ask for that room.

    ``free_memory(nbytes, device)`` is the host's request (inside ComfyUI the node layer passes
    ``comfy.model_management.free_memory``, which unloads only as many other models as needed, never all);
    then cached CUDA blocks of released tensors are returned to the driver. On CPU it does nothing else.
    """
    dev = torch.device(device)
    if free_memory is not None:
        free_memory(int(nbytes), dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class StreamingStats:
    """Instrumentation of a :class:`BlockStreamer` (counters since :meth:`BlockStreamer.reset_stats`).

    ``max_loaded_blocks``: most blocks whose weights were on the compute device at once (resident + streamed),
    measured from the tensors themselves at every block boundary. ``max_streamed_loaded``: the same for
    streamed blocks only (1 without prefetch, 2 with). ``loads``: block copies to the compute device;
    ``prefetched``: how many of them were started ahead of the block's forward. ``bytes_loaded``: bytes copied.
    ``trace``: ("load" | "prefetch" | "forward" | "unload", block index), in order (capped at 10,000 entries).
    ``bytes_released``: memory-mapped weight bytes given back to the OS after use (CPU, same device only).
    The counts above read the tensors bound to the model; what the device really holds is the allocator's:
    ``max_allocated_bytes`` / ``max_reserved_bytes`` are CUDA's ``memory_allocated`` / ``memory_reserved`` read at
    every block boundary (host-side counters, no sync; 0 on other devices), so a block copy whose memory the
    allocator cannot reuse yet shows there. ``pinned_bytes``: page-locked host bytes held now (0 after remove).
    """

    max_loaded_blocks: int = 0
    max_streamed_loaded: int = 0
    loads: int = 0
    prefetched: int = 0
    bytes_loaded: int = 0
    bytes_released: int = 0
    max_allocated_bytes: int = 0
    max_reserved_bytes: int = 0
    pinned_bytes: int = 0
    trace: list[tuple[str, int]] = field(default_factory=list)

    def _log(self, what: str, index: int) -> None:
        if len(self.trace) < 10_000:
            self.trace.append((what, index))


class CudaPrefetcher:
    """Copies a block's home tensors to ``device`` on a side stream, ordered with the main stream (see the module
    docstring). Every CUDA call goes through ``torch.cuda`` at call time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side: Any = torch.cuda.Stream(device=device)

    def main(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def copy_ahead(self, home: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
        """Start copying ``home`` to the device; returns the copies and the event that marks them complete."""
        main = self.main()
        copies = [torch.empty_like(h, device=self.device) for h in home]  # allocated on the main stream
        self.side.wait_stream(main)  # the memory may still be in use by kernels queued on the main stream
        with torch.cuda.stream(self.side):
            for c, h in zip(copies, home):
                c.copy_(h, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.side)
        return copies, event

    def wait(self, event: Any) -> None:
        """The main stream waits (on the GPU, the host does not) until ``event``'s copies are complete."""
        self.main().wait_event(event)

    def finish(self) -> None:
        """Wait on the host for every copy started so far (before their host memory is unpinned)."""
        self.main().wait_stream(self.side)
        self.side.synchronize()


def _pin_policy(pin_memory: bool | PinPolicy | None, device: torch.device, offload: torch.device) -> PinPolicy:
    """The policy for ``pin_memory``: None pins when streaming from the CPU to a CUDA device, without a cap."""
    if isinstance(pin_memory, PinPolicy):
        return pin_memory
    if pin_memory is None:
        pin_memory = device.type == "cuda" and offload.type == "cpu"
    return PinPolicy(enabled=bool(pin_memory))


def _streaming_problem(model: Any, blocks: Any) -> str | None:
    """Why block streaming cannot be installed on ``model`` / ``blocks`` (None: it can)."""
    if not isinstance(model, nn.Module):
        return f"block streaming needs an nn.Module model; got {type(model).__name__}"
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return (
            f"block streaming needs a model with a non-empty `blocks` nn.ModuleList (or blocks=...); "
            f"{type(model).__name__} has none"
        )
    if any(owner.__dict__.get(_MARK) is not None for owner in (model, blocks)):
        return (
            f"block streaming is already installed on this {type(model).__name__}; call remove() on the "
            "handle enable_block_streaming returned before installing it again"
        )
    return None


class BlockStreamer:
    """Handle returned by :func:`enable_block_streaming`; call :meth:`remove` to detach it.

    Attributes: ``resident_blocks`` (N), ``depth``, ``device``, ``offload_device``, ``prefetch``, ``stats``.
    """

    def __init__(
        self,
        model: nn.Module,
        resident_blocks: int,
        *,
        device: torch.device | str,
        offload_device: torch.device | str = "cpu",
        prefetch: bool = True,
        pin_memory: bool | PinPolicy | None = None,
        blocks: nn.ModuleList | None = None,
        copy_on_load: bool | None = None,
    ) -> None:
        if blocks is None:
            blocks = getattr(model, "blocks", None)
        problem = _streaming_problem(model, blocks)
        if problem is not None:
            raise InvalidInputError(problem)
        depth = len(blocks)
        what = f"an integer from 0 to {depth} (the model's depth)"
        resident_blocks = as_int("resident_blocks", resident_blocks, low=0, high=depth, what=what)
        self.model = model
        self.blocks = blocks
        self.depth = depth
        self.resident_blocks = resident_blocks
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.prefetch = bool(prefetch)
        self.same_device = self.device == self.offload_device
        self.pin_policy = _pin_policy(pin_memory, self.device, self.offload_device)
        self.copy_on_load = bool(copy_on_load) if copy_on_load is not None else not self.same_device
        self.stats = StreamingStats()
        use_stream = self.device.type == "cuda" and self.prefetch and not self.same_device
        self._prefetcher: CudaPrefetcher | None = CudaPrefetcher(self.device) if use_stream else None
        self._pinned: dict[int, PinnedBlock] = {}
        self._slots: list[list[Slot]] = [tensor_slots(b) for b in blocks]
        self._home: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        self._loaded: set[int] = set()
        self._pending: dict[int, Any] = {}  # block index -> CUDA event of its prefetch copy
        self._hooks: list[Any] = []
        self._removed = False
        self._releasers: dict[int, PageReleaser] = {}

        # Non-block tensors and resident blocks go to the compute device.
        block_params = {id(_get(s)) for slots in self._slots for s in slots}
        for slot in tensor_slots(model):
            t = _get(slot)
            if id(t) not in block_params and t.device != self.device:
                _bind(slot, t.to(self.device))
        for i in range(depth):
            if i < resident_blocks:
                move_module(blocks[i], self.device)
                continue
            home = []
            for slot in self._slots[i]:
                t = _get(slot)
                home.append(t.to(self.offload_device) if t.device != self.offload_device else t)
            self._home[i] = self._pin(i, home)
            if self.same_device and not self.copy_on_load:
                releaser = PageReleaser(home)
                if releaser.ranges:
                    self._releasers[i] = releaser
            self._unload(i, log=False)

        for i, blk in enumerate(blocks):
            self._hooks.append(blk.register_forward_pre_hook(self._make_pre_hook(i)))
            # always_call: the block goes back even when its forward (or its pre-hook) raises
            self._hooks.append(blk.register_forward_hook(self._make_post_hook(i), always_call=True))
        self._hooks.append(model.register_forward_pre_hook(self._model_pre_hook))
        self._hooks.append(model.register_forward_hook(self._model_post_hook, always_call=True))
        for owner in (model, blocks):
            owner.__dict__[_MARK] = self
        logger.info(
            "block streaming: %d of %d blocks resident on %s, %d streamed from %s (prefetch=%s, pinned %d of them, "
            "%d bytes)",
            resident_blocks,
            depth,
            self.device,
            depth - resident_blocks,
            self.offload_device,
            self.prefetch,
            len(self._pinned),
            self.stats.pinned_bytes,
        )

    @property
    def pin_memory(self) -> bool:
        """True while some streamed block sits in page-locked host memory."""
        return bool(self._pinned)

    def pinned_block_bytes(self, index: int) -> int:
        """Page-locked host bytes held for block ``index`` (0 when it is not pinned)."""
        pinned = self._pinned.get(index)
        return pinned.nbytes if pinned is not None else 0

    def _pin(self, index: int, home: list[torch.Tensor]) -> list[torch.Tensor]:
        """Block ``index``'s home tensors, packed into exact-size page-locked memory when the policy allows."""
        policy = self.pin_policy
        if not policy.enabled or self.offload_device.type != "cpu" or not home:
            return home
        registrar = policy.registrar
        if registrar is None:
            if not CudaHostRegistrar.available():
                return home
            registrar = CudaHostRegistrar()
        size = sum(_nbytes(h) for h in home)
        held = sum(p.nbytes for p in self._pinned.values())
        if policy.limit_bytes is not None and held + size > policy.limit_bytes:
            return home
        views, pinned = pin_block(home, registrar)
        if pinned is not None:
            self._pinned[index] = pinned
            self.stats.pinned_bytes += pinned.nbytes
        return views

    # -- state -----------------------------------------------------------------------------------

    def is_streamed(self, index: int) -> bool:
        """True for blocks that live on the offload device between uses."""
        return index >= self.resident_blocks

    def block_on_device(self, index: int) -> bool:
        """True when every tensor of block ``index`` is currently on the compute device (read from the tensors)."""
        return all(_get(s).device == self.device for s in self._slots[index])

    def loaded_blocks(self) -> list[int]:
        """Indices of the blocks whose tensors are on the compute device right now."""
        return [i for i in range(self.depth) if self.block_on_device(i)]

    def reset_stats(self) -> None:
        self.stats = StreamingStats(pinned_bytes=self.stats.pinned_bytes)  # still held: not a counter

    # -- moves -----------------------------------------------------------------------------------

    def _load(self, index: int, *, ahead: bool) -> None:
        if index in self._loaded:
            return
        home = self._home[index]
        if self._prefetcher is not None and ahead:
            copies, self._pending[index] = self._prefetcher.copy_ahead(home)
        elif self.same_device:
            # the home tensors already sit on the compute device; copy_on_load allocates a real copy anyway so an
            # allocation tracker sees what a GPU would hold (planner validation on CPU)
            copies = [h.clone() for h in home] if self.copy_on_load else home
        else:
            copies = [h.to(self.device, non_blocking=index in self._pinned) for h in home]
        for slot, c in zip(self._slots[index], copies):
            _bind(slot, c)
        self._loaded.add(index)
        self.stats.loads += 1
        self.stats.bytes_loaded += sum(_nbytes(h) for h in home)
        if ahead:
            self.stats.prefetched += 1
        self.stats._log("prefetch" if ahead else "load", index)

    def _unload(self, index: int, *, log: bool = True) -> None:
        self._wait(index)  # a prefetch still copying must finish before its memory can go back to the allocator
        for slot, h in zip(self._slots[index], self._home[index]):
            _bind(slot, torch.empty_like(h, device="meta") if self.same_device else h)
        self._loaded.discard(index)
        releaser = self._releasers.get(index)
        if releaser is not None:
            releaser.release()
            self.stats.bytes_released += releaser.nbytes
        if log:
            self.stats._log("unload", index)

    def _wait(self, index: int) -> None:
        event = self._pending.pop(index, None)
        if event is not None and self._prefetcher is not None:
            self._prefetcher.wait(event)

    def _record(self) -> None:
        streamed = sum(1 for i in self._loaded if self.is_streamed(i))
        # Counted from the tensors (not from _loaded), so a bookkeeping bug cannot hide a resident block.
        loaded = sum(1 for i in range(self.depth) if self.block_on_device(i))
        self.stats.max_loaded_blocks = max(self.stats.max_loaded_blocks, loaded)
        self.stats.max_streamed_loaded = max(self.stats.max_streamed_loaded, streamed)
        if self.device.type == "cuda":
            allocated = torch.cuda.memory_allocated(self.device)
            reserved = torch.cuda.memory_reserved(self.device)
            self.stats.max_allocated_bytes = max(self.stats.max_allocated_bytes, allocated)
            self.stats.max_reserved_bytes = max(self.stats.max_reserved_bytes, reserved)

    # -- hooks -----------------------------------------------------------------------------------

    def _model_pre_hook(self, module: nn.Module, args: Any) -> None:
        first = self.resident_blocks
        if self.prefetch and first < self.depth:
            self._load(first, ahead=True)

    def _model_post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        """After the model's forward, also one that raised: no streamed block stays on the device (a block
        prefetched for a forward that never ran, or one whose forward was cut short)."""
        left = sorted(i for i in self._loaded if self.is_streamed(i))
        if left:
            logger.debug("block streaming: sending back blocks %s left on %s after the forward", left, self.device)
        for i in left:
            self._unload(i)

    def _make_pre_hook(self, index: int) -> Callable[[nn.Module, Any], None]:
        def pre_hook(module: nn.Module, args: Any) -> None:
            if self.is_streamed(index):
                if index in self._loaded:
                    self._wait(index)
                else:
                    self._load(index, ahead=False)
            nxt = index + 1
            if self.prefetch and nxt < self.depth and self.is_streamed(nxt):
                self._load(nxt, ahead=True)
            self.stats._log("forward", index)
            self._record()

        return pre_hook

    def _make_post_hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        def post_hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.is_streamed(index):
                self._unload(index)

        return post_hook

    # -- lifecycle -------------------------------------------------------------------------------

    def remove(self) -> None:
        """Remove the hooks. Streamed blocks are left on the offload device as real tensors (never meta), and
        their host memory is unpinned (it stays allocated as long as the model holds the tensors)."""
        if self._removed:
            return
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for i in range(self.resident_blocks, self.depth):
            self._wait(i)
            for slot, h in zip(self._slots[i], self._home[i]):
                _bind(slot, h)
            self._loaded.discard(i)
        if self._prefetcher is not None:
            self._prefetcher.finish()  # no copy may still read host memory that is unpinned below
        if self._pinned and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # nor a non-blocking load on the main stream
        for pinned in self._pinned.values():
            self.stats.pinned_bytes -= pinned.release()
        self._pinned.clear()
        for owner in (self.model, self.blocks):
            if owner.__dict__.get(_MARK) is self:
                del owner.__dict__[_MARK]
        self._removed = True

    def __enter__(self) -> BlockStreamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def enable_block_streaming(
    model: nn.Module,
    resident_blocks: int,
    *,
    device: torch.device | str,
    offload_device: torch.device | str = "cpu",
    prefetch: bool = True,
    pin_memory: bool | PinPolicy | None = None,
    blocks: nn.ModuleList | None = None,
    copy_on_load: bool | None = None,
) -> BlockStreamer:
    """Keep ``model.blocks[:resident_blocks]`` on ``device``; stream the others from ``offload_device``.

    ``model`` is any module with a ``blocks`` ``nn.ModuleList`` called in index order by its forward
    (the DiT's 48 ``AsymmetricJointBlock``s). Returns a :class:`BlockStreamer`; ``handle.remove()`` detaches it.
    Device bytes for weights: non-block tensors + N blocks + (1 + prefetch) streamed blocks.
    ``pin_memory``: a :class:`~mochi_core.memory.streaming.pinning.PinPolicy` (on/off and a cap in bytes), True / False, or
    None (pin when streaming from the CPU to CUDA, no cap); pinned memory is exactly the blocks' size and is given
    back by ``remove()``.
    ``blocks``: stream another ModuleList instead (e.g. T5's ``model.encoder.block``). ``copy_on_load``: when
    device and offload device are the same, allocate a copy on each load (default: only when they differ).
    Raises :class:`~mochi_core.errors.InvalidInputError` for a model without blocks or N outside 0..depth.
    """
    return BlockStreamer(
        model,
        resident_blocks,
        device=device,
        offload_device=offload_device,
        prefetch=prefetch,
        pin_memory=pin_memory,
        blocks=blocks,
        copy_on_load=copy_on_load,
    )


def apply_streaming(
    model: nn.Module, spec: StreamingSpec | None, *, device: torch.device | str, blocks: nn.ModuleList | None = None
) -> BlockStreamer | None:
    """Install the streaming a plan specifies (:attr:`mochi_core.memory.planning.planner.Plan.dit_streaming`) on a model
    its caller loaded; None when ``spec`` is None or keeps every block resident (the model is then untouched)."""
    if spec is None or not spec.streams:
        return None
    return enable_block_streaming(model, spec.resident_blocks, device=device, prefetch=spec.prefetch, blocks=blocks)
