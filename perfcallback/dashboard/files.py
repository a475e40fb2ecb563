"""The run's files the dashboard reads: its folder, ``perf_report.json`` and profiler captures.

Design notes:
- Every path comes from a request, so every path is resolved and checked to lie inside the
  TensorBoard logdir before anything is opened; a name that escapes it is refused, never followed.
- A capture is a folder under ``<run>/profiler/`` holding ``*.pt.trace.json[.gz]`` files (the layout
  torch-tb-profiler also reads, so both plugins see the same runs). Nothing here parses a trace:
  that is :mod:`perfcallback.dashboard.traces`' job, through :mod:`perfcallback.trace`.
- Problems are returned as messages for the pane (a missing or corrupt report is a normal state of
  a run that is still starting or was killed), not raised as server errors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perfcallback._record import record

REPORT_FILE = "perf_report.json"
PROFILER_DIR = "profiler"
TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")
_MAX_REPORT_BYTES = 16 * 2**20  # a report is a few KB; anything this big is not ours
_MAX_CAPTURES = 200  # bounded listing: retention keeps ~10, a hand-made folder may hold more


class UnsafePathError(ValueError):
    """A requested run or file lies outside the logdir (or does not name one of its parts)."""


@record
class Capture:
    """One profiler capture folder of a run and its trace files (names relative to it)."""

    name: str
    path: Path
    files: tuple[str, ...]
    size_bytes: int
    mtime: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": list(self.files), "size_bytes": self.size_bytes,
                "mtime": self.mtime}


def run_dir(logdir: str | os.PathLike[str], run: str) -> Path:
    """The folder of TensorBoard run ``run`` (``"."`` is the logdir itself).

    Raises:
        UnsafePathError: ``logdir`` is empty or ``run`` resolves outside it.
    """
    if not os.fspath(logdir):
        raise UnsafePathError("TensorBoard was started without a single --logdir")
    return inside(Path(logdir), run)


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, resolved, refusing absolute names and anything outside ``root``."""
    if not isinstance(relative, str) or "\x00" in relative or os.path.isabs(relative):
        raise UnsafePathError(f"not a relative name: {relative!r}")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{relative!r} is outside {root}")
    return target


def read_report(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``perf_report.json`` of a run as a dict, or ``None`` and why not (missing, too big, bad)."""
    path = folder / REPORT_FILE
    try:
        if path.stat().st_size > _MAX_REPORT_BYTES:
            return None, f"{REPORT_FILE} is larger than {_MAX_REPORT_BYTES >> 20} MiB; not read"
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {REPORT_FILE} yet (it is written when the monitor exits)"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{REPORT_FILE} could not be read: {exc}"
    if not isinstance(data, dict):
        return None, f"{REPORT_FILE} does not hold a JSON object"
    return data, None


def list_captures(folder: Path) -> list[Capture]:
    """The run's profiler captures, oldest first (their names start with the step number)."""
    profiler = folder / PROFILER_DIR
    try:
        entries = sorted(p for p in profiler.iterdir() if p.is_dir())
    except OSError:  # no profiler folder: a run without captures
        return []
    out = []
    for entry in entries[:_MAX_CAPTURES]:
        capture = _capture(entry)
        if capture is not None:
            out.append(capture)
    return out


def _capture(entry: Path) -> Capture | None:
    files, size, mtime = [], 0, 0.0
    try:
        for f in sorted(entry.iterdir()):
            if f.name.endswith(TRACE_SUFFIXES) and f.is_file():
                st = f.stat()
                files.append(f.name)
                size, mtime = size + st.st_size, max(mtime, st.st_mtime)
    except OSError:
        return None
    if not files:
        return None
    return Capture(name=entry.name, path=entry, files=tuple(files), size_bytes=size, mtime=mtime)


def find_capture(folder: Path, name: str) -> Capture:
    """The capture ``name`` of a run.

    Raises:
        UnsafePathError: no such capture (or the name escapes the profiler folder).
    """
    for capture in list_captures(folder):
        if capture.name == name:
            return capture
    raise UnsafePathError(f"no profiler capture {name!r} in this run")


def trace_file(folder: Path, capture: str, name: str) -> Path:
    """A trace file of a capture, only if it is one the listing shows (so nothing else is served).

    Raises:
        UnsafePathError: not a listed trace file of that capture.
    """
    found = find_capture(folder, capture)
    if name not in found.files:
        raise UnsafePathError(f"no trace file {name!r} in capture {capture!r}")
    return found.path / name
