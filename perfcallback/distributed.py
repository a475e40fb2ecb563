"""Ranks under torch.distributed, and the cross-rank exchange of window summaries.

This is the one module that talks to other ranks. It uses no collective at all: every rank writes
its latest :class:`~perfcallback.ranks.RankSummary` (a fixed 198 bytes) under its own key of the
job's c10d Store (the rendezvous store ``init_process_group`` already created), and rank zero reads
them. Both happen on a daemon thread, so the training thread only hands over a summary once per
window and reads rank zero's latest comparison: its cost does not depend on the world size, and no
perfcallback frame on any rank can wait for another rank.

Design notes:
- **Why the Store, not a collective.** A collective needs every rank to take part; a rank that
  finished its data early, raised, or was killed would leave the others waiting. Store keys are
  independent: a key that is not there is simply a missing rank. Each rank overwrites one key, so
  the store holds ``world_size`` payloads whatever the run's length.
- **Read a window later.** Rank zero's thread polls the keys; the comparison it builds is joined
  into rank zero's next window, never the one being published.
- **Missing after a timeout.** A rank whose payload has not changed for ``timeout_s`` (and that did
  not say it finished) is reported as missing; so is one never heard from after ``timeout_s``.
- **Bounded shutdown.** At close, rank zero waits at most ``close_wait_s`` for the others' final
  summaries; every thread is a daemon and is joined with a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from typing import Any

import torch

from perfcallback.ranks import CrossRank, RankSummary, StragglerHistory, compare_ranks

logger = logging.getLogger("perfcallback")

_POLL_S = 0.5  # rank zero's reader looks at the store this often (longer for large jobs)
_POLL_RANKS = 128  # above this many ranks the poll interval grows in proportion
_sessions = itertools.count()  # monitors created in this process: one key space each


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def default_store() -> Any:
    """The default process group's c10d Store, or ``None`` (not initialised, or not exposed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:  # private since torch 1.x, still the way to reach the rendezvous store
        return dist.distributed_c10d._get_default_store()
    except Exception:  # any failure means "no exchange", said once by the caller
        return None


class RankExchange:
    """Publishes this rank's summaries and, on rank zero, gathers and compares everyone's.

    Args:
        store: A c10d Store shared by the ranks (:func:`default_store`).
        rank: This rank.
        world_size: Ranks in the job.
        timeout_s: A rank silent for this long is missing.
        close_wait_s: At close, how long rank zero waits for the others' final summaries.
        prefix: Key space; ranks must use the same one (the n-th monitor of each process).
    """

    def __init__(
        self,
        store: Any,
        rank: int,
        world_size: int,
        *,
        timeout_s: float = 60.0,
        close_wait_s: float = 5.0,
        prefix: str | None = None,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.timeout_s, self.close_wait_s = timeout_s, close_wait_s
        self._store = store
        self._prefix = prefix if prefix is not None else f"perfcallback/{next(_sessions)}"
        self._keys = [self._key(r) for r in range(world_size)]
        self._outbox: queue.Queue[bytes] = queue.Queue(maxsize=1)
        self._history = StragglerHistory()
        self._seen: dict[int, tuple[bytes, float]] = {}  # rank -> (payload, when it changed)
        self._started = time.monotonic()
        self.latest: CrossRank | None = None  # rank zero: the comparison, replaced whole
        self._poll_s = _POLL_S * max(1.0, world_size / _POLL_RANKS)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._failed: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"perfcallback-rank-exchange-{rank}", daemon=True
        )
        self._thread.start()

    def _key(self, rank: int) -> str:
        return f"{self._prefix}/rank{rank}"

    # ----------------------------------------------------------------- training thread
    def publish(self, summary: RankSummary) -> None:
        """Hand this rank's latest summary to the exchange thread (never blocks)."""
        payload = summary.pack()
        with contextlib.suppress(queue.Empty):
            self._outbox.get_nowait()  # only the newest summary matters
        try:
            self._outbox.put_nowait(payload)
        except queue.Full:  # the thread took the slot in between: drop this one, next window wins
            return
        self._wake.set()

    def close(self, final: RankSummary | None) -> CrossRank | None:
        """Send ``final`` (marked finished), gather the others' for at most ``close_wait_s`` on
        rank zero, stop the thread. Returns rank zero's last comparison."""
        if final is not None:
            self.publish(final)
        deadline = time.monotonic() + (self.close_wait_s if self.rank == 0 else 1.0)
        while time.monotonic() < deadline and self._thread.is_alive():
            self._wake.set()
            if self._outbox.empty() and (self.rank != 0 or self._all_final()):
                break
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)
        if self.rank == 0 and self._failed is None:
            self._safely(self._read_all)  # the final figures, as complete as they got
        return self.latest

    # ----------------------------------------------------------------- exchange thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._poll_s)
            self._wake.clear()
            if not self._safely(self._send_pending):
                return
            if self.rank == 0 and not self._safely(self._read_all):
                return
        self._safely(self._send_pending)

    def _safely(self, fn: Any) -> bool:
        if self._failed is not None:
            return False
        try:
            fn()
            return True
        except Exception as exc:  # a broken store (rank zero gone, timeout): exchange off
            self._failed = f"{type(exc).__name__}: {exc}"
            logger.warning("perfcallback: cross-rank exchange stopped on rank %d (%s); each "
                           "rank goes on measuring itself", self.rank, self._failed)
            return False

    def _send_pending(self) -> None:
        try:
            payload = self._outbox.get_nowait()
        except queue.Empty:
            return
        self._store.set(self._key(self.rank), payload)

    def _read_all(self) -> None:
        now = time.monotonic()
        changed = False
        for rank, value in self._fetch().items():
            old = self._seen.get(rank)
            if old is None or old[0] != value:
                self._seen[rank] = (value, now)
                changed = True
        if not changed and self.latest is not None and not self._may_go_missing(now):
            return  # nothing new: keep the comparison (its cost is O(world size))
        summaries: dict[int, RankSummary] = {}
        missing = []
        for rank in range(self.world_size):
            seen = self._seen.get(rank)
            summary = RankSummary.unpack(seen[0]) if seen else None
            silent_s = now - (seen[1] if seen else self._started)
            if summary is not None:
                summaries[rank] = summary
            if silent_s > self.timeout_s and (summary is None or not summary.finished):
                missing.append(rank)
        self.latest = compare_ranks(self.world_size, summaries, tuple(missing), self._history)

    def _may_go_missing(self, now: float) -> bool:
        """Some rank's silence may have just passed the timeout (the comparison must say so)."""
        oldest = min((t for _, t in self._seen.values()), default=self._started)
        return now - oldest > self.timeout_s or len(self._seen) < self.world_size

    def _fetch(self) -> dict[int, bytes]:
        """Every rank's payload that is in the store (one round trip when all are)."""
        store = self._store
        if store.check(self._keys):
            return dict(enumerate(store.multi_get(self._keys)))
        return {r: store.get(k) for r, k in enumerate(self._keys) if store.check([k])}

    def _all_final(self) -> bool:
        latest = self.latest
        if latest is None:
            return False
        done = sum(1 for s in latest.ranks.values() if s.finished)
        return done + len(latest.missing) >= self.world_size
