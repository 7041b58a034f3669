"""The collectives this package uses, over one process group, with failure messages and a byte count.

Every call goes through :class:`Comm`, which

- turns a backend error (a peer's sockets closed, a timeout) into :class:`~mochi_core.errors.ParallelError` naming
  the failed rank, as identified by the :class:`~mochi_core.parallel.watchdog.Watchdog`;
- counts the bytes this rank sends to other ranks (``sent_bytes``, per operation in ``sent_by_op``): the payload
  that must leave the rank whatever algorithm the backend uses (an all-gather of t bytes over n ranks: t·(n−1); an
  all-to-all: everything but the part kept; a broadcast from this rank: t·(n−1); a send: t). The README's
  communication figures come from the same rule (:func:`mochi_core.parallel.volume.step_bytes`);
- offers ``all_to_all`` with an all-gather fallback for backends without ``all_to_all_single`` (every rank
  gathers every rank's whole send buffer and keeps its own parts: (n−1) times more traffic, same result).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..errors import ParallelError

__all__ = ["Comm"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Comm:
    """Collectives over ``group`` (None = the whole world), whose ``ranks`` are global rank numbers in group order.

    ``watchdog``: explains failures; ``a2a``: "auto" (probe ``all_to_all_single`` once, fall back to all-gather),
    "native" or "gather".
    """

    def __init__(self, group: Any, ranks: Sequence[int], watchdog: Any, *, a2a: str = "auto") -> None:
        self.group = group
        self.ranks = list(ranks)
        self.size = len(self.ranks)
        self.rank = self.ranks.index(dist.get_rank())
        self.watchdog = watchdog
        self.sent_by_op: dict[str, int] = defaultdict(int)
        self._a2a = a2a
        if a2a not in ("auto", "native", "gather"):
            raise ValueError(f"a2a must be auto, native or gather; got {a2a!r}")

    @property
    def sent_bytes(self) -> int:
        return sum(self.sent_by_op.values())

    # ------------------------------------------------------------------ error handling
    def _run(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as exc:  # DistBackendError / DistNetworkError / timeouts are RuntimeErrors
            message = self.watchdog.explain(exc) if self.watchdog is not None else str(exc)
            raise ParallelError(f"{op} failed on rank {dist.get_rank()}: {message}") from exc

    def _count(self, op: str, nbytes: int) -> None:
        self.sent_by_op[op] += int(nbytes)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        self._run("barrier", lambda: dist.barrier(group=self.group))

    def broadcast(self, tensor: torch.Tensor, src_index: int = 0) -> torch.Tensor:
        """Broadcast ``tensor`` (in place) from the group member ``src_index``."""
        if self.rank == src_index:
            self._count("broadcast", tensor.numel() * tensor.element_size() * (self.size - 1))
        src = self.ranks[src_index]
        self._run("broadcast", lambda: dist.broadcast(tensor, src=src, group=self.group))
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every member's ``tensor`` (equal shapes), in group order."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        self._count("all_gather", tensor.numel() * tensor.element_size() * (self.size - 1))
        self._run("all_gather", lambda: dist.all_gather(out, tensor, group=self.group))
        return out

    def all_gather_dim(self, tensor: torch.Tensor, sizes: Sequence[int], dim: int) -> torch.Tensor:
        """Concatenation along ``dim`` of every member's ``tensor``, member i holding ``sizes[i]`` along ``dim``
        (uneven sizes are padded for the exchange)."""
        top = max(sizes)
        if tensor.shape[dim] < top:
            pad_shape = list(tensor.shape)
            pad_shape[dim] = top - tensor.shape[dim]
            tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
        parts = self.all_gather(tensor)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def all_to_all(self, send: torch.Tensor, matrix: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Exchange parts of the flat tensor ``send``: ``matrix[j][i]`` = elements member j sends to member i (every
        member passes the same matrix; member j's ``send`` is its parts for members 0, 1, ... back to back).
        Returns the parts received from each member, in group order (flat)."""
        send = send.contiguous().reshape(-1)
        me = self.rank
        out_sizes = [int(matrix[j][me]) for j in range(self.size)]
        in_sizes = [int(v) for v in matrix[me]]
        if send.numel() != sum(in_sizes):
            raise ValueError(f"all_to_all: send has {send.numel()} elements, the matrix says {sum(in_sizes)}")
        if self._a2a == "auto":
            self._a2a = self._probe()
        if self._a2a == "native":
            self._count("all_to_all", (sum(in_sizes) - in_sizes[me]) * send.element_size())
            recv = send.new_empty(sum(out_sizes))
            self._run(
                "all_to_all",
                lambda: dist.all_to_all_single(
                    recv, send, output_split_sizes=out_sizes, input_split_sizes=in_sizes, group=self.group
                ),
            )
            return list(recv.split(out_sizes))
        return self._all_to_all_by_gather(send, matrix)

    def _all_to_all_by_gather(self, send: torch.Tensor, matrix: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        totals = [sum(int(v) for v in row) for row in matrix]
        padded = send if send.numel() == max(totals) else torch.cat([send, send.new_zeros(max(totals) - send.numel())])
        self._count("all_gather", padded.numel() * padded.element_size() * (self.size - 1))
        everything = self._run("all_gather", lambda: self._gather_raw(padded))
        me = self.rank
        parts = []
        for j, buf in enumerate(everything):
            start = sum(int(v) for v in matrix[j][:me])
            parts.append(buf[start : start + int(matrix[j][me])])
        return parts

    def _gather_raw(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(out, tensor, group=self.group)
        return out

    def _probe(self) -> str:
        """ "native" when the backend runs ``all_to_all_single`` (tried once on a few bytes), else "gather"."""
        probe = torch.arange(self.size, dtype=torch.float32, device=self._device())
        out = torch.empty_like(probe)
        try:
            dist.all_to_all_single(out, probe, group=self.group)
        except (RuntimeError, NotImplementedError) as exc:
            logger.warning("all_to_all_single is not available on this backend (%s): using all-gather instead", exc)
            return "gather"
        return "native"

    def _device(self) -> torch.device:
        backend = dist.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ point to point
    def isend(self, tensor: torch.Tensor, dst_index: int) -> Any:
        self._count("send", tensor.numel() * tensor.element_size())
        dst = self.ranks[dst_index]
        return self._run("send", lambda: dist.isend(tensor, dst=dst, group=self.group))

    def wait(self, work: Any, op: str = "send") -> None:
        if work is not None:
            self._run(op, work.wait)

    def recv(self, tensor: torch.Tensor, src_index: int) -> torch.Tensor:
        src = self.ranks[src_index]
        self._run("recv", lambda: dist.recv(tensor, src=src, group=self.group))
        return tensor
