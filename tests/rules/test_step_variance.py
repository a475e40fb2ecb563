"""step_variance.periodic_spikes and step_variance.erratic on hand-built step times."""

from __future__ import annotations

import pytest

from perfcallback.rules.step_variance import find_spikes
from rules._windows import run, window

BASE = 0.010  # a 10 ms step


def spiky(period: int, extra_s: float, n: int = 25, first: int = 6, phase: int = 0) -> list[float]:
    """Step times of ``n`` steps from ``first``; steps with index % period == phase spike."""
    return [BASE + (extra_s if (first + i) % period == phase else 0.0) for i in range(n)]


def test_finds_the_period_and_names_it() -> None:
    stats = window(times=spiky(5, 0.020), first_step=6)
    rec = run("step_variance.periodic_spikes", stats)
    assert rec is not None and rec.category == "step_variance"
    assert rec.evidence["period_steps"] == 5
    assert rec.evidence["spike_steps"] == [10, 15, 20, 25, 30]
    assert rec.evidence["spike_extra_s"] == pytest.approx(0.020)
    assert "Every 5 steps" in rec.message and "checkpoint" in rec.message
    assert run("step_variance.erratic", stats) is None  # one diagnosis, not two


@pytest.mark.parametrize(
    ("extra_s", "severity"),
    [
        (0.0, None),
        (0.006, None),  # 1.6x the median: not a spike
        (0.011, "warning"),  # 5 spikes x 11 ms over 25 x 10 ms + 55 ms: 18% of the time
        (0.080, "critical"),  # 5 x 80 ms: 62%
    ],
)
def test_periodic_graded_by_time_share(extra_s: float, severity: str | None) -> None:
    rec = run("step_variance.periodic_spikes", window(times=spiky(5, extra_s)))
    assert (rec.severity if rec else None) == severity


def test_periodic_share_at_thresholds() -> None:
    # 25 steps of 1 s, +1.25 s every 5th: 6.25 s of 31.25 s is a share of exactly 0.2
    times = [1.0 + (1.25 if i % 5 == 0 else 0.0) for i in range(25)]
    stats = window(times=times, first_step=5)
    for threshold, severity in ((0.2, "warning"), (0.2000001, None)):
        th = {"step_variance.periodic_spikes.warning": threshold}
        rec = run("step_variance.periodic_spikes", stats, thresholds=th)
        assert (rec.severity if rec else None) == severity
    rec = run("step_variance.periodic_spikes", stats,
              thresholds={"step_variance.periodic_spikes.critical": 0.2})
    assert rec is not None and rec.severity == "critical"
    assert rec.evidence["spike_share"] == 0.2


def test_two_spikes_are_not_a_period() -> None:
    times = [BASE] * 25
    times[3] = times[13] = 0.05
    assert run("step_variance.periodic_spikes", window(times=times)) is None


def test_tolerates_one_missed_beat_in_five() -> None:
    times = spiky(4, 0.03, n=32, first=0)  # beats at 0, 4, ..., 28: 8 beats
    times[12] = BASE  # one missed
    sp = find_spikes(times, range(len(times)), {})
    assert sp.period == 4 and len(sp.periodic_steps) == 7
    times[20] = BASE  # two of eight missed: no longer every 4 steps
    assert find_spikes(times, range(len(times)), {}).period != 4


def test_spike_must_clear_the_absolute_floor() -> None:
    # a 0.2 ms loop with 0.5 ms steps every 5: 2.5x the median but only 0.3 ms above it
    times = [0.0002 + (0.0003 if i % 5 == 0 else 0.0) for i in range(25)]
    assert find_spikes(times, range(len(times)), {}).steps == ()


@pytest.mark.parametrize(("n_spikes", "severity"), [(0, None), (1, "info"), (4, "info")])
def test_erratic_is_info_at_most(n_spikes: int, severity: str | None) -> None:
    times = [BASE] * 25
    for i in (2, 9, 11, 23)[:n_spikes]:
        times[i] = 0.04  # +30 ms each: one is 10.7% of the time, four are 32%
    rec = run("step_variance.erratic", window(times=times))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.evidence["spikes"] == n_spikes
        assert "bucket or pad" in rec.message


def test_long_periods_found_over_the_retained_steps() -> None:
    # 400 retained steps with a 60 ms spike every 50: one per 25-step window, a period over all
    indices = list(range(6, 406))
    recent = [BASE + (0.06 if i % 50 == 0 else 0.0) for i in indices]
    stats = window(times=recent[-25:], first_step=381, recent_step_times_s=tuple(recent),
                   recent_step_indices=tuple(indices))
    rec = run("step_variance.periodic_spikes", stats)
    assert rec is not None and rec.evidence["period_steps"] == 50
    assert rec.evidence["spikes"] == 8 and rec.evidence["spike_steps"][-1] == 400
    assert run("step_variance.erratic", stats) is None


def test_random_outliers_of_a_busy_machine_are_not_a_period() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):  # a fifth of 500 steps preempted at random
        recent = [BASE * (3.0 if rng.random() < 0.2 else 1.0) for _ in range(500)]
        indices = list(range(6, 506))
        sp = find_spikes(recent, indices, {})
        assert sp.period is None, sp


def test_periodic_spikes_stop_being_reported_once_they_stop() -> None:
    indices = list(range(6, 406))
    recent = [BASE + (0.06 if i % 10 == 0 and i < 250 else 0.0) for i in indices]
    assert find_spikes(recent, indices, {}).period is None  # 15 of 40 beats missing


def test_retained_steps_stay_sorted_as_windows_slide() -> None:
    """The retained steps' sorted order is carried across windows (``_SortedRetained``): it must
    equal a fresh sort in every window, as steps leave the ring, warm-up and resumed runs skip
    indices, and a second recorder interleaves its windows with the first."""
    import random

    from perfcallback.recorder import StepRecorder
    from perfcallback.rules import step_variance

    rng = random.Random(3)
    seen: list[tuple[tuple[float, ...], list[float]]] = []
    original = step_variance._SortedRetained.sorted_times

    def checked(self: object, times: tuple[float, ...], indices: tuple[int, ...]) -> list[float]:
        ordered = original(self, times, indices)  # type: ignore[arg-type]
        seen.append((times, ordered))
        return ordered

    step_variance._SortedRetained.sorted_times = checked  # type: ignore[method-assign]
    slides = step_variance._RETAINED.slides
    try:
        now = [0.0]
        recorders = [StepRecorder(warmup_steps=w, window_steps=10, buffer_steps=55, cuda=False,
                                  clock=lambda: now[0]) for w in (3, 0)]
        for step in range(400):
            rec = recorders[step % 7 == 0]  # the second recorder now and then
            rec.begin_step()
            spike = 0.05 if step % 9 == 0 else 0.0
            now[0] += BASE * rng.choice((1.0, 1.0, 1.01, 0.99)) + spike  # ties, too
            rec.end_step()
    finally:
        step_variance._SortedRetained.sorted_times = original  # type: ignore[method-assign]
    assert len(seen) > 30
    for times, ordered in seen:
        assert ordered == sorted(times)
    # most windows slid from the last one of their own recorder; the interleaved ones sorted anew
    assert len(seen) / 2 < step_variance._RETAINED.slides - slides < len(seen)
