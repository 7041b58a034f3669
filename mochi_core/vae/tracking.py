"""Measure the peak of live tensor bytes allocated inside a block of code (CPU or any device).

A ``TorchDispatchMode`` sees every tensor an operator returns; each new storage is counted once with its size and
uncounted when the storage is freed (PyTorch keeps one Python object per live storage, so a finalizer on it fires
exactly when the memory is released). Tensors that existed before the block (weights, inputs) are not counted.
Allocations private to a kernel (e.g. oneDNN scratch space) are invisible to this tracker.

Reusable by the memory planner: ``with PeakMemoryTracker() as t: ...; t.peak_bytes``.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemoryTracker"]


class PeakMemoryTracker(TorchDispatchMode):
    """Context manager; ``peak_bytes`` / ``current_bytes`` after (or during) the block.

    device_type: count only storages on this device type ("cpu", "cuda"); None counts all.
    """

    def __init__(self, device_type: str | None = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.current_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.current_bytes -= self._sizes.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(st)
        size = st.nbytes()
        old = self._sizes.get(key)
        if old is None:
            self._sizes[key] = size
            self.current_bytes += size
            weakref.finalize(st, self._release, key)
        elif old != size:  # resized in place (out= ops)
            self._sizes[key] = size
            self.current_bytes += size - old
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def __enter__(self) -> PeakMemoryTracker:
        super().__enter__()
        return self
