"""Several processes on one job, over ``torch.distributed`` started by ``torchrun``: CFG-parallel and
sequence-parallel sampling of one video, the VAE decode split by tiles, and prompt lists spread over the ranks.

- :mod:`.layout`: :class:`ParallelLayout` (``cfg_parallel``, ``sp``) and its checks;
- :mod:`.runtime`: :func:`init_distributed` (gloo on CPU, NCCL on CUDA), :class:`DistWorld`, :func:`shutdown`;
- :mod:`.watchdog`: heartbeats through the rendezvous store, so a failed rank is named and no rank hangs;
- :mod:`.comm`: the collectives, with failure messages, byte counts and an all-gather fallback for all-to-all;
- :mod:`.sequence`, :mod:`.dit`, :mod:`.vae`, :mod:`.job`: the DiT and VAE split over the ranks;
- :mod:`.prompts`: prompt files and their distribution over the ranks;
- :mod:`.volume`: bytes each rank sends per sampling step (README scaling figures).

Nothing here is imported by ``import mochi_core``; importing this package starts nothing.
"""

from __future__ import annotations

from .job import ParallelRun
from .layout import ParallelLayout
from .runtime import DistWorld, init_distributed, launched_world_size, shutdown

__all__ = ["DistWorld", "ParallelLayout", "ParallelRun", "init_distributed", "launched_world_size", "shutdown"]
