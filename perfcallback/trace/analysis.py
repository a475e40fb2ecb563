"""Per-rank GPU figures of a Kineto trace (temporal breakdown, overlap, kernels, steps) and the
cross-rank straggler figures; the results are frozen records (see ``perfcallback._record``)
with ``to_dict()``.

Definitions follow HolisticTraceAnalysis 0.5.0 (``BreakdownAnalysis.get_temporal_breakdown``,
``CommunicationAnalysis.get_comm_comp_overlap``) so the numbers are comparable:
- Times are rounded inward to whole microseconds first (start up, end down), as HTA's parser does
  for nanosecond-resolution traces; an event left with no length covers no time (HTA keeps it with
  a negative length, which is how it fails its own ``non_compute_time >= 0`` check).
- Temporal breakdown over the GPU events of the window: ``span`` = first start to last end;
  ``idle`` = span minus the union of all events; ``compute`` = union of compute kernels;
  ``non_compute`` = the rest of the union (communication, memory, other). Percentages of the span.
- Comm/comp overlap = time where compute and communication kernels both run, over the union of
  communication kernels.
Figures that a trace cannot give (no GPU events, no steps, no communication) are ``None`` and a
note says why: never a zero that was not measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from perfcallback._record import asdict, record
from perfcallback.trace.events import GPU_KIND_MEMCPY, GPU_KIND_SYNC, RankTrace
from perfcallback.trace.intervals import (
    Interval,
    merge_intervals,
    overlap_length,
    span,
    total_length,
)
from perfcallback.trace.kernels import (
    COMMUNICATION,
    COMPUTE,
    IdleBreakdown,
    KernelStat,
    KernelTypeShare,
    LaunchStats,
    idle_breakdown,
    kernel_breakdown,
    launch_stats,
    name_types,
)
from perfcallback.trace.load import dropped_text
from perfcallback.trace.steps import (
    StepFigures,
    StepRange,
    Timelines,
    Window,
    kept_events,
    select_window,
    step_figures,
)

if TYPE_CHECKING:
    from perfcallback.trace.operators import OperatorStat


@record
class TemporalBreakdown:
    """HTA's temporal breakdown of one rank: where the GPU span went."""

    span_us: float
    idle_us: float
    compute_us: float
    non_compute_us: float

    def pct(self, part_us: float) -> float:
        return 100.0 * part_us / self.span_us if self.span_us > 0 else 0.0


@record
class RankAnalysis:
    """Every figure of one rank. ``None`` marks a figure this trace cannot give (see ``notes``)."""

    rank: int
    path: str
    device_name: str | None
    world_size: int | None
    window: str
    temporal: TemporalBreakdown | None
    comm_us: float | None
    comm_comp_overlap_pct: float | None
    idle: IdleBreakdown | None
    kernel_types: tuple[KernelTypeShare, ...]
    top_kernels: tuple[KernelStat, ...]
    launch: LaunchStats | None
    steps: tuple[StepFigures, ...]
    dataloader_iter: str | None
    h2d_pageable_pct: float | None
    notes: tuple[str, ...]
    kernel_us_by_name: dict[str, float]  # summed time of every kernel name (for diffs)
    # The whole trace, for traces without ProfilerStep# markers (torch.profiler used without a
    # schedule): first to last host or GPU event we keep, and DataLoader __next__ time in it.
    trace_span_us: float | None = None
    trace_data_us: float = 0.0
    # Top CPU operators (torch-tb-profiler's Operator view), empty without cpu_op events.
    operators: tuple[OperatorStat, ...] = ()

    def _per_step(self, attr: str) -> float | None:
        if not self.steps:
            return None
        return float(sum(getattr(s, attr) for s in self.steps)) / len(self.steps)

    def _step_share(self, attr: str) -> float | None:
        wall = sum(s.wall_us for s in self.steps)
        return 100.0 * sum(getattr(s, attr) for s in self.steps) / wall if wall > 0 else None

    @property
    def step_mean_us(self) -> float | None:
        return self._per_step("wall_us")

    @property
    def data_share_pct(self) -> float | None:
        """DataLoader time over step time; over the whole trace when it has no steps."""
        if self.dataloader_iter is None:
            return None
        if not self.steps and self.trace_span_us:
            return 100.0 * self.trace_data_us / self.trace_span_us
        return self._step_share("data_us")

    @property
    def gpu_util_pct(self) -> float | None:
        return self._step_share("gpu_busy_us") if self.temporal is not None else None

    def summary(self) -> dict[str, Any]:
        """The flat, JSON-ready figures (``--json`` ``ranks`` entries)."""
        t = self.temporal
        gpu = t is not None
        return {
            "idle_pct": t.pct(t.idle_us) if t else None,
            "compute_pct": t.pct(t.compute_us) if t else None,
            "non_compute_pct": t.pct(t.non_compute_us) if t else None,
            "comm_comp_overlap_pct": self.comm_comp_overlap_pct,
            "idle_us": t.idle_us if t else None,
            "compute_us": t.compute_us if t else None,
            "non_compute_us": t.non_compute_us if t else None,
            "span_us": t.span_us if t else None,
            "comm_us": self.comm_us,
            "idle_host_wait_pct": self.idle.host_wait_pct if self.idle else None,
            "steps": len(self.steps),
            "step_mean_us": self.step_mean_us,
            "data_share_pct": self.data_share_pct,
            "gpu_util_pct": self.gpu_util_pct,
            "comm_pct": self._step_share("comm_us") if gpu else None,
            "h2d_pct": self._step_share("h2d_us") if gpu else None,
            "sync_wait_pct": self._step_share("sync_us"),
            "kernels_per_step": self._per_step("kernels") if gpu else None,
            "launch_delay_p50_us": self.launch.delay_p50_us if self.launch else None,
            "short_kernel_pct": self.launch.short_kernel_pct if self.launch else None,
            "h2d_pageable_pct": self.h2d_pageable_pct,
        }

    def to_dict(self) -> dict[str, Any]:
        """Summary plus the detail tables, JSON types only."""
        return {
            **_clean(self.summary()),
            "path": self.path,
            "device": self.device_name,
            "world_size": self.world_size,
            "window": self.window,
            "idle_breakdown": _clean(asdict(self.idle)) if self.idle else None,
            "kernel_types": [_clean(asdict(k)) for k in self.kernel_types],
            "top_kernels": [_clean(asdict(k)) for k in self.top_kernels],
            "operators": [_clean(asdict(o)) for o in self.operators],
            "launch": _clean(asdict(self.launch)) if self.launch else None,
            "per_step": [_clean({**asdict(s), "gpu_util_pct": s.gpu_util_pct}) for s in self.steps],
            "dataloader": self.dataloader_iter,
            "notes": list(self.notes),
        }


@record
class CrossRank:
    """Straggler figures across ranks; ``None`` with fewer than two ranks that have steps."""

    step_mean_us: dict[int, float]
    comm_us_per_step: dict[int, float]
    straggler_spread_pct: float | None
    comm_wait_spread_pct: float | None
    slowest_rank: int | None

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "step_mean_us": {str(r): v for r, v in self.step_mean_us.items()},
            "comm_us_per_step": {str(r): v for r, v in self.comm_us_per_step.items()},
            "straggler_spread_pct": self.straggler_spread_pct,
            "comm_wait_spread_pct": self.comm_wait_spread_pct,
            "slowest_rank": self.slowest_rank,
        })


@record
class TraceAnalysis:
    """The analysis of a trace set: one :class:`RankAnalysis` per rank, plus cross-rank figures.

    Example::

        >>> from perfcallback.trace import analyze_path
        >>> result = analyze_path("tests/data/traces/overlap_full")  # doctest: +SKIP
        >>> result.ranks[0].summary()["comm_comp_overlap_pct"]  # doctest: +SKIP
        100.0
    """

    source: str
    ranks: dict[int, RankAnalysis]
    cross: CrossRank
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ranks": {str(r): a.to_dict() for r, a in sorted(self.ranks.items())},
            "cross_rank": self.cross.to_dict(),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }


def analyze_rank(
    rt: RankTrace, steps: StepRange | None = None, *, operators: bool = True
) -> RankAnalysis:
    """All figures of one rank over its window (HTA's default, or ``steps``).

    ``operators=False`` leaves the operator table empty: the live engine reads only the window
    figures, and spares the training process that sweep (it runs on the export thread).

    Raises:
        TraceError: ``steps`` selects no ProfilerStep of this trace.
    """
    window = select_window(rt, steps)
    kept = kept_events(rt, window)
    types = name_types(rt)
    starts = [math.ceil(ts) for ts in rt.gpu_ts]  # HTA rounds ns-resolution times inward
    ends = [math.floor(ts + dur) for ts, dur in zip(rt.gpu_ts, rt.gpu_dur, strict=True)]
    kinds = [types[n] for n in rt.gpu_name]
    temporal, comm = _temporal(kept, starts, ends, kinds)
    comm_us = total_length(comm) if temporal is not None else None
    overlap = None
    if comm:
        compute = merge_intervals((starts[i], ends[i]) for i in kept if kinds[i] == COMPUTE)
        overlap = 100.0 * overlap_length(compute, comm) / total_length(comm)
    lines = _timelines(rt, starts, ends, kinds)
    shares, top, by_name = kernel_breakdown(rt, kept, types)
    return RankAnalysis(
        rank=rt.rank, path=rt.path, device_name=rt.device_name, world_size=rt.world_size,
        window=window.description, temporal=temporal, comm_us=comm_us,
        comm_comp_overlap_pct=overlap, idle=idle_breakdown(rt, kept, starts, ends),
        kernel_types=shares, top_kernels=top, launch=launch_stats(rt, kept),
        steps=step_figures(rt, window, lines), dataloader_iter=rt.dataloader_iter,
        h2d_pageable_pct=_pageable_pct(rt, kept),
        notes=_notes(rt, temporal, comm, window.steps), kernel_us_by_name=by_name,
        trace_span_us=_trace_span(rt), trace_data_us=total_length(merge_intervals(rt.dataloader)),
        operators=_operators(rt, kept, window) if operators else (),
    )


def _operators(rt: RankTrace, kept: Sequence[int], window: Window) -> tuple[OperatorStat, ...]:
    from perfcallback.trace.operators import operator_stats  # imported only when asked for

    return operator_stats(rt, kept, window.launch_from, window.launch_to)


def _trace_span(rt: RankTrace) -> float | None:
    """First start to last end over GPU events, launch calls and DataLoader spans."""
    starts = [*rt.gpu_ts[:1], *rt.launch_ts[:1], *(a for a, _ in rt.dataloader[:1])]
    if not starts:
        return None
    first = min(min(rt.gpu_ts, default=math.inf), min(rt.launch_ts, default=math.inf),
                min((a for a, _ in rt.dataloader), default=math.inf))
    last = max(max((t + d for t, d in zip(rt.gpu_ts, rt.gpu_dur, strict=True)), default=-math.inf),
               max((t + d for t, d in zip(rt.launch_ts, rt.launch_dur, strict=True)),
                   default=-math.inf),
               max((b for _, b in rt.dataloader), default=-math.inf))
    return last - first if last > first else None


def _temporal(
    kept: Sequence[int], starts: Sequence[int], ends: Sequence[int], kinds: Sequence[str]
) -> tuple[TemporalBreakdown | None, list[Interval]]:
    merged = merge_intervals((starts[i], ends[i]) for i in kept)
    if not merged:
        return None, []
    compute = total_length(merge_intervals(
        (starts[i], ends[i]) for i in kept if kinds[i] == COMPUTE))
    comm = merge_intervals((starts[i], ends[i]) for i in kept if kinds[i] == COMMUNICATION)
    busy, whole = total_length(merged), span(merged)
    return TemporalBreakdown(span_us=whole, idle_us=whole - busy, compute_us=compute,
                             non_compute_us=busy - compute), comm


def _timelines(
    rt: RankTrace, starts: Sequence[int], ends: Sequence[int], kinds: Sequence[str]
) -> Timelines:
    """Busy timelines over every GPU event (not only the window), for per-step figures."""
    work = [i for i, kind in enumerate(rt.gpu_kind) if kind != GPU_KIND_SYNC]
    h2d = [i for i in work if rt.gpu_kind[i] == GPU_KIND_MEMCPY and "HtoD" in rt.names[
        rt.gpu_name[i]]]
    return Timelines(
        gpu=merge_intervals((starts[i], ends[i]) for i in work),
        comm=merge_intervals((starts[i], ends[i]) for i in work if kinds[i] == COMMUNICATION),
        h2d=merge_intervals((starts[i], ends[i]) for i in h2d),
    )


def _pageable_pct(rt: RankTrace, kept: Sequence[int]) -> float | None:
    h2d = [rt.names[rt.gpu_name[i]] for i in kept
           if rt.gpu_kind[i] == GPU_KIND_MEMCPY and "HtoD" in rt.names[rt.gpu_name[i]]]
    if not h2d:
        return None
    return 100.0 * sum("Pageable" in name for name in h2d) / len(h2d)


def _notes(
    rt: RankTrace, temporal: TemporalBreakdown | None, comm: list[Interval], steps: Sequence[Any]
) -> tuple[str, ...]:
    notes = []
    if rt.dropped:
        notes.append("implausible events left out: " + dropped_text(rt.dropped))
    if temporal is None:
        notes.append("no GPU kernels, copies or sets: the temporal breakdown, overlap, kernel and "
                     "launch figures cannot be computed")
    elif not comm:
        notes.append("no communication (NCCL/RCCL) kernels: comm/comp overlap cannot be computed")
    if not rt.steps:
        data = " (the data loading share is over the whole trace)" if rt.dataloader else ""
        notes.append("no ProfilerStep# markers: per-step figures (step time, GPU utilisation) "
                     f"cannot be computed{data}")
    elif not steps:
        notes.append("no complete ProfilerStep in the window: per-step figures cannot be computed")
    elif not rt.dataloader:
        notes.append("no DataLoader __next__ events: data loading is not visible in this trace")
    if temporal is not None and rt.cpu_events == 0:
        notes.append("no host (CPU) events: launch delays and steps cannot be computed")
    return tuple(notes)


def cross_rank(ranks: Mapping[int, RankAnalysis]) -> CrossRank:
    """Step-time and communication spread across ranks (HTA-style straggler view)."""
    step = {r: a.step_mean_us for r, a in ranks.items() if a.step_mean_us is not None}
    comm = {r: sum(s.comm_us for s in a.steps) / len(a.steps)
            for r, a in ranks.items() if a.steps and a.comm_us is not None}
    return CrossRank(
        step_mean_us=dict(step), comm_us_per_step=comm,
        straggler_spread_pct=_spread(step), comm_wait_spread_pct=_spread(comm),
        slowest_rank=max(step, key=lambda r: step[r]) if len(step) >= 2 else None,
    )


def _spread(values: Mapping[int, float]) -> float | None:
    """``(max - min) / mean`` in percent; ``None`` with fewer than two ranks or a zero mean."""
    if len(values) < 2:
        return None
    mean = sum(values.values()) / len(values)
    return 100.0 * (max(values.values()) - min(values.values())) / mean if mean > 0 else None


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats to ``None`` (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def analyze(traces: Mapping[int, RankTrace], *, source: str = "", steps: StepRange | None = None,
            skipped: Sequence[str] = (), notes: Sequence[str] = ()) -> TraceAnalysis:
    """Analyse loaded rank traces (see :func:`perfcallback.trace.load.load_trace_set`).

    Raises:
        TraceError: ``steps`` selects no ProfilerStep of some rank.
    """
    ranks = {rank: analyze_rank(rt, steps) for rank, rt in sorted(traces.items())}
    return combine(ranks, source=source, skipped=skipped, notes=notes)


def combine(ranks: Mapping[int, RankAnalysis], *, source: str = "", skipped: Sequence[str] = (),
            notes: Sequence[str] = ()) -> TraceAnalysis:
    """The :class:`TraceAnalysis` of analysed ranks: adds the cross-rank figures."""
    cross = cross_rank(ranks)
    extra = list(notes)
    if len(ranks) > 1 and cross.straggler_spread_pct is None:
        extra.append("fewer than two ranks with steps: straggler spread cannot be computed")
    return TraceAnalysis(source=source, ranks=dict(sorted(ranks.items())), cross=cross,
                         skipped=tuple(skipped), notes=tuple(extra))
