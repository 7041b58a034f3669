"""Page-locked (pinned) host memory for streamed blocks, sized exactly and given back on request.

``Tensor.pin_memory()`` goes through torch's pinned-memory caching allocator, which rounds every allocation up to
a power of two (pinned tensor by tensor, a 415 MB bf16 block takes 604 MB; the 20 GB bf16 DiT would pin about
29 GB) and keeps freed pinned memory cached for the life of the process. Here a streamed block's tensors are instead
packed into one ordinary host buffer of exactly their size (each tensor at a 64-byte aligned offset) and that buffer
is page-locked in place with the CUDA runtime's ``cudaHostRegister``; :meth:`PinnedBlock.release` unregisters it
(``cudaHostUnregister``), after which the buffer is plain pageable memory that lives as long as the tensors viewing
it. :class:`PinPolicy` says whether to pin at all and how many bytes at most (inside ComfyUI the node layer passes
ComfyUI's own settings: ``--disable-pinned-memory`` and its pinned-memory cap).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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


@dataclass
class PinnedBlock:
    """One block's packed host buffer; ``pinned`` while registered. ``nbytes`` = the buffer's size."""

    buffer: torch.Tensor
    nbytes: int
    pinned: bool
    registrar: HostRegistrar | None

    def release(self) -> int:
        """Unregister the buffer (the tensors viewing it stay valid, now pageable); returns the bytes unpinned."""
        if not self.pinned or self.registrar is None:
            return 0
        self.pinned = False
        if not self.registrar.unregister(self.buffer.data_ptr()):
            logger.warning("could not unpin a streamed block's %d host bytes", self.nbytes)
        return self.nbytes


def _packed_buffer(tensors: Sequence[torch.Tensor], offsets: list[int], total: int) -> torch.Tensor | None:
    """The uint8 buffer ``tensors`` already view at the packed offsets (packed by an earlier :func:`pin_block`, e.g.
    for the previous prompt), or None."""
    storage = tensors[0].untyped_storage()
    base = storage.data_ptr()
    if storage.nbytes() != max(total, 1):
        return None
    for t, off in zip(tensors, offsets):
        if t.untyped_storage().data_ptr() != base or t.data_ptr() - base != off or not t.is_contiguous():
            return None
    return torch.empty(0, dtype=torch.uint8).set_(storage)


def pin_block(tensors: Sequence[torch.Tensor], registrar: HostRegistrar) -> tuple[list[torch.Tensor], PinnedBlock]:
    """Copy ``tensors`` (CPU) into one exact-size host buffer, page-lock it, and return views of the buffer with
    the tensors' shapes and dtypes (values equal) plus its :class:`PinnedBlock`. Tensors already packed that way
    (a block streamed before) are not copied again: their buffer is page-locked as it is. When the registrar
    refuses, the views are still returned (pageable) and ``pinned`` is False."""
    offsets, total = packed_layout(tensors)
    buffer = _packed_buffer(tensors, offsets, total) if tensors else None
    if buffer is not None:
        views = list(tensors)
    else:
        buffer = torch.empty(max(total, 1), dtype=torch.uint8)
        views = []
        for t, off in zip(tensors, offsets):
            n = t.numel() * t.element_size()
            view = buffer[off : off + n].view(t.dtype).view(t.shape)
            view.copy_(t)
            views.append(view)
    pinned = registrar.register(buffer.data_ptr(), total) if total else False
    if total and not pinned:
        logger.warning("could not pin %d host bytes for a streamed block; it streams from pageable memory", total)
    return views, PinnedBlock(buffer, total if pinned else 0, pinned, registrar)
