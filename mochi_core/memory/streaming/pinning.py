"""Page-locked (pinned) host memory for streamed blocks, sized exactly and given back on request.

``Tensor.pin_memory()`` goes through torch's pinned-memory caching allocator, which rounds every allocation up to
a power of two (pinned tensor by tensor, a 415 MB bf16 block takes 604 MB; the 20 GB bf16 DiT would pin about
29 GB) and keeps freed pinned memory cached for the life of the process. Here a streamed block's tensors are instead
packed into one ordinary host buffer of exactly their size (each tensor at a 64-byte aligned offset) and that buffer
is page-locked in place with the CUDA runtime's ``cudaHostRegister``; :meth:`PinnedBlock.release` unregisters it
(``cudaHostUnregister``), after which the buffer is plain pageable memory that lives as long as the tensors viewing
it; a buffer freed while still registered (its model dropped without ``remove()``) is unregistered first. :class:`PinPolicy` says whether to pin at all and how many bytes at most (inside ComfyUI the node layer passes
ComfyUI's own settings: ``--disable-pinned-memory`` and its pinned-memory cap).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

__all__ = ["ALIGN", "PinPolicy", "PinnedBlock", "HostRegistrar", "CudaHostRegistrar", "packed_layout", "pin_block"]

logger = logging.getLogger(__name__)

#: byte alignment of each tensor inside a packed block (covers every element size and keeps copies vectorised)
ALIGN = 64


class HostRegistrar(Protocol):
    """Page-locks and unlocks host memory ranges (the CUDA runtime, or a stand-in in tests)."""

    def register(self, ptr: int, nbytes: int) -> bool: ...

    def unregister(self, ptr: int) -> bool: ...


class CudaHostRegistrar:
    """``cudaHostRegister`` / ``cudaHostUnregister`` through ``torch.cuda.cudart()`` (portable flag, as ComfyUI
    uses). ``available()`` is False without a CUDA runtime that exposes them."""

    PORTABLE = 1

    @staticmethod
    def available() -> bool:
        if not torch.cuda.is_available():
            return False
        try:
            rt = torch.cuda.cudart()
        except (AssertionError, RuntimeError, AttributeError):
            return False
        return hasattr(rt, "cudaHostRegister") and hasattr(rt, "cudaHostUnregister")

    def register(self, ptr: int, nbytes: int) -> bool:
        return int(torch.cuda.cudart().cudaHostRegister(ptr, nbytes, self.PORTABLE)) == 0

    def unregister(self, ptr: int) -> bool:
        # no copy queued on any device may still read the range (it is freed soon after, when a model is dropped)
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)
        return int(torch.cuda.cudart().cudaHostUnregister(ptr)) == 0


@dataclass(frozen=True)
class PinPolicy:
    """Whether streamed blocks are pinned, and at most how many bytes (``limit_bytes`` None: no cap).

    Blocks are pinned in streaming order until the next one would pass the cap; the rest stay pageable (their
    copies to the GPU are then not asynchronous, results are the same). ``registrar`` None: the CUDA runtime.
    """

    enabled: bool = True
    limit_bytes: int | None = None
    registrar: HostRegistrar | None = None

    @classmethod
    def disabled(cls) -> PinPolicy:
        return cls(enabled=False)


def packed_layout(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
    """Byte offsets of ``tensors`` packed one after another at :data:`ALIGN`-byte boundaries, and the total size
    (the end of the last one, no padding after it)."""
    offsets: list[int] = []
    end = 0
    for t in tensors:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + t.numel() * t.element_size()
    return offsets, end


class PinnedBlock:
    """One block's packed host buffer; ``pinned`` while registered; ``nbytes`` = the bytes page-locked.

    The registration ends with :meth:`release`, or at the latest when the buffer's memory is freed (a model dropped
    while still streamed): a finalizer on the array that owns the memory unregisters it before the memory goes
    back to the system, so no freed memory stays registered with the driver.
    """

    def __init__(self, owner: np.ndarray, nbytes: int, registrar: HostRegistrar) -> None:
        self.nbytes = nbytes
        self.ptr = int(owner.ctypes.data)
        self._finalizer = weakref.finalize(owner, _unregister, registrar, self.ptr, nbytes)
        self._finalizer.atexit = False  # the process and its registrations end together

    @property
    def pinned(self) -> bool:
        return self._finalizer.alive

    def release(self) -> int:
        """Unregister the buffer (the tensors viewing it stay valid, now pageable); returns the bytes unpinned."""
        if not self._finalizer.alive:
            return 0
        self._finalizer()
        return self.nbytes


def _unregister(registrar: HostRegistrar, ptr: int, nbytes: int) -> None:
    if not registrar.unregister(ptr):
        logger.warning("could not unpin a streamed block's %d host bytes", nbytes)


#: arrays owning packed block buffers, by address (entries vanish with the arrays)
_OWNERS: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def _packed_owner(tensors: Sequence[torch.Tensor], offsets: list[int], total: int) -> np.ndarray | None:
    """The array that ``tensors`` already view at the packed offsets (packed by an earlier :func:`pin_block`, e.g.
    for the previous prompt), or None."""
    storage = tensors[0].untyped_storage()
    base = storage.data_ptr()
    owner = _OWNERS.get(base)
    if owner is None or owner.nbytes != max(total, 1) or storage.nbytes() != owner.nbytes:
        return None
    for t, off in zip(tensors, offsets):
        if t.untyped_storage().data_ptr() != base or t.data_ptr() - base != off or not t.is_contiguous():
            return None
    return owner


def pin_block(
    tensors: Sequence[torch.Tensor], registrar: HostRegistrar
) -> tuple[list[torch.Tensor], PinnedBlock | None]:
    """Copy ``tensors`` (CPU) into one exact-size host buffer, page-lock it, and return views of the buffer with
    the tensors' shapes and dtypes (values equal) plus its :class:`PinnedBlock`. Tensors already packed that way
    (a block streamed before) are not copied again: their buffer is page-locked as it is. When the registrar
    refuses, the views are still returned (pageable) with None."""
    offsets, total = packed_layout(tensors)
    owner = _packed_owner(tensors, offsets, total) if tensors else None
    if owner is not None:
        views = list(tensors)
    else:
        # memory owned by a numpy array: its finalizer runs before the memory is freed (see PinnedBlock)
        owner = np.empty(max(total, 1), dtype=np.uint8)
        _OWNERS[int(owner.ctypes.data)] = owner
        buffer = torch.from_numpy(owner)
        views = []
        for t, off in zip(tensors, offsets):
            n = t.numel() * t.element_size()
            view = buffer[off : off + n].view(t.dtype).view(t.shape)
            view.copy_(t)
            views.append(view)
    if not total:
        return views, None
    if not registrar.register(int(owner.ctypes.data), total):
        logger.warning("could not pin %d host bytes for a streamed block; it streams from pageable memory", total)
        return views, None
    return views, PinnedBlock(owner, total, registrar)
