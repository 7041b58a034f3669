"""One video computed by several ranks: what :func:`mochi_core.pipeline.generate` needs from the distributed layer.

``generate(..., parallel=ParallelRun(world, layout))`` on every rank of a model-parallel job: rank 0 alone loads
the T5 and encodes the prompts, and :meth:`ParallelRun.share_features` broadcasts the features; every rank loads the
DiT, which :meth:`ParallelRun.wrap_dit` spreads over the CFG and sequence groups; every rank loads the VAE and
decodes its share of the tiles (:meth:`ParallelRun.tile_share`); rank 0 alone gets the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InvalidInputError
from .dit import ParallelDiT
from .layout import ParallelLayout
from .runtime import DistWorld, ModelGroups
from .vae import RankTileShare

__all__ = ["ParallelRun"]


@dataclass
class ParallelRun:
    """``world`` (this rank's process group, :func:`~mochi_core.parallel.runtime.init_distributed`) used by
    ``layout``; the layout must use every rank of the world."""

    world: DistWorld
    layout: ParallelLayout
    _groups: ModelGroups | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.layout.model_parallel:
            raise InvalidInputError(
                "ParallelRun needs cfg_parallel=True and/or sp > 1 (several ranks on one video); to spread several "
                "prompts over the ranks use mochi_core.parallel.prompts.render_all (the CLI's --prompts)"
            )
        self.layout.check_world(self.world.world)

    @property
    def groups(self) -> ModelGroups:
        if self._groups is None:
            self._groups = self.world.model_groups(self.layout)
        return self._groups

    @property
    def is_root(self) -> bool:
        return self.world.is_root

    @property
    def device(self) -> torch.device:
        return self.world.device

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.world.world,
            "rank": self.world.rank,
            "cfg_parallel": self.layout.cfg_parallel,
            "sp": self.layout.sp,
            "backend": self.world.backend,
        }

    def share_features(self, feat: torch.Tensor | None, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank 0's T5 features (P, L, D) float32 and mask (P, L) bool, on every rank (broadcast once)."""
        comm, dev = self.world.comm, self.world.device
        shape = torch.zeros(3, dtype=torch.int64, device=dev)
        if self.is_root:
            assert feat is not None and mask is not None
            shape.copy_(torch.tensor(feat.shape, dtype=torch.int64))
        comm.broadcast(shape, 0)
        p, length, d = (int(v) for v in shape.tolist())
        if self.is_root:
            assert feat is not None and mask is not None
            f = feat.to(device=dev, dtype=torch.float32).contiguous()
            m = mask.to(device=dev, dtype=torch.uint8).contiguous()
        else:
            f = torch.empty(p, length, d, dtype=torch.float32, device=dev)
            m = torch.empty(p, length, dtype=torch.uint8, device=dev)
        comm.broadcast(f, 0)
        comm.broadcast(m, 0)
        return f, m.to(torch.bool)

    def wrap_dit(self, model: Any) -> ParallelDiT:
        return ParallelDiT(model, self.groups)

    def tile_share(self) -> RankTileShare:
        return RankTileShare(self.world.comm)
