"""Run real multi-process jobs on the CPU (gloo) for the tests: :func:`spawn` starts ``world`` processes with
``torch.multiprocessing``, each given the ``env://`` variables torchrun would set; each runs :func:`worker`, which joins
the process group and renders the jobs of a JSON spec with :func:`mochi_core.generate` in each parallel layout.

Spec (JSON file): ``{"common": {generate keyword arguments}, "modes": [{"name", "cfg_parallel", "sp", "a2a",
"generate" (more generate keyword arguments), "lora" (a LoRA file applied at run time, strength 1), "stream"
(resident blocks, the others streamed), "kill":
{"rank": r, "step": s}}], "watchdog": {init_distributed limits} (optional)}``. Rank 0 saves ``<out>/<name>.pt`` =
{"latent", "frames", "sent_bytes" (per rank: bytes sent by op), "summary"}; in a mode with "kill" (the last one),
rank r SIGKILLs itself at sampling step s and every other rank writes ``<out>/error_<rank>.json`` with its error
and the seconds from its own step s to the error.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["free_port", "loaded_dit", "spawn", "worker"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    world: int, spec: str | os.PathLike[str], out: str | os.PathLike[str], *, timeout: float = 120.0
) -> list[int | None]:
    """Run :func:`worker` in ``world`` fresh processes (``torch.multiprocessing``, ``spawn`` start method) and wait
    for all of them; returns their exit codes (None: killed after ``timeout`` seconds). No process is stopped because
    another failed (as ``torch.multiprocessing.spawn`` would): that is what the watchdog under test must do."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, str(spec), str(out))) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def loaded_dit(path: str, lora: str | None, stream: int | None) -> Any:
    """The DiT at ``path`` with the LoRA file ``lora`` applied (strength 1) and ``stream`` resident blocks."""
    from ..dit import load_dit

    model = load_dit(path, device="cpu")
    if lora is not None:
        from ..lora import apply_loras, load_lora

        apply_loras(model, [(load_lora(lora), 1.0)])
    if stream is not None:
        from ..memory.streaming import enable_block_streaming

        enable_block_streaming(model, stream, device="cpu")
    return model


def worker(rank: int, world: int, port: int, spec_path: str, out: str) -> None:
    """One rank of a test job (see module docstring)."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from ..errors import ParallelError
    from ..parallel import ParallelLayout, ParallelRun, init_distributed, shutdown
    from ..pipeline import generate

    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    world_ctx = init_distributed("cpu", **spec.get("watchdog", {}))
    kill: dict[str, int] | None = None
    killed_at: list[float] = []

    def callback(step: int, total: int, x0: torch.Tensor) -> None:
        if kill is not None and step == kill["step"]:
            if rank == kill["rank"]:
                os.kill(os.getpid(), signal.SIGKILL)
            killed_at.append(time.monotonic())

    try:
        for mode in spec["modes"]:
            kill = mode.get("kill")
            world_ctx.a2a = mode.get("a2a", "auto")
            run = ParallelRun(world_ctx, ParallelLayout(mode.get("cfg_parallel", False), mode.get("sp", 1)))
            comms = [world_ctx.comm] + [c for c in (run.groups.cfg, run.groups.sp) if c is not None]
            for c in comms:
                c.sent_by_op.clear()
            common = {**spec["common"], **mode.get("generate", {})}
            if "lora" in mode or "stream" in mode:
                common["dit"] = loaded_dit(common["dit"], mode.get("lora"), mode.get("stream"))
            result = generate(**common, parallel=run, callback=callback)
            ops = ("all_to_all", "all_gather", "broadcast", "send")
            sent = [sum(c.sent_by_op.get(op, 0) for c in comms) for op in ops]
            all_sent = world_ctx.comm.all_gather(torch.tensor(sent, dtype=torch.int64))
            if rank == 0:
                torch.save(
                    {
                        "latent": result.latent,
                        "frames": result.frames,
                        "sent_bytes": [t.tolist() for t in all_sent],
                        "summary": result.summary,
                    },
                    Path(out) / f"{mode['name']}.pt",
                )
    except ParallelError as exc:
        elapsed = time.monotonic() - killed_at[0] if killed_at else None
        (Path(out) / f"error_{rank}.json").write_text(json.dumps({"error": str(exc), "seconds": elapsed}))
        shutdown(world_ctx, failed=exc)
        return
    shutdown(world_ctx)
