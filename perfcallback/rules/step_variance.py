"""Step-variance rules: outlier steps, periodic (synchronous work every N steps) or erratic.

A step is a *spike* when its wall time is at least ``spike_ratio`` times the median and at least
``spike_min_s`` above it. ``step_variance.periodic_spikes`` looks for spikes that recur every P
steps (checkpointing, logging, evaluation done synchronously every P steps) over every retained
step (``WindowStats.recent_step_times_s``, up to the ring buffer's size), so periods far longer
than a window are found, and names P. Requiring nearly every beat to spike keeps the random
outliers of a busy machine from passing for a period. ``step_variance.erratic`` covers outliers
without a period, within the window.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import pairwise

from perfcallback._record import record
from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats, percentile

_SHOWN_STEPS = 8  # spike step indices quoted in evidence


@record(kw_only=False)
class Spikes:
    """Outlier steps of a series, and the period they recur with (``None`` if not periodic)."""

    median_s: float
    total_s: float  # wall time of the whole series
    steps: tuple[int, ...]  # step indices of all spikes
    excess_s: float  # total time above the median in all spikes
    period: int | None = None
    periodic_steps: tuple[int, ...] = ()  # the spikes that follow the period
    periodic_excess_s: float = 0.0


def find_spikes(
    times: Sequence[float], indices: Sequence[int], th: Mapping[str, float],
    ordered: Sequence[float] | None = None,
) -> Spikes:
    """Locate spikes in ``times`` (steps ``indices``) and test them for a period; ``ordered``:
    ``times`` already sorted, when the caller has them."""
    ratio, min_s = get(th, "step_variance.spike_ratio"), get(th, "step_variance.spike_min_s")
    if not times:
        return Spikes(0.0, 0.0, (), 0.0)
    if ordered is None:
        ordered = sorted(times)
    median = percentile(ordered, 50)
    floor = max(median * ratio, median + min_s)
    if ordered[-1] < floor:  # no spike: the common case skips the scan below
        return Spikes(median, sum(times), (), 0.0)
    excess = {i: t - median for i, t in zip(indices, times, strict=True) if t >= floor}
    spikes = Spikes(median, sum(times), tuple(excess), sum(excess.values()))
    if len(excess) < get(th, "step_variance.periodic_spikes.min_spikes"):
        return spikes
    period, members = _period(list(excess), indices[0], indices[-1], th)
    if period is None:
        return spikes
    return Spikes(median, spikes.total_s, spikes.steps, spikes.excess_s, period, members,
                  sum(excess[s] for s in members))


# The retained-steps analysis (up to buffer_steps entries, a sort and a scan) is the costliest
# part of a window; both rules below need it, so the last result is kept, keyed by identity.
_last_recent: tuple[tuple[float, ...], Mapping[str, float], Spikes] | None = None


def window_spikes(stats: WindowStats, th: Mapping[str, float], *, recent: bool) -> Spikes:
    """Spikes of the window's steps, or (``recent``) of every retained step when available."""
    global _last_recent
    if recent and len(stats.recent_step_times_s) > len(stats.step_times_s):
        times = stats.recent_step_times_s
        if _last_recent is not None and _last_recent[0] is times and _last_recent[1] is th:
            return _last_recent[2]
        ordered = _RETAINED.sorted_times(times, stats.recent_step_indices)
        spikes = find_spikes(times, stats.recent_step_indices, th, ordered)
        _last_recent = (times, th, spikes)
        return spikes
    indices = range(stats.first_step, stats.first_step + len(stats.step_times_s))
    return find_spikes(stats.step_times_s, indices, th)


class _SortedRetained:
    """The retained step times in sorted order, carried from one window to the next.

    Sorting every retained step (up to ``buffer_steps``, 1024 by default) each window was a third
    of the window's cost, paid between training steps. From one window to the next the retained
    steps slide: the oldest leave, one window's steps arrive. So the previous sorted list loses
    the steps that left (a bisection each) and gains the new ones (a sort that merges two sorted
    runs, in linear time). Anything else (another monitor's steps, a resumed run) sorts anew.
    """

    def __init__(self) -> None:
        # one tuple, read and replaced whole: monitors in two threads never see a mixed state
        self._last: tuple[Sequence[float], Sequence[int], list[float]] = ((), (), [])
        self.slides = 0  # windows whose order came from the last one's (tests read it)

    def sorted_times(self, times: Sequence[float], indices: Sequence[int]) -> list[float]:
        old_times, old_indices, ordered = self._last
        gone = bisect_left(old_indices, indices[0]) if old_indices else 0
        kept = len(old_indices) - gone
        if (not old_indices or kept <= 0 or kept > len(indices) or 2 * kept < len(indices)
                or indices[kept - 1] != old_indices[-1] or indices[0] != old_indices[gone]
                or times[0] != old_times[gone] or times[kept - 1] != old_times[-1]):
            ordered = sorted(times)  # not a slide of the last window's steps
        else:
            ordered = ordered.copy()  # never change a list another caller may be reading
            for value in old_times[:gone]:
                del ordered[bisect_left(ordered, value)]
            ordered += times[kept:]
            ordered.sort()
            self.slides += 1
        self._last = (times, indices, ordered)
        return ordered


_RETAINED = _SortedRetained()


def _period(
    steps: list[int], first: int, last: int, th: Mapping[str, float]
) -> tuple[int | None, tuple[int, ...]]:
    """The most common gap between spikes, if the spikes on its beat fill (nearly) every beat."""
    gaps = Counter(b - a for a, b in pairwise(steps) if b - a >= 2)
    for period, _ in gaps.most_common(2):
        phase, _ = Counter(s % period for s in steps).most_common(1)[0]
        members = tuple(s for s in steps if s % period == phase)
        beats = len(range(first + (phase - first) % period, last + 1, period))
        if (len(members) >= get(th, "step_variance.periodic_spikes.min_spikes")
                and len(members) >= get(th, "step_variance.periodic_spikes.coverage") * beats):
            return period, members
    return None, ()


@rule("step_variance.periodic_spikes", category="step_variance")
def periodic_spikes(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """Every P steps one step is much slower: synchronous periodic work."""
    sp = window_spikes(stats, th, recent=True)
    if sp.period is None or sp.total_s <= 0:
        return None
    share = sp.periodic_excess_s / sp.total_s
    severity = grade(share, "step_variance.periodic_spikes", th)
    if severity is None:
        return None
    extra_s = sp.periodic_excess_s / len(sp.periodic_steps)
    shown = ", ".join(str(s) for s in sp.periodic_steps[-4:])
    message = (
        f"Every {sp.period} steps one step takes {(sp.median_s + extra_s) * 1e3:.1f} ms against a "
        f"median of {sp.median_s * 1e3:.1f} ms (steps ...{shown}), {share:.0%} of all time. "
        f"Look for work done every {sp.period} steps inside the loop: checkpoint saving, logging "
        "that calls .item()/.cpu(), evaluation, file I/O. Make it asynchronous (a background "
        "thread, torch.distributed.checkpoint.async_save) or run it less often."
    )
    evidence = {
        "period_steps": sp.period,
        "spike_steps": list(sp.periodic_steps[-_SHOWN_STEPS:]),
        "spikes": len(sp.periodic_steps),
        "spike_extra_s": extra_s,
        "median_step_s": sp.median_s,
        "spike_share": share,
    }
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)


@rule("step_variance.erratic", category="step_variance")
def erratic(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Outlier steps with no period: variable inputs, stalls, or a busy machine."""
    if window_spikes(stats, th, recent=True).period is not None:
        return None  # the periodic rule explains them
    sp = window_spikes(stats, th, recent=False)
    if not sp.steps or sp.total_s <= 0:
        return None
    share = sp.excess_s / sp.total_s
    severity = grade(share, "step_variance.erratic", th)
    if severity is None:
        return None
    message = (
        f"{len(sp.steps)} of {stats.steps} steps take over "
        f"{get(th, 'step_variance.spike_ratio'):g}x the median of {sp.median_s * 1e3:.1f} ms "
        f"(p99 {stats.step_p99_s * 1e3:.1f} ms), {share:.0%} of all time, with no period. "
        "If inputs vary in size, bucket or pad them to a few fixed shapes; otherwise look for "
        "other processes competing for the CPU or GPU, and set DataLoader(persistent_workers=True) "
        "so workers do not restart every epoch."
    )
    evidence = {
        "spike_steps": list(sp.steps[-_SHOWN_STEPS:]),
        "spikes": len(sp.steps),
        "median_step_s": sp.median_s,
        "p99_step_s": stats.step_p99_s,
        "spike_share": share,
    }
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)
