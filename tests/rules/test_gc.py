"""gc.pauses on hand-built windows: grading and the fix for short vs long collections."""

from __future__ import annotations

import pytest

from rules._windows import context, run, window


@pytest.mark.parametrize(
    ("pause_s", "severity"),
    [(0.019, None), (0.02, "info"), (0.05, "warning"), (0.10, "warning"), (0.25, "critical")],
)
def test_graded_by_pause_share(pause_s: float, severity: str | None) -> None:
    rec = run("gc.pauses", window(gc_pause_s=pause_s, gc_collections_per_step=100.0))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "gc" and rec.evidence["gc_share"] == pytest.approx(pause_s)


def test_frequent_short_collections_suggest_thresholds() -> None:
    rec = run("gc.pauses", window(step_s=0.01, gc_pause_s=0.002, gc_collections_per_step=40.0),
              context(gc_threshold=(700, 10, 10)))
    assert rec is not None
    assert "gc.set_threshold(50000, 10, 10)" in rec.message and "(700, 10, 10)" in rec.message
    assert "reference cycles" in rec.message


def test_long_collections_suggest_freeze() -> None:
    rec = run("gc.pauses", window(step_s=0.1, gc_pause_s=0.02, gc_collections_per_step=0.5))
    assert rec is not None and rec.severity == "warning"
    assert "gc.freeze()" in rec.message and "set_threshold" not in rec.message
    assert rec.evidence["mean_pause_s"] == pytest.approx(0.04)


def test_silent_below_absolute_floor() -> None:
    assert run("gc.pauses", window(step_s=1e-3, gc_pause_s=1e-4, gc_collections_per_step=1)) is None
