"""Find the trace files of a run and load them as ``{rank: RankTrace}`` (a :class:`TraceSet`).

A path is one trace file, or a folder of per-rank files (HTA's layout), or a log folder whose
subfolders hold captures (``<logdir>/profiler/<capture>/*.pt.trace.json.gz``, as perfcallback and
``torch.profiler.tensorboard_trace_handler`` write them): then the newest capture is loaded.
The rank of a file comes from its ``distributedInfo.rank``, else from a ``rank-N`` / ``rank_N`` /
``rankN`` in its name. Files that disagree on the world size, or claim the same rank, are mixed
runs and are refused. With ``skip_bad=True`` a bad file is reported in ``TraceSet.skipped`` and
the others are still loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from perfcallback._record import record
from perfcallback.trace.errors import TraceError
from perfcallback.trace.events import RankTrace, build_rank_trace
from perfcallback.trace.parse import (
    CHUNK_BYTES,
    DEFAULT_LIMITS,
    Event,
    Metadata,
    TraceLimits,
    iter_trace,
)

TRACE_SUFFIXES: tuple[str, ...] = (".json", ".json.gz")
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)

FileProgress = Callable[[str, int, int], None]  # (file name, bytes read, file size)


@record
class TraceSet:
    """The loaded traces of one run.

    Attributes:
        source: The path given.
        ranks: One reduced trace per rank.
        skipped: ``"path: problem"`` for each file left out (``skip_bad=True``).
        notes: What the loader decided for the user (e.g. which capture it picked).
    """

    source: str
    ranks: dict[int, RankTrace]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def find_trace_files(path: str | Path) -> tuple[list[Path], list[str]]:
    """The trace files ``path`` stands for, and notes on the choice made.

    Raises:
        TraceError: ``path`` does not exist, is not a regular file or folder, cannot be listed,
            or holds no trace file.
    """
    p = Path(path)
    try:
        return _find(p)
    except OSError as exc:  # an unreadable folder, or one that vanished while listed
        where = exc.filename if isinstance(exc.filename, str) else p
        raise TraceError(where, f"cannot read it ({exc.strerror or exc})") from None


def _find(p: Path) -> tuple[list[Path], list[str]]:
    if not p.exists():
        raise TraceError(p, "no such file or folder")
    if p.is_file():
        return [p], []
    if not p.is_dir():  # /dev/zero, a FIFO, a socket: reading it would never end or block
        raise TraceError(p, "not a regular file or folder (a device, FIFO or socket)")
    direct = sorted(f for f in p.iterdir() if _is_trace(f))
    if direct:
        return direct, []
    sets: dict[Path, list[Path]] = {}
    for f in p.rglob("*"):
        if _is_trace(f):
            sets.setdefault(f.parent, []).append(f)
    if not sets:
        raise TraceError(p, "no trace files (*.json, *.json.gz) in this folder or below it")
    newest = max(sets, key=lambda d: max(f.stat().st_mtime for f in sets[d]))
    notes = []
    if len(sets) > 1:
        notes.append(f"{len(sets)} trace folders under {p}; analysing the newest, {newest} "
                     "(pass a folder to choose another)")
    return sorted(sets[newest]), notes


def _is_trace(f: Path) -> bool:
    # perfcallback's own report files sit beside the traces in a run's log folder
    report = f.name.startswith("perf_report") and f.name.endswith(".json")
    return f.name.endswith(TRACE_SUFFIXES) and not report and f.is_file()


def load_rank_trace(
    path: str | Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    progress: FileProgress | None = None,
    limits: TraceLimits = DEFAULT_LIMITS,
    operators: bool = True,
) -> RankTrace:
    """Read one trace file into a :class:`RankTrace` (rank from metadata or file name);
    ``operators=False`` leaves out the ``op_*`` columns, which only the operator table reads.

    Raises:
        TraceError: The file is unreadable, corrupt, truncated, or not a Kineto trace.
    """
    path = Path(path)
    meta: list[Metadata] = []

    def batches() -> Iterator[list[Event]]:
        on_chunk = None
        if progress is not None:
            on_chunk = lambda done, size: progress(path.name, done, size)  # noqa: E731
        for item in iter_trace(path, chunk_bytes=chunk_bytes, progress=on_chunk, limits=limits):
            if isinstance(item, Metadata):
                meta.append(item)
            else:
                yield item
            del item  # NOTE: free this batch before the next one is decoded

    rt = build_rank_trace(str(path), batches(), limits, operators=operators)
    if rt.cpu_events == 0 and len(rt.gpu_ts) == 0 and rt.profiler_ranges == 0:
        if rt.dropped:
            raise TraceError(path, "no plausible events: every complete event has "
                                   + dropped_text(rt.dropped))
        raise TraceError(path, "JSON, but not a Kineto trace: no complete events (ph 'X' with "
                               "ts, dur and cat)")
    _apply_metadata(rt, meta[0] if meta else None, path)
    return rt


def dropped_text(dropped: dict[str, int]) -> str:
    """``{"negative duration": 3}`` as ``"a negative duration (3 events)"``."""
    return " or ".join(f"a {why} ({n:,} event{'s' if n != 1 else ''})"
                       for why, n in sorted(dropped.items()))


def _apply_metadata(rt: RankTrace, meta: Metadata | None, path: Path) -> None:
    dist = meta.distributed_info if meta is not None else None
    rank = dist.get("rank") if dist else None
    if not isinstance(rank, int):
        match = _RANK_IN_NAME.search(path.name)
        rank = int(match.group(1)) if match else None
    rt.rank = rank if rank is not None else -1  # -1: unknown, resolved by load_trace_set
    world = dist.get("world_size") if dist else None
    rt.world_size = world if isinstance(world, int) else None
    props = meta.device_properties if meta is not None else None
    if props and isinstance(props[0], dict) and isinstance(props[0].get("name"), str):
        rt.device_name = props[0]["name"]


def no_gpu_problem(rt: RankTrace) -> str:
    """Why a trace without GPU activity cannot be analysed on the GPU side."""
    if rt.profiler_ranges:
        return ("no GPU kernel timings: the trace holds CUPTI range-profiler counters "
                "(cuda_profiler_range) only")
    return ("no GPU events (kernels, memory copies or sets): profile with "
            "torch.profiler.ProfilerActivity.CUDA on a GPU run")


def load_trace_set(
    path: str | Path,
    *,
    skip_bad: bool = False,
    require_gpu: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    progress: FileProgress | None = None,
    limits: TraceLimits = DEFAULT_LIMITS,
) -> TraceSet:
    """Load every trace file of ``path`` (see the module docstring for what a path may be).

    Holds every rank's columns at once; :func:`perfcallback.trace.analyze_path` instead reduces
    each file to its analysis before reading the next, so its memory does not grow with ranks.

    Args:
        path: A trace file, a folder of per-rank files, or a log folder of captures.
        skip_bad: Leave out files that fail to load (listed in ``skipped``) instead of raising.
        require_gpu: Treat a file without GPU events as bad (the CLI's default).
        chunk_bytes: Streaming chunk size (decompressed bytes).
        progress: Called as ``(file name, bytes read, file size)`` while reading.
        limits: Size caps per file (:class:`~perfcallback.trace.parse.TraceLimits`).

    Raises:
        TraceError: A bad file (without ``skip_bad``), no usable file, or mixed runs.
    """
    loaded, skipped, notes = load_each(path, lambda rt: rt, skip_bad=skip_bad,
                                       require_gpu=require_gpu, chunk_bytes=chunk_bytes,
                                       progress=progress, limits=limits)
    if len(loaded) == 1 and loaded[0].rank < 0:
        loaded[0].rank = 0  # a lone trace without rank information: rank 0, as HTA assumes
    return TraceSet(source=str(path), ranks=assign_ranks(Path(path), loaded),
                    skipped=tuple(skipped), notes=tuple(notes))


class Ranked(Protocol):
    """What rank assignment reads: a RankTrace, or a RankAnalysis made from one."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int | None: ...
    @property
    def path(self) -> str: ...


T = TypeVar("T", bound=Ranked)


def load_each(
    path: str | Path,
    reduce: Callable[[RankTrace], T],
    *,
    skip_bad: bool = False,
    require_gpu: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
    progress: FileProgress | None = None,
    limits: TraceLimits = DEFAULT_LIMITS,
    operators: bool = True,
) -> tuple[list[T], list[str], list[str]]:
    """Load the files of ``path`` one at a time and keep only ``reduce(trace)`` of each
    (``operators``: see :func:`load_rank_trace`).

    Returns:
        The reduced files, the ``"path: problem"`` of each file skipped, the loader's notes.

    Raises:
        TraceError: A bad file (without ``skip_bad``), or no usable file. ``reduce``'s own
            TraceErrors are never skipped: they concern the request, not the file.
    """
    files, notes = find_trace_files(path)
    out: list[T] = []
    skipped: list[str] = []
    for f in files:
        try:
            rt = load_rank_trace(f, chunk_bytes=chunk_bytes, progress=progress, limits=limits,
                                 operators=operators)
            if require_gpu and not rt.has_gpu:
                raise TraceError(f, no_gpu_problem(rt))
        except TraceError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        out.append(reduce(rt))
        del rt  # NOTE: one file's columns at a time
    if not out:
        raise TraceError(path, f"no usable trace file ({skipped[0]})" if skipped else "no trace")
    return out, skipped, notes


def assign_ranks(folder: Path, loaded: Sequence[T]) -> dict[int, T]:
    """Map traces to ranks; refuse mixed runs (world sizes that differ, a rank seen twice)."""
    unknown = [Path(rt.path).name for rt in loaded if rt.rank < 0]
    if unknown:
        raise TraceError(folder, "cannot tell the ranks apart: " + ", ".join(unknown[:3])
                         + " carry no distributedInfo.rank and no rank-N in the file name")
    worlds = {rt.world_size for rt in loaded if rt.world_size is not None}
    if len(worlds) > 1:
        desc = ", ".join(f"{Path(rt.path).name} is rank {rt.rank} of {rt.world_size}"
                         for rt in loaded[:3])
        raise TraceError(folder, f"mixed runs in one folder: {desc}")
    ranks: dict[int, T] = {}
    for rt in loaded:
        if rt.rank in ranks:
            raise TraceError(folder, f"mixed runs in one folder: rank {rt.rank} appears in "
                                     f"{Path(ranks[rt.rank].path).name} and {Path(rt.path).name}")
        ranks[rt.rank] = rt
    return dict(sorted(ranks.items()))
