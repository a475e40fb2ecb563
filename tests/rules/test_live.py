"""Rules driven by a StepRecorder on an exact clock: hysteresis timing, sinks, report().

The real-loop counterparts are in tests/test_rules_integration.py; here every figure is exact.
"""

from __future__ import annotations

import logging

import pytest

from perfcallback.recorder import StepRecorder
from perfcallback.report import Recommendation
from perfcallback.sinks import CallbackSink, LoggingSink
from perfcallback.stats import BACKWARD, FORWARD, OPTIMIZER

from _helpers import FakeClock


class Loop:
    """Drives a recorder like a training loop would, with planted phase times."""

    def __init__(self, **recorder_kw: object) -> None:
        # 25-step windows, as the default gives steps of 10 ms or more (these are 6-16 ms)
        recorder_kw.setdefault("window_steps", 25)
        self.clock = FakeClock()
        self.events: list[tuple[int, Recommendation]] = []
        sink = CallbackSink(lambda rec: self.events.append((self.rec.steps_seen, rec)))
        self.rec = StepRecorder(clock=self.clock, cuda=False, sinks=[sink, LoggingSink()],
                                **recorder_kw)  # type: ignore[arg-type]

    def run(self, steps: int, data_s: float = 0.0, fwd_s: float = 0.002, bwd_s: float = 0.003,
            opt_s: float = 0.001) -> None:
        rec, clock = self.rec, self.clock
        for _ in range(steps):
            rec.data_begin()
            clock.advance(data_s)
            rec.data_end(8)
            rec.begin_step()
            for phase, secs in ((FORWARD, fwd_s), (BACKWARD, bwd_s), (OPTIMIZER, opt_s)):
                rec.phase_start(phase)
                clock.advance(secs)
                rec.phase_end(phase)
            rec.end_step()


def test_persistent_stall_reported_within_100_measured_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = Loop()  # the defaults: warm-up 5, fire after 2; windows of 25
    with caplog.at_level(logging.INFO, logger="perfcallback"):
        loop.run(150, data_s=0.006)  # 6 of 12 ms: 50%
    ((steps_seen, rec),) = loop.events  # reported once, never repeated
    assert steps_seen - loop.rec.warmup_steps <= 100
    assert rec.rule == "dataloader.stall" and rec.severity == "critical"
    assert rec.evidence["data_wait_s"] == pytest.approx(0.006)
    assert rec.evidence["data_share"] == pytest.approx(0.5)
    logged = [r for r in caplog.records if "dataloader.stall" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.CRITICAL
    assert logged[0].getMessage().startswith("perfcallback [critical] dataloader.stall: ")
    report = loop.rec.report()
    assert [r.rule for r in report.recommendations] == ["dataloader.stall"]
    assert "[critical] dataloader.stall" in str(report)


@pytest.mark.parametrize("steps", [12, 30])
def test_short_run_report_still_diagnoses(steps: int) -> None:
    loop = Loop()
    loop.run(steps, data_s=0.006)
    assert loop.events == []  # too short for the hysteresis...
    (rec,) = loop.rec.report().recommendations  # ...but report() evaluates the steps it has
    assert rec.rule == "dataloader.stall" and rec.evidence["data_share"] == pytest.approx(0.5)


def test_healthy_exact_loop_is_silent() -> None:
    loop = Loop()
    loop.run(150)
    assert loop.events == [] and loop.rec.report().recommendations == []


def test_stall_that_stops_is_resolved() -> None:
    loop = Loop()
    loop.run(80, data_s=0.006)
    loop.run(80)
    report = loop.rec.report()
    assert report.recommendations == []
    assert [r.rule for r in report.resolved] == ["dataloader.stall"]


def test_severity_follows_the_magnitude_live() -> None:
    loop = Loop(fire_after=1, clear_after=1)
    loop.run(30, data_s=0.0015)  # warm-up + one window: 1.5 of 7.5 ms, 20%
    loop.run(25, data_s=0.010)  # the next window: 10 of 16 ms, 62%
    assert [(r.rule, r.severity) for _, r in loop.events] == [
        ("dataloader.stall", "warning"), ("dataloader.stall", "critical")
    ]


def test_disabled_and_overridden_through_the_recorder() -> None:
    loop = Loop(disabled_rules=["dataloader"])
    loop.run(60, data_s=0.006)
    assert loop.events == [] and loop.rec.report().recommendations == []
    loop = Loop(thresholds={"dataloader.stall.critical": 0.9})
    loop.run(60, data_s=0.006)
    assert [r.severity for _, r in loop.events] == ["warning"]
