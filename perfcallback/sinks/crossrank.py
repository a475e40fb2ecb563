"""CrossRankSink: hands each window's summary to the cross-rank exchange, and rank zero's
comparison back to the windows that follow.

A sink because it runs exactly where every other output runs: once per window, behind the
session's fail-open, never per step. Its per-window work on the training thread is building one
fixed-size summary and one queue hand-over, whatever the world size.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from perfcallback.ranks import CrossRank, RankSummary
from perfcallback.sinks import Sink
from perfcallback.stats import PHASE_NAMES, WindowStats

if TYPE_CHECKING:
    from perfcallback.distributed import RankExchange
    from perfcallback.recorder import StepRecorder


class CrossRankSink(Sink):
    """Publishes this rank's windows; on rank zero, feeds the comparison into later windows.

    Args:
        exchange: The job's :class:`~perfcallback.distributed.RankExchange`.
        recorder: This rank's recorder (whole-run totals, profiled steps).
    """

    failopen_name = "cross_rank"

    def __init__(self, exchange: RankExchange, recorder: StepRecorder) -> None:
        self._exchange, self._rec = exchange, recorder
        self._windows = 0
        self._last: WindowStats | None = None
        self._closed = False
        self.final: CrossRank | None = None

    def on_window(self, stats: WindowStats) -> None:
        self._windows += 1
        self._last = stats
        self._exchange.publish(self.summary(stats))

    def close(self) -> None:
        """Send the final summary (whole run, marked finished) and, on rank zero, gather."""
        if self._closed:
            return
        self._closed = True
        latest = self._rec.window()
        final = self.summary(latest, finished=True) if latest is not None else None
        self.final = self._exchange.close(final)

    def window_fields(self) -> Mapping[str, Any]:
        """The ``cross_rank`` field of this rank's next window (rank zero only)."""
        latest = self._exchange.latest
        return {"cross_rank": latest} if latest is not None else {}

    def summary(self, stats: WindowStats, *, finished: bool = False) -> RankSummary:
        totals = self._rec.totals
        n = totals.steps or 1
        memory = max(stats.cuda_peak_allocated_bytes or 0.0, stats.host_rss_bytes or 0.0)
        return RankSummary(
            rank=self._exchange.rank,
            window=self._windows,
            first_step=stats.first_step,
            last_step=stats.last_step,
            steps=stats.steps,
            step_s=stats.step_s,
            step_p50_s=stats.step_p50_s,
            step_p90_s=stats.step_p90_s,
            phase_s=tuple(stats.phase_s[p] for p in PHASE_NAMES),
            comm_exposed_s=stats.comm_exposed_s,
            comm_floor_s=stats.comm_floor_s,
            memory_peak_bytes=memory,
            run_steps=totals.steps,
            run_phase_s=tuple(x / n for x in totals.phase_s),
            run_step_s=totals.step_s / n,
            run_comm_exposed_s=totals.comm_exposed_s / n,
            last_capture_step=self._rec.last_profiled_step,
            finished=finished,
            sent_at=time.time(),
        )
