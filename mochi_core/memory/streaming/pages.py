"""Give back the memory pages of file-backed (memory-mapped) weights after use, on the CPU.

Weights loaded as stored sit in the checkpoint's memory mapping (``safetensors`` maps the file; nothing is copied):
touching them makes their pages part of the process's resident memory, and they stay there. When block streaming
runs with the compute device equal to the offload device (a CPU-only machine), "sending a block back" would
otherwise free nothing. :class:`PageReleaser` finds, once, the page ranges of a set of tensors that lie in a
private file mapping (``/proc/self/maps``: a mapping with a path of a regular file) and, on :meth:`release`, tells
the kernel it no longer needs them (``madvise(MADV_DONTNEED)``). The pages leave the process's RSS; the file's
contents stay in the page cache while memory allows, so the next use faults them back in from there (or from
disk), unchanged.

Safe only for pages nobody wrote to (a written page of a private mapping would be discarded): weights are never
written in place (``mochi_core.ops`` casts into fresh buffers). Tensors in anonymous memory (converted weights,
copies) are never touched. Linux only; elsewhere :meth:`release` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import torch

__all__ = ["PageReleaser", "file_backed_ranges"]

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


@lru_cache(maxsize=1)
def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's private mappings of regular files, sorted."""
    out = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[1].endswith("p"):
                    continue
                path = parts[5].strip()
                if not path.startswith("/") or path.endswith("(deleted)") or path.startswith("/dev/"):
                    continue
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                out.append((lo, hi))
    except OSError:
        return []
    return sorted(out)


def file_backed_ranges(tensors: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    """Page-aligned (start, length) ranges covering those of ``tensors`` whose storage lies wholly inside one
    private file mapping (CPU tensors only), merged."""
    maps = _file_mappings()
    spans = []
    for t in tensors:
        if t.device.type != "cpu" or t.is_meta:
            continue
        st = t.untyped_storage()
        lo, n = st.data_ptr(), st.nbytes()
        if n == 0 or not any(a <= lo and lo + n <= b for a, b in maps):
            continue
        start = lo - lo % _PAGE
        end = -(-(lo + n) // _PAGE) * _PAGE
        spans.append((start, end))
    merged: list[list[int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b - a) for a, b in merged]


class PageReleaser:
    """The file-backed pages of one group of tensors (e.g. one transformer block), released on demand."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.ranges = file_backed_ranges(tensors) if _libc() is not None else []
        self.nbytes = sum(n for _, n in self.ranges)
        self.releases = 0

    def release(self) -> None:
        """Drop these pages from the process's resident memory (they come back from the file when touched)."""
        libc = _libc()
        if libc is None or not self.ranges:
            return
        for start, length in self.ranges:
            if libc.madvise(ctypes.c_void_p(start), length, _MADV_DONTNEED) != 0:
                err = ctypes.get_errno()
                logger.debug("madvise(DONTNEED) failed (%s); pages stay resident", os.strerror(err))
                self.ranges = []  # give up quietly: correctness never depends on it
                return
        self.releases += 1
