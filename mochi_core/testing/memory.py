"""Measure memory: peak of live tensor bytes (CPU allocator events, or CUDA allocator stats) and peak RSS.

Used by the planner validation (measured peaks of real runs against the planner's predictions)
and by the benchmarks. No upstream behaviour is reproduced here; the numbers are what the planner models:

- **tensor bytes** on CPU come from ``torch.profiler`` with ``profile_memory=True``: every allocation and
  free of PyTorch's CPU allocator (tensor storages and kernels' internal scratch buffers alike) is an event
  with a signed byte count; the running sum in time order gives live bytes and its maximum the peak.
  On CUDA the allocator's own ``max_memory_allocated`` is used.
- **storage bytes** (:class:`PeakMemoryTracker`): a ``TorchDispatchMode`` that counts every new tensor
  storage an operator returns and uncounts it when the storage is freed. It sees tensors only (no kernel
  scratch buffers) and is cheap; the VAE tiling constants were fitted with it.
- **RSS**: the kernel's high-water mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` (Linux) at the
  start and read at the end; where that is not allowed a thread samples ``/proc/self/statm`` every 2 ms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["MemoryReport", "PeakMemoryTracker", "track_memory", "current_rss_bytes", "peak_rss_bytes", "reset_peak_rss"]

logger = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    """The kernel's RSS high-water mark (VmHWM) since start or the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). Returns False where it is not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReport:
    """What :func:`track_memory` measured inside its ``with`` block (bytes; relative to the start).

    ``tensor_peak_bytes``: maximum of live tensor bytes allocated inside the block (those alive at the start
    are not counted); ``tensor_end_bytes``: still alive at the end. ``rss_start_bytes`` / ``rss_peak_bytes``:
    process RSS at the start and its maximum during the block; ``rss_peak_delta_bytes`` their difference.
    ``seconds``: wall time of the block.
    """

    tensor_peak_bytes: int = 0
    tensor_end_bytes: int = 0
    allocations: int = 0
    rss_start_bytes: int = 0
    rss_peak_bytes: int = 0
    seconds: float = 0.0
    device: str = "cpu"

    @property
    def rss_peak_delta_bytes(self) -> int:
        return max(0, self.rss_peak_bytes - self.rss_start_bytes)


class _RssSampler:
    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, current_rss_bytes())


def _cpu_peak_from_profile(prof: torch.profiler.profile) -> tuple[int, int, int]:
    """(peak live bytes, live bytes at the end, allocation count) from the profiler's memory events."""
    events = []
    for e in prof.profiler.kineto_results.events():  # type: ignore[union-attr]
        if e.name() != "[memory]":
            continue
        if e.device_type() != torch.autograd.DeviceType.CPU:
            continue
        events.append((e.start_ns(), e.nbytes()))
    events.sort(key=lambda t: t[0])
    live = peak = allocs = 0
    for _, nbytes in events:
        live += nbytes
        allocs += nbytes > 0
        peak = max(peak, live)
    return peak, live, allocs


@contextlib.contextmanager
def track_memory(
    device: torch.device | str = "cpu", *, tensors: bool = True, rss: bool = True
) -> Iterator[MemoryReport]:
    """Measure the tensor-allocation peak and the RSS peak of the code in the ``with`` block.

    >>> with track_memory() as report:
    ...     run()
    >>> report.tensor_peak_bytes, report.rss_peak_delta_bytes

    On CPU this runs ``torch.profiler`` (one profiler at a time; it slows tiny ops a little). The report is
    filled when the block exits.
    """
    dev = torch.device(device)
    report = MemoryReport(device=str(dev))
    sampler: _RssSampler | None = None
    if rss:
        report.rss_start_bytes = current_rss_bytes()
        if not reset_peak_rss():
            sampler = _RssSampler()
            sampler.start()
    prof = None
    cuda_base = 0
    if tensors and dev.type == "cuda":
        torch.cuda.synchronize(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    elif tensors:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        prof.__enter__()
    t0 = time.perf_counter()
    try:
        yield report
    finally:
        if dev.type == "cuda" and tensors:
            torch.cuda.synchronize(dev)
        report.seconds = time.perf_counter() - t0
        if prof is not None:
            prof.__exit__(None, None, None)
            report.tensor_peak_bytes, report.tensor_end_bytes, report.allocations = _cpu_peak_from_profile(prof)
        elif tensors and dev.type == "cuda":
            report.tensor_peak_bytes = torch.cuda.max_memory_allocated(dev) - cuda_base
            report.tensor_end_bytes = torch.cuda.memory_allocated(dev) - cuda_base
        if rss:
            report.rss_peak_bytes = sampler.stop() if sampler is not None else peak_rss_bytes()
        logger.debug("memory: %s", report)


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
