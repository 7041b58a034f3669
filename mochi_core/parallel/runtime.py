"""Process-group setup for runs started by ``torchrun`` (or any launcher that sets the ``env://`` variables).

:func:`init_distributed` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``, picks the backend from the device (``cpu``: gloo; ``cuda``: NCCL with ``cuda:LOCAL_RANK``, one GPU
per local rank), starts the process group with a timeout and the :class:`~mochi_core.parallel.watchdog.Watchdog`,
and returns a :class:`DistWorld`. :meth:`DistWorld.model_groups` builds the CFG and sequence groups of a
:class:`~mochi_core.parallel.layout.ParallelLayout`. :func:`shutdown` ends the run cleanly (all ranks mark
themselves done, meet at a barrier, and destroy the group); :meth:`DistWorld.failed` records this rank's error for
its peers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import InvalidInputError, ParallelError
from .comm import Comm
from .layout import ParallelLayout
from .watchdog import EXIT_PEER_FAILED, Watchdog

__all__ = ["DistWorld", "ModelGroups", "init_distributed", "launched_world_size", "shutdown"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0


def launched_world_size() -> int:
    """``WORLD_SIZE`` of this process (1 when not started by torchrun or another ``env://`` launcher)."""
    return _env_int("WORLD_SIZE", 1)


def _env(name: str, default: str | None = None) -> str:
    """The launcher's environment variable ``name`` (``default`` when unset; refused when unset without one)."""
    value = os.environ.get(name, default)
    if value is None:
        raise InvalidInputError(f"{name} is not set: start multi-process runs with torchrun")
    return value


def _env_int(name: str, default: int) -> int:
    value = _env(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"{name}={value!r} is not an integer (set by torchrun)") from None


@dataclass(frozen=True)
class ModelGroups:
    """The groups of one layout, seen from this rank: ``cfg`` (the 2 ranks with the same sequence index; None
    without CFG-parallel), ``sp`` (this rank's sequence group; None when sp == 1), ``model`` (all ranks computing
    this video); ``cfg_index`` / ``sp_index`` of this rank."""

    layout: ParallelLayout
    cfg_index: int
    sp_index: int
    cfg: Comm | None
    sp: Comm | None
    model: Comm


@dataclass
class DistWorld:
    """This rank's view of the job: ``rank`` / ``world`` / ``local_rank``, the compute ``device``, the ``backend``,
    ``comm`` over all ranks and the ``watchdog``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    timeout: timedelta
    watchdog: Watchdog
    comm: Comm
    a2a: str = "auto"
    _groups: dict[tuple[ParallelLayout, str], ModelGroups] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def model_groups(self, layout: ParallelLayout) -> ModelGroups:
        """The CFG / sequence groups of ``layout`` (created once, by every rank in the same order)."""
        key = (layout, self.a2a)
        if key in self._groups:
            return self._groups[key]
        layout.check_world(self.world)
        cfg_comm = sp_comm = None
        for s in range(layout.sp) if layout.cfg_parallel else ():
            ranks = [c * layout.sp + s for c in range(layout.cfg)]
            comm = self._group(ranks)
            if self.rank in ranks:
                cfg_comm = comm
        for c in range(layout.cfg) if layout.sp > 1 else ():
            ranks = [c * layout.sp + s for s in range(layout.sp)]
            comm = self._group(ranks)
            if self.rank in ranks:
                sp_comm = comm
        cfg_index, sp_index = layout.coords(self.rank)
        groups = ModelGroups(layout, cfg_index, sp_index, cfg_comm, sp_comm, self.comm)
        self._groups[key] = groups
        return groups

    def _group(self, ranks: list[int]) -> Comm | None:
        group = dist.new_group(ranks=ranks, timeout=self.timeout)
        return Comm(group, ranks, self.watchdog, a2a=self.a2a) if self.rank in ranks else None

    def failed(self, exc: BaseException) -> None:
        """Record that this rank stops because of ``exc`` (peers then report it, naming this rank)."""
        if isinstance(exc, ParallelError):  # another rank's failure: say so, naming it, without taking the blame
            self.watchdog.report_left(str(exc))
        else:
            self.watchdog.report_failure(f"{type(exc).__name__}: {exc}")


def init_distributed(
    device: str | torch.device = "cpu",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    heartbeat_s: float = 1.0,
    stale_after_s: float = 20.0,
    grace_s: float = 10.0,
    a2a: str = "auto",
) -> DistWorld:
    """Join the job described by the ``env://`` variables (see module docstring) and start the watchdog.

    ``device``: "cpu" (gloo) or "cuda" (NCCL; this rank uses ``cuda:LOCAL_RANK``; an explicit index is refused when
    several ranks share the machine). ``timeout_s``: the process groups' timeout (a collective waits at most this
    long for a slow but living peer); ``stale_after_s`` / ``grace_s``: the watchdog's limits for a dead one.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    dev = torch.device(device)
    if dev.type == "cpu":
        backend = "gloo"
    elif dev.type == "cuda":
        if dev.index is not None and local_world > 1:
            raise InvalidInputError(
                f"--device {dev} names one GPU, but {local_world} ranks run on this machine: use --device cuda "
                "(each rank takes the GPU of its local rank)"
            )
        count = torch.cuda.device_count()
        if local_world > count:
            raise InvalidInputError(
                f"{local_world} ranks on this machine but only {count} CUDA device(s): one GPU per local rank is "
                f"needed (torchrun --nproc-per-node {count} at most, or --device cpu)"
            )
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        raise InvalidInputError(f"multi-process runs support --device cpu (gloo) or cuda (NCCL), not {dev.type!r}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        _env(name)
    timeout = timedelta(seconds=float(timeout_s))
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=dev if backend == "nccl" else None,
        )
    except (RuntimeError, ValueError) as exc:
        raise ParallelError(f"rank {rank}: could not join the {world}-rank process group ({exc})") from exc
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    prefix = f"mochi-watchdog/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=max(5.0, stale_after_s / 2)),
        wait_for_workers=False,
    )
    watchdog = Watchdog(
        dist.PrefixStore(prefix, client),
        rank,
        world,
        store_host=None if agent_store else 0,
        interval=heartbeat_s,
        stale_after=stale_after_s,
        grace=grace_s,
    )
    watchdog.start()
    _stop_on_sigterm(watchdog, rank)
    comm = Comm(None, list(range(world)), watchdog, a2a=a2a)
    logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank, world, local_rank, dev, backend)
    return DistWorld(rank, world, local_rank, dev, backend, timeout, watchdog, comm, a2a)


def _stop_on_sigterm(watchdog: Watchdog, rank: int) -> None:
    """When torchrun stops this worker (SIGTERM, sent to the others when one worker fails), say which rank failed
    before leaving, as the watchdog would have a moment later. Installed only over the default handler, from the
    main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        reason = watchdog.failure or (watchdog.explain(wait=2.0) if not watchdog.stopped else None)
        if reason is not None and watchdog.failure is not None:
            sys.stderr.write(f"error: {reason} (rank {rank} stopped by the launcher)\n")
            code = EXIT_PEER_FAILED
        else:
            sys.stderr.write(f"rank {rank} stopped by the launcher (SIGTERM)\n")
            code = 128 + signal.SIGTERM
        sys.stderr.flush()
        os._exit(code)

    signal.signal(signal.SIGTERM, on_sigterm)


def shutdown(world: DistWorld, *, failed: BaseException | None = None) -> None:
    """End the run: on success every rank marks itself done and meets the others at a barrier before the group is
    destroyed; after a failure this rank reports it and leaves without waiting for peers."""
    if failed is not None:
        world.failed(failed)
        world.watchdog.stop()
        if world.backend == "gloo":
            dist.destroy_process_group()
        return
    world.watchdog.mark_done()
    try:
        world.comm.barrier()
    finally:
        world.watchdog.stop()
    dist.destroy_process_group()
