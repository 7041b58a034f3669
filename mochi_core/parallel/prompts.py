"""Render a list of prompts, one video each, in one process or spread over the ranks of a job.

:func:`read_prompts` reads a prompt file (one prompt a line; blank lines and lines starting with ``#`` are
skipped). :func:`render_all` renders prompt i with seed ``seed + i``:

- one process, or a model-parallel job (every rank works on every video): the prompts in order; rank 0 writes;
- several processes without model parallelism: prompt i on rank ``i % world``, each rank rendering its prompts
  on its own device; every finished video (frames and summary) goes to rank 0, which writes all of them in
  prompt order. A rank sends its finished video while it renders the next one.

Only rank 0 calls ``write``. Either way each video is the one a single run with that prompt and seed renders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError

__all__ = ["read_prompts", "render_all"]

#: render(index, prompt, seed) -> (frames (F, H, W, 3) float32 or None on ranks other than 0, summary dict)
Render = Callable[[int, str, int], tuple[torch.Tensor | None, dict[str, Any]]]
#: write(index, frames, summary) on rank 0
Write = Callable[[int, torch.Tensor, dict[str, Any]], None]


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a UTF-8 text file, one a line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"--prompts {str(path)!r}: no such file (one prompt a line)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"--prompts {str(path)!r} cannot be read as UTF-8 text ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InvalidInputError(f"--prompts {str(path)!r} holds no prompt (one prompt a line; # starts a comment)")
    return prompts


def render_all(
    prompts: list[str], seed: int, render: Render, write: Write, *, world: Any = None, spread: bool = False
) -> None:
    """Render every prompt (see module docstring). ``world``: this rank's
    :class:`~mochi_core.parallel.runtime.DistWorld` (None: one process); ``spread``: prompts over the ranks
    (no model parallelism) rather than every rank on every prompt."""
    if world is None or not spread:
        for i, prompt in enumerate(prompts):
            frames, summary = render(i, prompt, seed + i)
            if world is None or world.is_root:
                assert frames is not None
                write(i, frames, summary)
        return
    comm, size = world.comm, world.world
    if world.is_root:
        for i, prompt in enumerate(prompts):
            if i % size == 0:
                frames, summary = render(i, prompt, seed + i)
                assert frames is not None
            else:
                frames, summary = _receive(comm, i % size, world.device)
            write(i, frames, summary)
        return
    pending: list[Any] = []
    for i in range(world.rank, len(prompts), size):
        frames, summary = render(i, prompts[i], seed + i)
        assert frames is not None
        _wait(comm, pending)  # the previous video has reached rank 0
        pending = _send(comm, frames, summary, world.device)
    _wait(comm, pending)


def _wait(comm: Any, pending: list[tuple[Any, torch.Tensor]]) -> None:
    for work, _buffer in pending:
        comm.wait(work)


def _send(
    comm: Any, frames: torch.Tensor, summary: dict[str, Any], device: torch.device
) -> list[tuple[Any, torch.Tensor]]:
    """Start sending one video to rank 0: (work, buffer) pairs; each buffer must live until its work is done."""
    text = torch.frombuffer(bytearray(json.dumps(summary).encode("utf-8")), dtype=torch.uint8).to(device)
    header = torch.tensor([*frames.shape, text.numel()], dtype=torch.int64, device=device)
    data = frames.to(device=device, dtype=torch.float32).contiguous()
    return [(comm.isend(t, 0), t) for t in (header, text, data)]


def _receive(comm: Any, src: int, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    header = comm.recv(torch.empty(5, dtype=torch.int64, device=device), src)
    f, h, w, c, n = (int(v) for v in header.tolist())
    text = comm.recv(torch.empty(n, dtype=torch.uint8, device=device), src)
    frames = comm.recv(torch.empty(f, h, w, c, dtype=torch.float32, device=device), src)
    return frames.cpu(), json.loads(bytes(text.cpu().tolist()).decode("utf-8"))
