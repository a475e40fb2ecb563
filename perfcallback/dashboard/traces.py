"""Analyse a run's profiler captures for the trace pane, and compare two captures.

Design notes:
- Only :func:`perfcallback.trace.analyze_path`, :class:`~perfcallback.trace.TraceError` and
  :func:`perfcallback.trace.diff.diff_analyses` are used, through their ``to_dict()`` results: the
  same figures as ``perfcallback analyze --json`` and ``perfcallback diff --json``, so the pane
  and the CLI cannot disagree, and the trace package can change inside without breaking us.
- Traces run to hundreds of MB, so results are cached by capture folder, keyed on every file's
  size and mtime (a capture that is rewritten is analysed again), in a small bounded LRU; a lock
  per process keeps two browser tabs from analysing the same capture at once.
- CPU-only captures are analysed too (``require_gpu=False``): their GPU figures are ``None`` and
  the notes say why. A bad file is skipped and named; a capture with no usable file gives an
  error message for the pane, never an exception to TensorBoard.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from perfcallback.dashboard.files import Capture
from perfcallback.trace import TraceAnalysis, TraceError, analyze_path
from perfcallback.trace.diff import diff_analyses

logger = logging.getLogger(__name__)

_CACHE_SIZE = 8  # analysed captures kept in memory (an analysis holds tables, not events)
_Key = tuple[str, tuple[tuple[str, int, float], ...]]


class TraceCache:
    """Bounded cache of capture analyses; ``analysis(capture)`` returns ``(analysis, error)``."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._items: collections.OrderedDict[_Key, tuple[TraceAnalysis | None, str | None]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def analysis(self, capture: Capture) -> tuple[TraceAnalysis | None, str | None]:
        key = _key(capture)
        with self._lock:  # NOTE: held while analysing, so a second request waits and reuses it
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            result = _analyze(capture)
            self._items[key] = result
            while len(self._items) > self._size:
                self._items.popitem(last=False)
            return result


def _key(capture: Capture) -> _Key:
    files = []
    for name in capture.files:
        try:
            st = (capture.path / name).stat()
            files.append((name, st.st_size, st.st_mtime))
        except OSError:
            files.append((name, -1, 0.0))
    return str(capture.path), tuple(files)


def _analyze(capture: Capture) -> tuple[TraceAnalysis | None, str | None]:
    try:
        return analyze_path(capture.path, skip_bad=True, require_gpu=False), None
    except TraceError as exc:
        return None, str(exc)
    except (OSError, MemoryError, RecursionError) as exc:
        logger.warning("perfcallback dashboard: analysing %s failed: %r", capture.path, exc)
        return None, f"could not analyse {capture.name}: {exc!r}"


def capture_view(cache: TraceCache, capture: Capture) -> dict[str, Any]:
    """The trace pane's data for one capture: the analysis (CLI ``--json`` shape) or an error."""
    analysis, error = cache.analysis(capture)
    return {"capture": capture.to_dict(), "error": error,
            "analysis": None if analysis is None else analysis.to_dict()}


def diff_view(cache: TraceCache, a: Capture, b: Capture) -> dict[str, Any]:
    """``perfcallback diff`` of capture ``b`` against baseline ``a`` (its ``--json`` shape)."""
    analysis_a, error_a = cache.analysis(a)
    analysis_b, error_b = cache.analysis(b)
    if analysis_a is None or analysis_b is None:
        return {"error": error_a or error_b, "diff": None}
    return {"error": None, "diff": diff_analyses(analysis_a, analysis_b).to_dict()}
