"""StepRecorder with an injected clock: exact figures, no wall time."""

from __future__ import annotations

import gc
import mmap

import pytest

from perfcallback.context import RunContext
from perfcallback.memory import HostRSS
from perfcallback.recorder import StepRecorder
from perfcallback.rules import _REGISTRY, Finding, rule
from perfcallback.sinks import Sink
from perfcallback.stats import BACKWARD, FORWARD, OPTIMIZER, WindowStats

from _helpers import FakeClock


def run_step(
    rec: StepRecorder,
    clock: FakeClock,
    *,
    data=0.0,
    fwd=0.0,
    bwd=0.0,
    opt=0.0,
    other=0.0,
    samples=0,
) -> None:
    rec.data_begin()
    clock.advance(data)
    rec.data_end(samples)
    rec.begin_step()
    for phase, secs in ((FORWARD, fwd), (BACKWARD, bwd), (OPTIMIZER, opt)):
        rec.phase_start(phase)
        clock.advance(secs)
        rec.phase_end(phase)
    clock.advance(other)
    rec.end_step()


def test_phases_add_up_exactly_and_warmup_is_excluded() -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=2, window_steps=5, clock=clock, cuda=False)
    for _ in range(2):  # warm-up steps are slow and must not count
        run_step(rec, clock, data=1.0, fwd=1.0)
    for _ in range(10):
        run_step(rec, clock, data=0.004, fwd=0.003, bwd=0.002, opt=0.001, other=0.0005, samples=8)
    report = rec.report()
    assert report.steps == 10
    assert report.warmup_steps == 2
    b = report.breakdown
    assert b["data"] == pytest.approx(0.004)
    assert b["forward"] == pytest.approx(0.003)
    assert b["backward"] == pytest.approx(0.002)
    assert b["optimizer"] == pytest.approx(0.001)
    assert b["other"] == pytest.approx(0.0005)
    assert b["step"] == pytest.approx(0.0105)
    assert sum(
        b[p] for p in ("data", "forward", "backward", "optimizer", "other")
    ) == pytest.approx(b["step"])
    assert report.throughput["samples_per_s"] == pytest.approx(8 / 0.0105)
    assert report.step_percentiles_s["max"] == pytest.approx(0.0105)


def test_nested_phase_pauses_the_outer_one() -> None:
    """An LBFGS-style closure runs forward and backward inside optimizer.step()."""
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, clock=clock, cuda=False)
    rec.begin_step()
    rec.phase_start(OPTIMIZER)
    clock.advance(0.001)
    rec.phase_start(FORWARD)
    clock.advance(0.010)
    rec.phase_end(FORWARD)
    rec.phase_start(BACKWARD)
    clock.advance(0.020)
    rec.phase_end(BACKWARD)
    clock.advance(0.002)
    rec.phase_end(OPTIMIZER)
    rec.end_step()
    b = rec.report().breakdown
    assert b["forward"] == pytest.approx(0.010)
    assert b["backward"] == pytest.approx(0.020)
    assert b["optimizer"] == pytest.approx(0.003)
    assert b["step"] == pytest.approx(0.033)
    assert b["other"] == pytest.approx(0.0, abs=1e-12)


def test_gradient_accumulation_sums_phases() -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, clock=clock, cuda=False)
    rec.begin_step()
    for _ in range(4):
        rec.phase_start(FORWARD)
        clock.advance(0.001)
        rec.phase_end(FORWARD)
        rec.phase_start(BACKWARD)
        clock.advance(0.002)
        rec.phase_end(BACKWARD)
    rec.end_step()
    b = rec.report().breakdown
    assert b["forward"] == pytest.approx(0.004)
    assert b["backward"] == pytest.approx(0.008)


def test_aborted_step_is_not_counted() -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, clock=clock, cuda=False)
    run_step(rec, clock, fwd=0.001)
    rec.begin_step()
    clock.advance(5.0)
    rec.abort_step()
    run_step(rec, clock, fwd=0.001)
    assert rec.report().steps == 2
    assert rec.report().breakdown["step"] == pytest.approx(0.001)


def test_ring_buffer_is_bounded() -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, window_steps=10, buffer_steps=50, clock=clock, cuda=False)
    for _ in range(1000):
        run_step(rec, clock, fwd=0.001)
    assert len(rec._ring) == 50
    assert rec.report().steps == 1000


def test_totals_count_every_step_whenever_they_are_read() -> None:
    """Totals are added per window from the ring (the hot path keeps a counter): a report read
    mid-window, a window longer than the ring, and a resumed run all count every step once."""
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, window_steps=10, buffer_steps=50, clock=clock, cuda=False)
    for n in range(1, 38):
        run_step(rec, clock, fwd=0.001 * (n % 3), opt=0.002)
        if n in (3, 17, 30):
            assert rec.report().steps == n
    rec.window_steps = 500  # set beyond the ring after construction: no step may be lost
    for _ in range(163):
        run_step(rec, clock, fwd=0.001, opt=0.002)
    report = rec.report()
    assert report.steps == 200
    assert report.breakdown["optimizer"] == pytest.approx(0.002)
    forward_ms = sum(n % 3 for n in range(1, 38)) + 163
    assert report.breakdown["forward"] == pytest.approx(forward_ms / 200 * 1e-3)
    resumed = StepRecorder(warmup_steps=0, window_steps=10, buffer_steps=50, clock=clock,
                           cuda=False)
    resumed.load_state_dict(rec.state_dict())
    for _ in range(5):
        run_step(resumed, clock, opt=0.002)
    assert resumed.report().steps == 205


class _Collect(Sink):
    def __init__(self) -> None:
        self.windows: list[WindowStats] = []
        self.events: list[tuple[str, str]] = []

    def on_window(self, stats: WindowStats) -> None:
        self.windows.append(stats)

    def on_recommendation(self, event: str, rec) -> None:
        self.events.append((event, rec.rule))


@pytest.fixture
def slow_forward_rule():
    """A throwaway rule registered for one test (the registry refuses duplicates)."""

    @rule("step_variance.test_slow_forward", category="step_variance")
    def _slow_forward(stats, ctx, th):
        if stats.phase_s["forward"] > th.get("fwd_s", 0.005):
            return Finding(
                severity="warning",
                message="forward is slow",
                evidence={"forward_s": stats.phase_s["forward"]},
            )
        return None

    yield "step_variance.test_slow_forward"
    del _REGISTRY["step_variance.test_slow_forward"]


def test_windows_feed_rules_with_hysteresis(slow_forward_rule: str) -> None:
    clock = FakeClock()
    sink = _Collect()
    rec = StepRecorder(
        warmup_steps=0,
        window_steps=5,
        fire_after=2,
        clear_after=1,
        sinks=[sink],
        clock=clock,
        cuda=False,
    )
    for _ in range(5):
        run_step(rec, clock, fwd=0.010)
    assert sink.events == []  # held for one window only
    for _ in range(5):
        run_step(rec, clock, fwd=0.010)
    assert sink.events == [("new", slow_forward_rule)]
    for _ in range(5):  # still holds, same message: no repeat
        run_step(rec, clock, fwd=0.010)
    assert sink.events == [("new", slow_forward_rule)]
    for _ in range(5):
        run_step(rec, clock, fwd=0.001)
    assert sink.events[-1] == ("resolved", slow_forward_rule)
    assert len(sink.windows) == 4
    assert sink.windows[0].steps == 5
    report = rec.report()
    assert [r.rule for r in report.resolved] == [slow_forward_rule]


def test_report_evaluates_rules_on_a_short_run(slow_forward_rule: str) -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, window_steps=25, fire_after=3, clock=clock, cuda=False)
    for _ in range(10):  # shorter than one window
        run_step(rec, clock, fwd=0.010)
    assert [r.rule for r in rec.report().recommendations] == [slow_forward_rule]


def test_rule_thresholds_and_disabling(slow_forward_rule: str) -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, clock=clock, cuda=False, thresholds={"fwd_s": 1.0})
    run_step(rec, clock, fwd=0.010)
    assert rec.report().recommendations == []
    rec2 = StepRecorder(warmup_steps=0, clock=clock, cuda=False, disabled_rules=["step_variance"])
    run_step(rec2, clock, fwd=0.010)
    assert rec2.report().recommendations == []


def test_failing_rule_and_sink_are_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    @rule("gc.test_broken", category="gc")
    def _broken(stats, ctx, th):
        raise ZeroDivisionError("planted")

    class BrokenSink(Sink):
        def on_window(self, stats: WindowStats) -> None:
            raise OSError("disk full (planted)")

    try:
        clock = FakeClock()
        rec = StepRecorder(
            warmup_steps=0, window_steps=2, sinks=[BrokenSink()], clock=clock, cuda=False
        )
        for _ in range(10):
            run_step(rec, clock, fwd=0.001)
        report = rec.report()
    finally:
        del _REGISTRY["gc.test_broken"]
    assert report.steps == 10
    assert "rule:gc.test_broken" in report.disabled
    assert any(k.startswith("sink[0]:BrokenSink") for k in report.disabled)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info  # our bug: once, with its traceback
    assert "Please report" in errors[0].getMessage()
    # the machine refusing a write (OSError) is not our bug: one warning line, no traceback
    (refused,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "disk full (planted)" in refused.getMessage() and refused.exc_info is None


def test_gc_pauses_are_timed_per_step() -> None:
    rec = StepRecorder(warmup_steps=0, cuda=False)
    rec.install_gc_probe()
    try:
        for _ in range(3):
            rec.begin_step()
            gc.collect()
            rec.end_step()
    finally:
        rec.close()
    g = rec.report().gc
    assert g["collections_per_step"] >= 1.0
    assert g["gen2_collections"] >= 3
    assert g["pause_s_per_step"] > 0
    assert rec._on_gc not in gc.callbacks


def test_host_rss_is_measured() -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, clock=clock, cuda=False)
    for _ in range(5):
        run_step(rec, clock, fwd=0.001)
    assert rec.report().memory["host_rss_bytes"] > 10 * 2**20


class _CountingRSS(HostRSS):
    """The real ``/proc/self/statm`` reader, counting its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self) -> int:
        self.reads += 1
        return super().read()


def test_host_rss_is_read_once_per_window_and_its_trend_spans_windows() -> None:
    """A read is a syscall, which slows the training step after it: one per window (and one as
    warm-up ends), and the window's RSS line is fitted over the last windows' samples."""
    clock, sink = FakeClock(), _Collect()
    rec = StepRecorder(warmup_steps=3, window_steps=10, sinks=[sink], clock=clock, cuda=False)
    rec._rss = rss = _CountingRSS()
    kept = []
    planted = 512 * 1024
    for _ in range(3 + 10 * 12):
        run_step(rec, clock, fwd=0.001)
        page = mmap.mmap(-1, planted)  # its own mapping: the allocator's free memory from
        page.write(b"\x01" * planted)  # earlier tests cannot absorb it; written, so resident
        kept.append(page)
    assert rss.reads == 1 + 12
    assert [r.index for r in rec._ring if r.rss_bytes] == [3 + 10 * k for k in range(1, 13)]
    assert sink.windows[0].host_rss_slope_bytes_per_step is None  # two samples: no line yet
    for stats in sink.windows[1:]:  # from the third sample on, one line over up to 8 windows
        assert planted * 0.8 <= stats.host_rss_slope_bytes_per_step <= planted * 1.5
        assert stats.host_rss_r2 > 0.9
    memory = rec.report().memory
    assert rss.reads == 1 + 12  # the report reads the samples, not /proc
    assert memory["host_rss_bytes"] == sink.windows[-1].host_rss_bytes
    assert memory["host_rss_peak_bytes"] >= memory["host_rss_bytes"]
    for page in kept:
        page.close()


class _CheckRetained(Sink):
    """Compares each window's retained step times and indices with the ring they come from."""

    def __init__(self) -> None:
        self.rec: StepRecorder | None = None
        self.checked = 0
        self.mismatches: list[int] = []

    def on_window(self, stats: WindowStats) -> None:
        assert self.rec is not None
        ring = self.rec._ring
        if (stats.recent_step_times_s != tuple(r.step_s for r in ring)
                or stats.recent_step_indices != tuple(r.index for r in ring)):
            self.mismatches.append(stats.last_step)
        self.checked += 1


def test_retained_steps_match_the_ring_in_every_window() -> None:
    """The retained times are extended window by window, not copied from the ring: they must
    still equal the ring through eviction, mid-window reports, an enlarged window and a resume."""
    clock = FakeClock()

    def recorder(check: _CheckRetained) -> StepRecorder:
        rec = StepRecorder(warmup_steps=2, window_steps=7, buffer_steps=30, sinks=[check],
                           clock=clock, cuda=False)
        check.rec = rec
        return rec

    check = _CheckRetained()
    rec = recorder(check)
    for n in range(80):
        run_step(rec, clock, fwd=0.001 * (1 + n % 5), opt=0.0001 * n)
        if n in (10, 41):
            rec.report()  # summarises the whole ring between windows
    rec.window_steps = 45  # beyond the ring: a window's new steps outnumber the retained ones
    before = check.checked
    for n in range(100):
        run_step(rec, clock, fwd=0.002 * (1 + n % 3))
    assert check.checked == before + 2
    resumed_check = _CheckRetained()
    resumed = recorder(resumed_check)
    resumed.load_state_dict(rec.state_dict())
    for n in range(30):
        run_step(resumed, clock, fwd=0.003 * (1 + n % 4))
    assert check.checked >= 12 and resumed_check.checked >= 3
    assert check.mismatches == [] and resumed_check.mismatches == []
    assert rec.failopen.disabled == {} and resumed.failopen.disabled == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"window_steps": 0}, "window_steps"),
        ({"window_steps": 100, "buffer_steps": 10}, "buffer_steps"),
        ({"fire_after": 0}, "fire_after"),
    ],
)
def test_bad_arguments_are_rejected_with_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StepRecorder(cuda=False, **kwargs)


def _window_spans(step_s: float, steps: int, **kwargs) -> list[tuple[int, int]]:
    """(first, last) step of every window a recorder closes over ``steps`` steps of ``step_s``."""
    clock, sink = FakeClock(), _Collect()
    rec = StepRecorder(warmup_steps=3, sinks=[sink], clock=clock, cuda=False, **kwargs)
    for _ in range(steps):
        run_step(rec, clock, fwd=step_s * 0.6, opt=step_s * 0.4)
    return [(w.first_step, w.last_step) for w in sink.windows]


def test_automatic_windows_span_at_least_25_steps_and_half_a_second_and_at_most_250() -> None:
    """window_steps=None (the default): a slow step keeps 25-step windows, a fast one gets
    windows of a quarter of a second, and a very fast one windows of 250 steps (a window's work then
    costs a few microseconds a step instead of tens)."""
    slow = _window_spans(0.020, 3 + 100)  # 25 x 20 ms = 0.5 s: the step count decides
    assert slow == [(4, 28), (29, 53), (54, 78), (79, 103)]
    medium = _window_spans(0.0041, 3 + 200)  # 4.1 ms: 61 steps make a quarter of a second
    assert [last - first + 1 for first, last in medium] == [61, 61, 61]
    fast = _window_spans(0.0005, 3 + 800)  # 250 steps are 125 ms: the step cap decides
    assert [last - first + 1 for first, last in fast] == [250, 250, 250]
    small_ring = _window_spans(0.0005, 3 + 200, buffer_steps=60)
    assert [last - first + 1 for first, last in small_ring] == [60, 60, 60]


def test_a_fixed_window_length_ignores_the_clock() -> None:
    assert [last - first + 1 for first, last in _window_spans(0.0005, 53, window_steps=25)] == [
        25, 25]
    assert [last - first + 1 for first, last in _window_spans(2.0, 53, window_steps=25)] == [
        25, 25]


def test_automatic_windows_are_25_steps_across_ranks() -> None:
    """Ranks compare windows by number, so a window closed by each rank's clock could pair
    different steps: across ranks the automatic window is a fixed 25 steps."""
    clock, sink = FakeClock(), _Collect()
    rec = StepRecorder(warmup_steps=0, sinks=[sink], clock=clock, cuda=False,
                       context=RunContext(rank=1, world_size=2))
    for n in range(100):
        run_step(rec, clock, fwd=0.0005 if n % 2 else 0.002)
    assert [(w.first_step, w.last_step) for w in sink.windows] == [
        (1, 25), (26, 50), (51, 75), (76, 100)]


def test_report_judges_the_last_automatic_window_whole() -> None:
    """report() evaluates the rules on the latest window: with automatic windows that is the
    last closed window's length, not a fixed 25 steps."""
    clock, sink = FakeClock(), _Collect()
    rec = StepRecorder(warmup_steps=0, sinks=[sink], clock=clock, cuda=False)
    for _ in range(300):
        run_step(rec, clock, fwd=0.001)
    assert [(w.first_step, w.last_step) for w in sink.windows] == [(1, 250)]
    assert rec.report().findings_window == {"first_step": 51, "last_step": 300}
