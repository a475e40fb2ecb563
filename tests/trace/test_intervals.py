"""Interval arithmetic: worked examples plus hypothesis properties (merge idempotent, overlap
bounded, order-independent)."""

from __future__ import annotations

import random
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from perfcallback.trace.intervals import (
    clip,
    covered_in,
    intersect,
    merge_intervals,
    overlap_length,
    span,
    total_length,
    union_length,
)

_point = st.integers(min_value=0, max_value=1000)
_interval = st.tuples(_point, _point).map(lambda p: (min(p), max(p)))
_intervals = st.lists(_interval, max_size=30)


def test_merge_joins_overlapping_and_touching_and_drops_empty() -> None:
    assert merge_intervals([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9), (8, 6)]) == [(0, 4), (5, 7)]


def test_intersect_and_overlap() -> None:
    a = merge_intervals([(0, 4), (6, 9)])
    b = merge_intervals([(2, 7)])
    assert intersect(a, b) == [(2, 4), (6, 7)]
    assert overlap_length(a, b) == 3


def test_covered_in_window_and_span() -> None:
    merged = merge_intervals([(0, 10), (20, 30), (40, 50)])
    assert covered_in(merged, 5, 45) == 5 + 10 + 5
    assert covered_in(merged, 10, 20) == 0
    assert covered_in(merged, 7, 7) == 0
    assert covered_in([], 0, 100) == 0
    assert clip(merged, 25, 42) == [(25, 30), (40, 42)]
    assert span(merged) == 50 and span([]) == 0


@given(_intervals)
def test_merge_is_idempotent_sorted_and_disjoint(ivs: list[tuple[int, int]]) -> None:
    merged = merge_intervals(ivs)
    assert merge_intervals(merged) == merged
    assert all(a[1] < b[0] for a, b in pairwise(merged))
    assert total_length(merged) <= sum(e - s for s, e in ivs)


@given(_intervals)
def test_union_does_not_depend_on_order(ivs: list[tuple[int, int]]) -> None:
    shuffled = list(ivs)
    random.Random(0).shuffle(shuffled)
    assert merge_intervals(shuffled) == merge_intervals(ivs)
    assert union_length(reversed(ivs)) == union_length(ivs)


@given(_intervals, _intervals)
def test_overlap_is_bounded_and_symmetric(a: list[tuple[int, int]],
                                          b: list[tuple[int, int]]) -> None:
    ma, mb = merge_intervals(a), merge_intervals(b)
    ov = overlap_length(ma, mb)
    assert 0 <= ov <= min(total_length(ma), total_length(mb))
    assert ov == overlap_length(mb, ma)
    # inclusion-exclusion: |A u B| = |A| + |B| - |A n B|
    assert union_length([*a, *b]) == total_length(ma) + total_length(mb) - ov


@given(_intervals, _point, _point)
def test_covered_in_matches_clip(ivs: list[tuple[int, int]], x: int, y: int) -> None:
    merged = merge_intervals(ivs)
    lo, hi = min(x, y), max(x, y)
    assert covered_in(merged, lo, hi) == total_length(clip(merged, lo, hi))
