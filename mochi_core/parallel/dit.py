"""A DiT callable that computes one sampler call across the ranks of a layout.

CFG-parallel: the sampler calls the DiT with cond and uncond as one batch of 2B (``batch_cfg``); the rank with
``cfg_index`` c computes half c of that batch and the two halves are all-gathered, so both ranks return the whole
(2B, ...) prediction and apply the same CFG combination and Euler step to the same latent (no broadcast needed: the
ranks stay identical by construction). A call of odd batch (a step with cfg 1) is computed whole on both ranks.
Sequence-parallel: the model's ``sequence_parallel`` hook splits the visual tokens of every call over the
sequence group (:mod:`mochi_core.parallel.sequence`). The two combine (e.g. 2 x 2 ranks).
"""

from __future__ import annotations

from typing import Any

import torch

from .runtime import ModelGroups
from .sequence import SequenceParallel

__all__ = ["ParallelDiT"]


class ParallelDiT:
    """``model(x, sigma, t5_feat, t5_mask)`` over ``groups`` (see module docstring). ``close()`` removes the
    sequence hook from the model."""

    def __init__(self, model: Any, groups: ModelGroups) -> None:
        self.model = model
        self.groups = groups
        self._sp: SequenceParallel | None = None
        if groups.sp is not None:
            heads = int(model.config.num_heads)
            groups.layout.check_heads(heads)
            self._sp = SequenceParallel(groups.sp, heads)
            self._sp.install(model)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def checkpoint_format(self) -> str:
        return str(getattr(self.model, "checkpoint_format", ""))

    def close(self) -> None:
        if self._sp is not None:
            SequenceParallel.uninstall(self.model)
            self._sp = None

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, t5_feat: torch.Tensor, t5_mask: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """Shapes as ``AsymmDiT.forward``: x (B, C, T, H, W) -> (B, C, T, H, W) float32 on every rank (or whatever
        the model returns per sample for the keyword options it takes, batch first).

        A step cache (``cache=``, TeaCache) decides from block 0's input of the whole batch and all tokens, which
        every rank computes alike, so the ranks skip the same steps; each keeps the residual of its own half and
        tokens (the model's forward handles the token slice).
        """
        cfg = self.groups.cfg
        b = x.shape[0]
        if cfg is None or b % 2:
            return self.model(x, sigma, t5_feat, t5_mask, **kwargs)
        half = b // 2
        part = slice(cfg.rank * half, (cfg.rank + 1) * half)
        out = self.model(x[part], sigma[part], t5_feat[part], t5_mask[part], **kwargs)
        return torch.cat(cfg.all_gather(out.contiguous()), dim=0)
