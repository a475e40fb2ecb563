"""Report and Recommendation: validation, ordering, JSON form and the text table."""

from __future__ import annotations

import json
import math

import pytest

from perfcallback import Recommendation, Report
from perfcallback.report import sort_recommendations


def rec(rule: str, severity: str, gain: float | None = None) -> Recommendation:
    return Recommendation(
        rule=rule,
        category=rule.split(".")[0],
        severity=severity,  # type: ignore[arg-type]
        message=f"fix {rule}",
        evidence={"x": 1.0},
        est_gain=gain,
    )


def test_recommendation_rejects_unknown_severity_and_category() -> None:
    with pytest.raises(ValueError, match="severity must be one of"):
        rec("gc.pauses", "fatal")
    with pytest.raises(ValueError, match="category must be one of"):
        Recommendation(rule="cpu.hot", category="cpu", severity="info", message="m")


def test_most_severe_first_then_largest_gain() -> None:
    recs = [
        rec("gc.pauses", "info", 0.5),
        rec("dataloader.stall", "warning", 0.1),
        rec("memory.leak", "critical"),
        rec("optimizer.slow", "warning", 0.3),
    ]
    assert [r.rule for r in sort_recommendations(recs)] == [
        "memory.leak",
        "optimizer.slow",
        "dataloader.stall",
        "gc.pauses",
    ]


def test_to_dict_is_json_and_drops_non_finite_numbers() -> None:
    r = Recommendation(
        rule="gc.pauses",
        category="gc",
        severity="info",
        message="m",
        evidence={"ratio": math.inf, "steps": (1, 2), "nested": {"a": math.nan}},
        est_gain=math.nan,
    )
    report = Report(steps=3, warmup_steps=1, breakdown={"step": 0.01}, recommendations=[r])
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["recommendations"][0]["evidence"] == {
        "ratio": None,
        "steps": [1, 2],
        "nested": {"a": None},
    }
    assert d["recommendations"][0]["est_gain"] is None
    assert d["steps"] == 3


def test_str_is_a_readable_table() -> None:
    report = Report(
        steps=10,
        warmup_steps=5,
        breakdown={
            "data": 0.002,
            "forward": 0.003,
            "backward": 0.004,
            "optimizer": 0.001,
            "other": 0.0,
            "step": 0.010,
        },
        recommendations=[rec("dataloader.stall", "warning", 0.2)],
    )
    text = str(report)
    assert "10 steps measured (5 warm-up)" in text
    assert "data            2.000   20.0%" in text
    assert "[warning] dataloader.stall: fix dataloader.stall" in text
    empty = Report(steps=0, warmup_steps=5, breakdown={})
    assert "no steps measured yet" in str(empty)
