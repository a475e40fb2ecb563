"""communication.exposed and straggler.slow_rank: hook points, silent in a single process."""

from __future__ import annotations

import pytest

from rules._windows import context, run, window


@pytest.mark.parametrize(
    ("comm", "overlap", "severity"),
    [(20.0, 80.0, None), (20.0, 50.0, "warning"), (40.0, 20.0, "critical"), (10.0, 40.0, "info")],
)
def test_exposed_communication_graded(comm: float, overlap: float, severity: str | None) -> None:
    extra = {"comm_pct": comm, "comm_comp_overlap_pct": overlap}
    rec = run("communication.exposed", window(extra=extra), context(world_size=8))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "communication" and "bucket_cap_mb" in rec.message


@pytest.mark.parametrize(
    ("spread", "severity"), [(4.0, None), (5.0, "info"), (10.0, "warning"), (30.0, "critical")]
)
def test_straggler_graded(spread: float, severity: str | None) -> None:
    extra = {"straggler_spread_pct": spread, "slowest_rank": 3.0}
    rec = run("straggler.slow_rank", window(extra=extra), context(world_size=4))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "straggler" and rec.message.startswith("Rank 3 is the slowest")


@pytest.mark.parametrize("rule_id", ["communication.exposed", "straggler.slow_rank"])
def test_silent_in_a_single_process(rule_id: str) -> None:
    extra = {"comm_pct": 60.0, "comm_comp_overlap_pct": 0.0, "straggler_spread_pct": 80.0}
    assert run(rule_id, window(extra=extra), context(world_size=1)) is None
    assert run(rule_id, window(), context(world_size=8)) is None  # no measurement yet
