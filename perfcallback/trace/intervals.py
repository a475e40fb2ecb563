"""Merge, intersect and measure half-open time intervals ``[start, end)``: pure functions.

Every GPU figure of the trace analysis (busy, idle, overlap, per-step utilisation) reduces to these
few operations on lists of ``(start, end)`` pairs, so they are kept free of trace details and are
property-tested. Empty or inverted intervals (``end <= start``) are dropped on merge: they cover no
time. Touching intervals (``a.end == b.start``) merge into one, as HolisticTraceAnalysis
(``merge_kernel_intervals``) does; this changes no length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[float, float]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of ``intervals`` as sorted, disjoint, non-touching intervals.

    Args:
        intervals: ``(start, end)`` pairs in any order; overlaps and duplicates allowed.

    Returns:
        Sorted disjoint intervals covering exactly the same points.

    Example::

        >>> merge_intervals([(5, 7), (0, 2), (1, 3), (3, 4)])
        [(0, 4), (5, 7)]
    """
    ordered = sorted(iv for iv in intervals if iv[1] > iv[0])
    merged: list[Interval] = []
    for start, end in ordered:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def total_length(merged: Sequence[Interval]) -> float:
    """Summed length of already merged (disjoint) intervals."""
    return sum(end - start for start, end in merged)


def union_length(intervals: Iterable[Interval]) -> float:
    """Length of the union of ``intervals`` (any order, overlaps allowed)."""
    return total_length(merge_intervals(intervals))


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Intersection of two merged interval lists, itself merged.

    Example::

        >>> intersect([(0, 4), (6, 9)], [(2, 7)])
        [(2, 4), (6, 7)]
    """
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def overlap_length(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """Time covered by both merged lists ``a`` and ``b``."""
    return total_length(intersect(a, b))


def clip(merged: Sequence[Interval], start: float, end: float) -> list[Interval]:
    """The parts of merged intervals that fall inside ``[start, end)``."""
    return intersect(merged, [(start, end)]) if end > start else []


def covered_in(merged: Sequence[Interval], start: float, end: float) -> float:
    """Time inside ``[start, end)`` covered by ``merged``; binary search, so cheap per window.

    Args:
        merged: Output of :func:`merge_intervals` (sorted, disjoint).
        start: Window start.
        end: Window end.
    """
    if end <= start or not merged:
        return 0.0
    lo, hi = 0, len(merged)
    while lo < hi:  # first interval whose end is after `start`
        mid = (lo + hi) // 2
        if merged[mid][1] <= start:
            lo = mid + 1
        else:
            hi = mid
    total = 0.0
    while lo < len(merged) and merged[lo][0] < end:
        s, e = merged[lo]
        total += min(e, end) - max(s, start)
        lo += 1
    return total


def span(merged: Sequence[Interval]) -> float:
    """From the first start to the last end of merged intervals (0 when empty)."""
    return merged[-1][1] - merged[0][0] if merged else 0.0
