"""Offline analysis of PyTorch profiler (Kineto) traces, shared by the live engine and the CLI.

``analyze_path(path)`` reads a trace file or a folder of per-rank files and returns a
:class:`TraceAnalysis` whose figures follow HolisticTraceAnalysis' definitions;
:func:`perfcallback.trace.window.recommend` turns it into
:class:`~perfcallback.report.Recommendation` objects through the same rule engine as live
training; :func:`perfcallback.trace.diff.diff_analyses` compares two runs. Bad input raises
:class:`TraceError`. Module map: ``parse`` (decoding, streaming) -> ``events`` (columns) ->
``load`` (files, ranks) -> ``steps`` / ``kernels`` / ``intervals`` -> ``analysis`` -> ``window``
(rules), ``diff``, ``render`` (text).
"""

from __future__ import annotations

from pathlib import Path

from perfcallback._record import replace
from perfcallback.trace.analysis import (
    RankAnalysis,
    TraceAnalysis,
    analyze,
    analyze_rank,
    combine,
)
from perfcallback.trace.errors import TraceError
from perfcallback.trace.load import (
    FileProgress,
    TraceSet,
    assign_ranks,
    find_trace_files,
    load_each,
    load_rank_trace,
    load_trace_set,
)
from perfcallback.trace.parse import DEFAULT_LIMITS, TraceLimits
from perfcallback.trace.steps import StepRange, parse_steps

__all__ = [
    "RankAnalysis",
    "TraceAnalysis",
    "TraceError",
    "TraceLimits",
    "TraceSet",
    "analyze",
    "analyze_path",
    "analyze_rank",
    "find_trace_files",
    "load_rank_trace",
    "load_trace_set",
    "parse_steps",
]


def analyze_path(
    path: str | Path,
    *,
    steps: StepRange | None = None,
    skip_bad: bool = False,
    require_gpu: bool = True,
    progress: FileProgress | None = None,
    limits: TraceLimits = DEFAULT_LIMITS,
    operators: bool = True,
) -> TraceAnalysis:
    """Load and analyse the trace(s) at ``path``, one file at a time.

    Each file is reduced to its :class:`RankAnalysis` before the next is read, so memory is
    bounded by the largest file (see :class:`~perfcallback.trace.parse.TraceLimits`), not by
    the number of ranks.

    Args:
        path: A ``.json``/``.json.gz`` trace, a folder of per-rank traces, or a log folder.
        steps: ``(a, b)``: analyse ``ProfilerStep#a`` up to, not including, ``#b``; default:
            every step but the last, as HolisticTraceAnalysis does.
        skip_bad: Leave out bad files (listed in ``TraceAnalysis.skipped``) instead of raising.
        require_gpu: Treat a trace without GPU events as bad; ``False`` analyses its host side
            and reports the GPU figures as ``None``.
        progress: Called as ``(file name, bytes read, file size)`` while reading.
        limits: Size caps per file; the default bounds memory on any input.
        operators: Compute each rank's operator table; ``False`` leaves it empty and saves
            about a third of the analysis on traces with many CPU operators.

    Raises:
        TraceError: Bad input (see :func:`perfcallback.trace.load.load_trace_set`).
    """
    analysed, skipped, notes = load_each(
        path, lambda rt: analyze_rank(rt, steps, operators=operators), skip_bad=skip_bad,
        require_gpu=require_gpu, progress=progress, limits=limits, operators=operators)
    if len(analysed) == 1 and analysed[0].rank < 0:  # a lone trace without a rank: rank 0
        analysed[0] = replace(analysed[0], rank=0)
    ranks = assign_ranks(Path(path), analysed)
    return combine(ranks, source=str(path), skipped=skipped, notes=notes)
