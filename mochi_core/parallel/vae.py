"""The VAE decode's spatial tiles spread over the ranks (:class:`RankTileShare` for
:func:`mochi_core.vae.tiling.tiled_decode`).

Tile k (row-major) is decoded by rank ``k % world``; every rank decodes all temporal chunks of its tiles (the
chunks of one tile carry causal context, so they stay on one rank). A rank other than 0 sends each finished tile,
already multiplied by its blend weights, to rank 0 (one send in flight while it decodes the next tile); rank 0
adds every tile into the video in tile order, exactly as a single process does, so the frames equal a
single-process decode with the same tile plan.
"""

from __future__ import annotations

from typing import Any

import torch

from .comm import Comm

__all__ = ["RankTileShare"]


class RankTileShare:
    """Tiles over the members of ``comm`` (member 0 is the root that assembles the video)."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._pending: tuple[Any, torch.Tensor] | None = None

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def owner(self, index: int) -> int:
        return index % self.comm.size

    def mine(self, index: int) -> bool:
        return self.owner(index) == self.comm.rank

    def send(self, tile: torch.Tensor) -> None:
        """(non-root) Send a weighted tile (B, C, F, h, w) float32 to the root; waits for the previous send."""
        self.flush()
        tile = tile.contiguous()
        self._pending = (self.comm.isend(tile, 0), tile)

    def receive(self, tile: torch.Tensor, index: int) -> torch.Tensor:
        """(root) Fill ``tile`` with tile ``index`` from its owner."""
        return self.comm.recv(tile, self.owner(index))

    def flush(self) -> None:
        if self._pending is not None:
            work, _ = self._pending
            self._pending = None
            self.comm.wait(work)
