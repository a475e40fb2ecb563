"""The live engine's entry to trace analysis: the figures of one finished profiler capture.

The monitor captures a few steps with ``torch.profiler``; once the trace file is written, these
figures (GPU busy/idle, communication overlap, launch statistics, host syncs, copies: the
``WindowStats.extra`` keys of :data:`perfcallback.stats.EXTRA_KEYS`) are joined into the following
windows, so rules that need kernel-level evidence can run during training.
"""

from __future__ import annotations

from pathlib import Path

from perfcallback.trace.analysis import analyze_rank
from perfcallback.trace.load import load_rank_trace
from perfcallback.trace.window import window_stats


def capture_figures(path: str | Path) -> dict[str, float]:
    """``WindowStats.extra`` figures of the trace at ``path``; empty for a host-only trace.

    Raises:
        TraceError: the file is unreadable or not a Kineto trace.
    """
    rank = analyze_rank(load_rank_trace(path, operators=False), operators=False)  # rules skip them
    return dict(window_stats(rank).extra)
