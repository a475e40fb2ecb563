"""Which part of a rank's trace is analysed (the window), and the figures of each ProfilerStep.

Design notes:
- Default window, as HolisticTraceAnalysis 0.5.0 loads a trace
  (``Trace._filter_irrelevant_gpu_kernels`` with ``include_last_profiler_step=False``): when the
  trace has two or more ``ProfilerStep`` names, keep the GPU events whose launch call started
  before the last step began, so the last step (usually cut short by the end of profiling) is
  left out; with one step or none, keep every GPU event.
- ``steps=(a, b)`` selects ``ProfilerStep#n`` for ``a <= n < b`` (Python slice rules, either end
  open) and keeps the GPU events launched inside those steps.
- Per-step figures are measured inside each step's host span (``[ts, ts + dur)``): GPU busy time
  there over the span is the step's GPU utilisation, as the PyTorch profiler's TensorBoard plugin
  defines it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from perfcallback._record import record
from perfcallback.trace.errors import TraceError
from perfcallback.trace.events import GPU_KIND_KERNEL, RankTrace, Step
from perfcallback.trace.intervals import Interval, covered_in, merge_intervals

StepRange = tuple[int | None, int | None]


@record
class Window:
    """The steps analysed and the launch-time range of the GPU events kept."""

    steps: tuple[Step, ...]
    launch_from: float  # keep GPU events whose launch call starts in [launch_from, launch_to)
    launch_to: float
    filtered: bool  # False: every GPU event is kept, launched or not
    description: str


@record
class StepFigures:
    """One ``ProfilerStep#N``: wall time and what filled it."""

    number: int
    wall_us: float
    gpu_busy_us: float  # any kernel, copy or set running, inside the step's host span
    comm_us: float  # communication kernels running, inside the span
    data_us: float  # DataLoader __next__, inside the span
    sync_us: float  # blocking device synchronisation calls, inside the span
    h2d_us: float  # host-to-device copies running, inside the span
    kernels: int  # kernels launched during the step

    @property
    def gpu_util_pct(self) -> float:
        return 100.0 * self.gpu_busy_us / self.wall_us if self.wall_us > 0 else 0.0


def parse_steps(text: str) -> StepRange:
    """Parse ``"A:B"`` (either side may be empty) into a step range.

    Raises:
        ValueError: ``text`` is not ``A:B`` with integer bounds.

    Example::

        >>> parse_steps("3:"), parse_steps(":8"), parse_steps("3:8")
        ((3, None), (None, 8), (3, 8))
    """
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError(f"steps must look like A:B, A: or :B, got {text!r}")
    try:
        return (int(lo) if lo.strip() else None, int(hi) if hi.strip() else None)
    except ValueError:
        raise ValueError(f"steps bounds must be integers, got {text!r}") from None


def select_window(rt: RankTrace, steps: StepRange | None = None) -> Window:
    """The analysed window of ``rt``: HTA's default, or the ``steps`` range.

    Raises:
        TraceError: ``steps`` selects no ProfilerStep of this trace.
    """
    if steps is not None:
        return _range_window(rt, steps)
    if rt.step_names >= 2 and rt.last_step_start is not None:
        cutoff = rt.last_step_start
        kept = tuple(s for s in rt.steps if s.ts < cutoff)
        left_out = [s.number for s in rt.steps if s.ts >= cutoff]
        text = f"{_describe(kept)}; the last step (#{left_out[-1] if left_out else '?'}) left out"
        return Window(steps=kept, launch_from=-math.inf, launch_to=cutoff, filtered=True,
                      description=text + ", as HTA does")
    text = _describe(tuple(rt.steps)) if rt.steps else "whole trace (no ProfilerStep# markers)"
    return Window(steps=tuple(rt.steps), launch_from=-math.inf, launch_to=math.inf,
                  filtered=False, description=text)


def _range_window(rt: RankTrace, steps: StepRange) -> Window:
    lo, hi = steps
    chosen = tuple(
        s for s in rt.steps if (lo is None or s.number >= lo) and (hi is None or s.number < hi)
    )
    if not chosen:
        have = (f"steps {rt.steps[0].number}-{rt.steps[-1].number}" if rt.steps
                else "no ProfilerStep# markers")
        wanted = f"{'' if lo is None else lo}:{'' if hi is None else hi}"
        raise TraceError(rt.path, f"--steps {wanted} selects no ProfilerStep "
                                  f"(the trace has {have})")
    return Window(steps=chosen, launch_from=chosen[0].ts, launch_to=max(s.end for s in chosen),
                  filtered=True, description=_describe(chosen))


def _describe(steps: Sequence[Step]) -> str:
    if not steps:
        return "no complete ProfilerStep"
    if len(steps) == 1:
        return f"ProfilerStep#{steps[0].number}"
    return f"ProfilerStep#{steps[0].number}-#{steps[-1].number} ({len(steps)} steps)"


def kept_events(rt: RankTrace, window: Window) -> list[int]:
    """Indices of the GPU events of ``rt`` that the window keeps."""
    if not window.filtered:
        return list(range(len(rt.gpu_ts)))
    lo, hi = window.launch_from, window.launch_to
    index, launch_ts = rt.launch_index, rt.launch_ts
    kept = []
    for i, corr in enumerate(rt.gpu_corr):
        j = index.get(corr)
        if j is not None and lo <= launch_ts[j] < hi:
            kept.append(i)
    return kept


@record
class Timelines:
    """Merged busy intervals of one rank that the per-step figures read."""

    gpu: list[Interval]
    comm: list[Interval]
    h2d: list[Interval]


def step_figures(rt: RankTrace, window: Window, lines: Timelines) -> tuple[StepFigures, ...]:
    """Figures of every step in the window."""
    data = merge_intervals(rt.dataloader)
    sync = merge_intervals(rt.sync_calls)
    launches = sorted(
        rt.launch_ts[j]
        for i, corr in enumerate(rt.gpu_corr)
        if rt.gpu_kind[i] == GPU_KIND_KERNEL and (j := rt.launch_of(corr)) is not None
    )
    out = []
    for s in window.steps:
        start, end = s.ts, s.end
        out.append(StepFigures(
            number=s.number,
            wall_us=s.dur,
            gpu_busy_us=covered_in(lines.gpu, start, end),
            comm_us=covered_in(lines.comm, start, end),
            data_us=covered_in(data, start, end),
            sync_us=covered_in(sync, start, end),
            h2d_us=covered_in(lines.h2d, start, end),
            kernels=bisect_left(launches, end) - bisect_left(launches, start),
        ))
    return tuple(out)
