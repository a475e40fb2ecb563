"""Known answers on the synthetic traces (tests/data/make_traces.py), the trace -> WindowStats
mapping that feeds the rule engine, and run diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfcallback.rules import registered_rules
from perfcallback.stats import EXTRA_KEYS
from perfcallback.trace import TraceError, analyze_path, parse_steps
from perfcallback.trace.diff import diff_analyses
from perfcallback.trace.window import recommend, run_context, window_stats

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"


def test_no_overlap_temporal_breakdown_as_hta_defines_it() -> None:
    ra = analyze_path(DATA / "overlap_none").ranks[0]
    t = ra.temporal
    assert t is not None
    # Steps 1-2 (the last left out): span 170 ms, busy 140 ms, compute 100 ms.
    assert (t.span_us, t.idle_us, t.compute_us, t.non_compute_us) == (170e3, 30e3, 100e3, 40e3)
    s = ra.summary()
    assert s["idle_pct"] == pytest.approx(100 * 30 / 170)
    assert s["comm_comp_overlap_pct"] == 0.0
    assert s["steps"] == 2 and s["step_mean_us"] == 100e3
    assert s["gpu_util_pct"] == pytest.approx(70.0)
    assert s["data_share_pct"] is None and any("DataLoader" in n for n in ra.notes)
    assert "last step (#3) left out" in ra.window


def test_full_overlap() -> None:
    s = analyze_path(DATA / "overlap_full").ranks[0].summary()
    assert s["comm_comp_overlap_pct"] == 100.0
    assert s["non_compute_pct"] == 0.0 and s["comm_pct"] == pytest.approx(30.0)


def test_dataloader_share_and_its_window_stats() -> None:
    ra = analyze_path(DATA / "dataloader_bound").ranks[0]
    assert ra.data_share_pct == pytest.approx(60.0)
    stats = window_stats(ra)
    assert stats.steps == 2 and stats.step_s == pytest.approx(0.1)
    assert stats.phase_s["data"] == pytest.approx(0.06)
    assert stats.share("data") == pytest.approx(0.6)
    assert stats.extra["gpu_busy_pct"] == pytest.approx(30.0)
    assert run_context(ra).loader == {"num_workers": 0, "pin_memory": None,
                                      "persistent_workers": None, "prefetch_factor": None,
                                      "batch_size": None}


def test_two_ranks_one_starts_its_allreduce_40ms_late() -> None:
    a = analyze_path(DATA / "two_ranks_late_allreduce")
    assert a.cross.comm_us_per_step == {0: 48e3, 1: 8e3}  # rank 0 waits 40 ms more
    assert a.cross.slowest_rank == 1
    assert a.cross.straggler_spread_pct == pytest.approx(100 * 4 / 102)
    assert a.cross.comm_wait_spread_pct == pytest.approx(100 * 40 / 28)
    extra = window_stats(a.ranks[0], a.cross).extra
    assert extra["slowest_rank"] == 1 and extra["comm_wait_spread_pct"] == pytest.approx(142.857,
                                                                                        rel=1e-4)
    assert set(extra) <= set(EXTRA_KEYS)
    assert run_context(a.ranks[1]).world_size == 2


def test_cpu_only_trace_says_what_cannot_be_computed() -> None:
    ra = analyze_path(DATA / "cpu_only", require_gpu=False).ranks[0]
    s = ra.summary()
    for key in ("idle_pct", "compute_pct", "comm_comp_overlap_pct", "gpu_util_pct",
                "kernels_per_step", "launch_delay_p50_us"):
        assert s[key] is None, key
    assert s["data_share_pct"] == pytest.approx(5.0)
    assert any("cannot be computed" in n for n in ra.notes)
    stats = window_stats(ra)
    assert "gpu_busy_pct" not in stats.extra and "gpu_idle_pct" not in stats.extra
    assert run_context(ra).device_type == "cpu"


def test_steps_range_selects_the_window() -> None:
    ra = analyze_path(DATA / "overlap_none", steps=(3, None)).ranks[0]
    assert [s.number for s in ra.steps] == [3]
    assert ra.temporal is not None and ra.temporal.span_us == 70e3
    assert [s.number for s in analyze_path(DATA / "overlap_none", steps=(1, 4)).ranks[0].steps] \
        == [1, 2, 3]
    with pytest.raises(TraceError, match=r"selects no ProfilerStep .*steps 1-3"):
        analyze_path(DATA / "overlap_none", steps=(7, 9))


@pytest.mark.parametrize("text,expected", [("3:8", (3, 8)), (":8", (None, 8)), ("3:", (3, None))])
def test_parse_steps(text: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_steps(text) == expected


@pytest.mark.parametrize("text", ["3", "a:b", "3-8"])
def test_parse_steps_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_steps(text)


def test_to_dict_is_json_ready() -> None:
    import json

    d = analyze_path(DATA / "two_ranks_late_allreduce").to_dict()
    text = json.dumps(d, allow_nan=False)
    assert '"idle_pct"' in text and set(d["ranks"]) == {"0", "1"}


def test_recommendations_come_from_the_rule_engine() -> None:
    if not any(r.category == "dataloader" for r in registered_rules().values()):
        pytest.skip("no dataloader rule registered yet")
    recs = recommend(analyze_path(DATA / "dataloader_bound"))
    assert any(r.category == "dataloader" for r in recs)


def test_diff_names_what_got_slower() -> None:
    base = analyze_path(DATA / "overlap_full")
    worse = analyze_path(DATA / "overlap_none")
    d = diff_analyses(base, worse)
    by_key = {m.key: m for m in d.metrics}
    assert by_key["comm_comp_overlap_pct"].worse is True
    assert by_key["comm_comp_overlap_pct"].delta == pytest.approx(-100.0)
    assert by_key["step_mean_us"].worse is None  # same step time
    assert "comm_comp_overlap_pct" in d.to_dict()["slower"]
    assert d.kernels and d.kernels[0].delta_us != 0
