"""FindingTracker: hysteresis, de-duplication, severity changes and resolution."""

from __future__ import annotations

import pytest

from perfcallback.findings import FindingTracker
from perfcallback.report import Recommendation


def rec(severity: str = "warning", rule: str = "dataloader.stall", msg: str = "m") -> Recommendation:
    category = rule.split(".")[0]
    return Recommendation(rule=rule, category=category, severity=severity,  # type: ignore[arg-type]
                          message=msg, evidence={"x": msg})


def feed(tracker: FindingTracker, *windows: list[Recommendation]) -> list[list[tuple[str, str]]]:
    return [[(e, r.severity) for e, r in tracker.update(w)] for w in windows]


def test_fires_after_n_windows_then_updates_silently() -> None:
    t = FindingTracker(fire_after=2, clear_after=2)
    assert feed(t, [rec(msg="41%")], [rec(msg="42%")], [rec(msg="43%")]) == [
        [], [("new", "warning")], []
    ]
    (active,) = t.active()
    assert active.message == "43%"  # evidence refreshed in place, without an event


def test_a_gap_restarts_the_streak() -> None:
    t = FindingTracker(fire_after=2, clear_after=2)
    assert feed(t, [rec()], [], [rec()], [rec()]) == [[], [], [], [("new", "warning")]]


def test_resolves_after_clear_after_absent_windows() -> None:
    t = FindingTracker(fire_after=1, clear_after=2)
    assert feed(t, [rec()], [], [rec()], [], []) == [
        [("new", "warning")], [], [], [], [("resolved", "warning")]
    ]
    assert t.active() == [] and [r.rule for r in t.resolved()] == ["dataloader.stall"]
    assert feed(t, [rec()]) == [[("new", "warning")]]  # fires again, leaves the resolved list
    assert t.resolved() == []


def test_severity_rise_is_announced_at_once_a_fall_once_it_holds() -> None:
    t = FindingTracker(fire_after=1, clear_after=2)
    out = feed(t, [rec("warning")], [rec("critical")], [rec("warning")], [rec("critical")],
               [rec("warning")], [rec("warning")], [rec("warning")])
    assert out == [[("new", "warning")], [("updated", "critical")], [], [], [],
                   [("updated", "warning")], []]
    assert t.active()[0].severity == "warning"


def test_independent_rules_and_order() -> None:
    t = FindingTracker(fire_after=1, clear_after=1)
    events = t.update([rec("critical", "gc.pauses"), rec("info", "dataloader.stall")])
    assert [(e, r.rule) for e, r in events] == [("new", "gc.pauses"), ("new", "dataloader.stall")]
    assert [r.rule for r in t.active()] == ["gc.pauses", "dataloader.stall"]


@pytest.mark.parametrize("kw", [{"fire_after": 0}, {"clear_after": 0}])
def test_rejects_bad_settings(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        FindingTracker(**kw)
