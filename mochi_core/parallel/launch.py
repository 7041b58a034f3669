"""What ``python -m mochi_core generate`` does with ``--cfg-parallel``, ``--sp`` and ``--prompts``, in one process or
under ``torchrun``: :func:`prepare` checks the request against the DiT and the launched world size *before* any
process group starts or model loads, then joins the process group when there are several processes;
:func:`run` renders every prompt (:func:`mochi_core.parallel.prompts.render_all`) and ends the process group
cleanly, or, when this rank fails, records the failure for the other ranks first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidInputError
from .job import ParallelRun
from .layout import ParallelLayout
from .prompts import Render, Write, render_all
from .runtime import DistWorld, init_distributed, launched_world_size, shutdown

__all__ = ["Launch", "prepare", "run"]


@dataclass
class Launch:
    """This rank's part of a command-line job: the ``layout``, the process group (``world``, None for one
    process), the ``parallel`` run handed to ``generate`` (model parallelism only) and the ``device`` to use."""

    layout: ParallelLayout
    world: DistWorld | None
    parallel: ParallelRun | None
    device: torch.device

    @property
    def is_root(self) -> bool:
        return self.world is None or self.world.is_root

    @property
    def spread(self) -> bool:
        """Prompts go to different ranks (several processes, no model parallelism)."""
        return self.world is not None and self.parallel is None


def _heads(dit: Any) -> int | None:
    if isinstance(dit, (str, os.PathLike)):
        from ..dit.loader import read_dit_header

        return int(read_dit_header(dit)[1].num_heads)
    heads = getattr(getattr(dit, "config", None), "num_heads", None)
    return heads if isinstance(heads, int) else None


def prepare(
    layout: ParallelLayout,
    *,
    listed: bool,
    device: str | torch.device,
    dit: Any,
    timeout_s: float,
) -> Launch:
    """Check and start this rank's part of a job (``listed``: the prompts come from ``--prompts``).

    Refused before anything starts: ``sp`` that does not divide the DiT's heads; a world size that does not match
    the layout; several processes with nothing to share (one prompt, no model parallelism).
    """
    world_size = launched_world_size()
    if layout.sp > 1:
        heads = _heads(dit)
        if heads is not None:
            layout.check_heads(heads)
    if layout.model_parallel:
        layout.check_world(world_size)
    elif world_size > 1 and not listed:
        raise InvalidInputError(
            f"this job has {world_size} processes (WORLD_SIZE={world_size}) but nothing to share: give --prompts "
            "FILE to spread a prompt list over them, or --cfg-parallel / --sp N to compute one video together"
        )
    if world_size == 1:
        return Launch(layout, None, None, torch.device(device))
    world = init_distributed(device, timeout_s=timeout_s)
    parallel = ParallelRun(world, layout) if layout.model_parallel else None
    return Launch(layout, world, parallel, world.device)


def run(launch: Launch, prompts: list[str], seed: int, render: Render, write: Write) -> None:
    """Render ``prompts`` (seeds from ``seed`` upward) on this rank's share and end the process group."""
    if launch.world is None:
        render_all(prompts, seed, render, write)
        return
    try:
        render_all(prompts, seed, render, write, world=launch.world, spread=launch.spread)
    except BaseException as exc:
        shutdown(launch.world, failed=exc)
        raise
    shutdown(launch.world)
