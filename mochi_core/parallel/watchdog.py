"""Find out which rank failed, and make sure no rank waits forever for it.

A collective whose peer has died either fails at once (gloo: the peer's sockets close) or blocks until the process
group's timeout (NCCL, or a peer that is alive but stuck). Neither says *which* rank is at fault. Each rank
therefore runs a :class:`Watchdog` thread that talks to the job's rendezvous store (the TCP store torchrun, or
rank 0, hosts at ``MASTER_ADDR:MASTER_PORT``, through its own client connection):

- every ``interval`` seconds it bumps its own heartbeat counter ``hb/<rank>``;
- it reads every peer's counter; a peer whose counter has not moved for ``stale_after`` seconds is declared
  gone ("stopped responding"), unless it has marked itself done (``done/<rank>``);
- a rank whose own work raised records ``fail/<rank>`` = the error message before it exits
  (:meth:`Watchdog.report_failure`), so its peers report the real cause; a rank that leaves because of another
  rank's failure records ``left/<rank>`` instead (:meth:`Watchdog.report_left`) and is not taken for the cause;
- a peer on the same machine (each rank records its host name and process id) whose process has exited or is a
  zombie is declared gone at once, without waiting for its heartbeat to go stale;
- a lost store connection is a failure of the store's host (rank 0, unless torchrun's agent hosts it).

When a peer is found gone or failed, the main thread is usually blocked in a collective. It gets ``grace``
seconds to fail on its own (then :meth:`Watchdog.explain` turns its backend error into a message naming the rank);
after that the watchdog writes the message to stderr and ends the process with exit status :data:`EXIT_PEER_FAILED`
(a thread cannot interrupt a blocked collective). So every rank stops within about
``stale_after + grace + interval`` seconds of a failure, whatever the backend's own timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EXIT_PEER_FAILED", "Watchdog"]

logger = logging.getLogger(__name__)

#: exit status of a rank ended by its watchdog because another rank failed
EXIT_PEER_FAILED = 4


class Watchdog:
    """Heartbeats and failure reports of ``rank`` among ``world`` ranks, through ``store`` (a c10d Store that this
    thread alone uses). ``store_host``: the rank whose process hosts the store (None: torchrun's agent)."""

    def __init__(
        self,
        store: Any,
        rank: int,
        world: int,
        *,
        store_host: int | None = 0,
        interval: float = 1.0,
        stale_after: float = 20.0,
        grace: float = 10.0,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.store, self.rank, self.world, self.store_host = store, rank, world, store_host
        self.interval, self.stale_after, self.grace = interval, stale_after, grace
        self._exit = exit_process
        self._stop = threading.Event()
        self._found = threading.Event()
        self._message: str | None = None
        self._done_main = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = 0
        self._seen: dict[int, tuple[str, float]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.store.set(f"hb/{self.rank}", "0")
        self.store.set(f"pid/{self.rank}", f"{socket.gethostname()} {os.getpid()}")
        now = time.monotonic()
        self._seen = {p: ("", now) for p in range(self.world) if p != self.rank}
        self._thread = threading.Thread(target=self._run, name=f"mochi-watchdog-{self.rank}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the run finished; call after :meth:`mark_done` and a final barrier)."""
        self._done_main.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)

    def mark_done(self) -> None:
        """This rank finished its work normally: peers must not count its silence as a failure."""
        self._set(f"done/{self.rank}", "1")

    def report_failure(self, message: str) -> None:
        """Record why this rank is stopping, for the peers' messages (best effort: the store may be gone)."""
        self._set(f"fail/{self.rank}", message[:2000])

    def report_left(self, message: str) -> None:
        """Record that this rank stops because another one failed (``message`` names that one)."""
        self._set(f"left/{self.rank}", message[:2000])

    # ------------------------------------------------------------------ queries
    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (the run ended normally or this rank reported its own failure)."""
        return self._stop.is_set()

    @property
    def failure(self) -> str | None:
        """The message naming the failed rank, once one is known."""
        return self._message

    def explain(self, error: BaseException | None = None, wait: float | None = None) -> str:
        """Why a collective failed: waits up to ``wait`` seconds (default ``stale_after`` + 2 intervals) for this
        watchdog to identify the failed rank; falls back to the backend's own error."""
        wait = self.stale_after + 2 * self.interval if wait is None else wait
        self._found.wait(timeout=wait)
        if self._message is not None:
            return self._message
        detail = f": {type(error).__name__}: {error}" if error is not None else ""
        return f"a collective operation failed on rank {self.rank} and no peer was seen failing{detail}"

    # ------------------------------------------------------------------ thread
    def _set(self, key: str, value: str) -> None:
        try:
            self.store.set(key, value)
        except Exception as exc:  # the store's host may be gone: nothing more to report to it
            logger.debug("watchdog: store.set(%s) failed: %s", key, exc)

    def _declare(self, message: str) -> None:
        if self._message is None:
            self._message = message
            logger.error("%s", message)
            self._found.set()

    def _check_peers(self) -> None:
        now = time.monotonic()
        secondary: str | None = None
        for peer, (last, since) in list(self._seen.items()):
            if self.store.check([f"done/{peer}"]):
                del self._seen[peer]
                continue
            if self.store.check([f"left/{peer}"]):  # stopped because of another rank: not the cause
                secondary = secondary or self.store.get(f"left/{peer}").decode("utf-8", "replace")
                continue
            if self.store.check([f"fail/{peer}"]):
                reason = self.store.get(f"fail/{peer}").decode("utf-8", "replace")
                self._declare(f"rank {peer} failed: {reason}")
                return
            exited = self._exited(peer)
            if exited:
                self._declare(f"rank {peer} {exited}; stopping rank {self.rank}")
                return
            value = self.store.get(f"hb/{peer}").decode() if self.store.check([f"hb/{peer}"]) else ""
            if value != last:
                self._seen[peer] = (value, now)
            elif now - since > self.stale_after:
                what = "never started" if value in ("", "0") and last == value else "stopped responding"
                self._declare(
                    f"rank {peer} {what}: no heartbeat for {now - since:.0f} s (the process was killed, crashed or "
                    f"hangs); stopping rank {self.rank}"
                )
                return
        if secondary is not None:
            self._declare(secondary)

    def _exited(self, peer: int) -> str | None:
        """How a peer on this machine ended ("exited", "was killed"), or None (alive, elsewhere or unknown)."""
        if not self.store.check([f"pid/{peer}"]):
            return None
        host, _, pid = self.store.get(f"pid/{peer}").decode().rpartition(" ")
        if host != socket.gethostname() or not pid.isdigit() or not Path("/proc/self/stat").exists():
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return f"(process {pid}) has exited"
        except OSError:
            return None
        state = stat.rpartition(")")[2].split()[:1]
        return f"(process {pid}) has exited" if state == ["Z"] else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat += 1
                self.store.set(f"hb/{self.rank}", str(self._beat))
                self._check_peers()
            except Exception as exc:  # lost the store: its host process is gone
                host = "torchrun's agent" if self.store_host is None else f"rank {self.store_host}"
                if self.store_host is not None and self.store_host != self.rank:
                    self._declare(
                        f"rank {self.store_host} stopped responding: lost the connection to the rendezvous store it "
                        f"hosts ({type(exc).__name__}: {exc}); stopping rank {self.rank}"
                    )
                else:
                    self._declare(f"lost the connection to the rendezvous store of {host} ({exc})")
            if self._message is not None:
                break
            self._stop.wait(self.interval)
        if self._message is None or self._done_main.is_set():
            return
        # a peer failed: give the main thread time to fail on its own, then end this process
        if self._done_main.wait(self.grace) or self._stop.is_set():
            return
        sys.stderr.write(f"error: {self._message} (rank {self.rank} ended by its watchdog)\n")
        sys.stderr.flush()
        self._exit(EXIT_PEER_FAILED)
