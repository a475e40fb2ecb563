"""dataloader.stall on hand-built windows: grading, floors and the tailored fix."""

from __future__ import annotations

import pytest

from perfcallback.rules.dataloader import suggested_workers
from rules._windows import context, run, window

RULE = "dataloader.stall"
LOADER = {"num_workers": 0, "pin_memory": False, "persistent_workers": False,
          "prefetch_factor": None, "batch_size": 32}


@pytest.mark.parametrize(
    ("data_s", "severity"),
    [
        (0.049, None),  # below info
        (0.05, "info"),  # at info
        (0.0999, "info"),
        (0.10, "warning"),  # at warning
        (0.25, "warning"),
        (0.40, "critical"),  # at critical
        (0.61, "critical"),
    ],
)
def test_graded_by_data_share(data_s: float, severity: str | None) -> None:
    rec = run(RULE, window(phases={"data": data_s}), context(loader=LOADER))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "dataloader"
        assert rec.evidence["data_share"] == pytest.approx(data_s)
        assert rec.evidence["data_wait_s"] == pytest.approx(data_s)
        assert rec.est_gain == pytest.approx(data_s)


def test_mild_stall_is_not_critical() -> None:
    rec = run(RULE, window(phases={"data": 0.15}), context(loader=LOADER))
    assert rec is not None and rec.severity == "warning"


def test_silent_below_absolute_floor_even_at_a_high_share() -> None:
    # 0.4 ms of a 1 ms step: 40%, but workers could not cut a wait this short
    stats = window(step_s=1e-3, phases={"data": 4e-4})
    assert run(RULE, stats, context(loader=LOADER)) is None
    rec = run(RULE, stats, context(loader=LOADER), {"dataloader.stall.min_wait_s": 1e-4})
    assert rec is not None and rec.severity == "critical"


def test_message_quotes_the_users_settings_and_cores() -> None:
    rec = run(RULE, window(phases={"data": 0.61}), context(loader=LOADER, device_type="cuda"))
    assert rec is not None
    assert "num_workers=0" in rec.message and "pin_memory=False" in rec.message
    assert "Set num_workers=4" in rec.message and "you have 8 cores" in rec.message
    assert "pin_memory=True" in rec.message and "persistent_workers=True" in rec.message
    assert "61%" in rec.message


def test_pin_memory_only_suggested_on_cuda() -> None:
    rec = run(RULE, window(phases={"data": 0.3}), context(loader=LOADER))
    assert rec is not None and "pin_memory" not in rec.message


def test_workers_already_at_cores_points_at_the_dataset() -> None:
    loader = LOADER | {"num_workers": 4, "persistent_workers": True, "prefetch_factor": 4}
    rec = run(RULE, window(phases={"data": 0.3}), context(loader=loader))
    assert rec is not None
    assert "num_workers=4" in rec.message and "__getitem__" in rec.message


def test_plain_iterable_suggests_a_dataloader() -> None:
    rec = run(RULE, window(phases={"data": 0.3}), context(cpu_count=2))
    assert rec is not None
    assert "DataLoader(dataset, num_workers=1" in rec.message and "2 cores" in rec.message


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (8, 4), (64, 8)])
def test_suggested_workers(cores: int, workers: int) -> None:
    assert suggested_workers(cores) == workers


def test_loader_seen_in_a_trace_with_unknown_worker_count() -> None:
    loader = {"num_workers": None, "pin_memory": None, "persistent_workers": None,
              "prefetch_factor": None, "batch_size": None}
    rec = run(RULE, window(phases={"data": 0.3}), context(loader=loader, device_type="cuda"))
    assert rec is not None
    assert rec.message.startswith("Data wait is 30% of step time (300.0 ms/step). DataLoader uses")
    assert "num_workers=0" not in rec.message and "pin_memory=True" in rec.message
    assert "__getitem__" in rec.message
