"""memory.* rules on hand-built windows: host leak (CPU) and CUDA allocator figures."""

from __future__ import annotations

import pytest

from perfcallback.context import RunContext
from rules._windows import context, run, window

KIB, MIB, GIB = 2**10, 2**20, 2**30


def leak_window(slope: float, r2: float = 0.99, rss: float = 500 * MIB, steps: int = 25) -> object:
    return window(steps=steps, host_rss_bytes=rss, host_rss_slope_bytes_per_step=slope,
                  host_rss_r2=r2)


@pytest.mark.parametrize(
    ("slope", "r2", "fires"),
    [
        (63 * KIB, 0.99, False),  # below the slope threshold
        (64 * KIB, 0.99, True),  # at it (64 KiB x 24 steps = 1.5 MiB >= 1 MiB)
        (1 * MIB, 0.99, True),
        (1 * MIB, 0.5, False),  # not a line: one allocation, not a leak
        (1 * MIB, 0.8, True),  # at the r2 threshold
    ],
)
def test_host_leak_thresholds(slope: float, r2: float, fires: bool) -> None:
    rec = run("memory.host_leak", leak_window(slope, r2), context(host_memory_bytes=64 * GIB))
    assert (rec is not None) == fires
    if rec is not None:
        assert rec.category == "memory" and rec.severity == "warning"
        assert rec.evidence["rss_slope_bytes_per_step"] == slope
        assert "loss.item()" in rec.message and "detach" in rec.message


def test_host_leak_needs_enough_total_growth() -> None:
    # 100 KiB/step over 5 steps is 400 KiB: too little to tell from noise
    assert run("memory.host_leak", leak_window(100 * KIB, steps=5)) is None


def test_host_leak_critical_when_memory_runs_out_soon() -> None:
    ctx = context(host_memory_bytes=4 * GIB)
    rec = run("memory.host_leak", leak_window(1 * MIB, rss=1 * GIB), ctx)
    assert rec is not None and rec.severity == "critical"  # 3 GiB left at 1 MiB/step: 3072 steps
    assert rec.evidence["steps_until_host_memory_full"] == pytest.approx(3072)
    assert "3,072 more steps" in rec.message
    rec = run("memory.host_leak", leak_window(1 * MIB, rss=1 * GIB), ctx,
              {"memory.host_leak.critical_steps": 3000})
    assert rec is not None and rec.severity == "warning"


def test_no_rss_no_finding() -> None:
    assert run("memory.host_leak", window()) is None


CUDA = {"cuda_allocated_bytes": 10 * GIB, "cuda_reserved_bytes": 12 * GIB,
        "cuda_total_bytes": 80 * GIB, "cuda_peak_allocated_bytes": 20 * GIB}


def test_cuda_rules_silent_on_a_cpu_window() -> None:
    for rule_id in ("memory.device_leak", "memory.device_near_capacity", "memory.alloc_retries"):
        assert run(rule_id, window(cuda_alloc_retries=None)) is None


@pytest.mark.parametrize(("slope", "fires"), [(0.5 * MIB, False), (25 * MIB, True)])
def test_device_leak(slope: float, fires: bool) -> None:
    stats = window(**CUDA, cuda_allocated_slope_bytes_per_step=slope)
    rec = run("memory.device_leak", stats, context(device_type="cuda"))
    assert (rec is not None) == fires
    if rec is not None:  # 70 GiB left at 25 MiB/step: 2867 steps
        assert rec.severity == "critical" and "loss.detach()" in rec.message


@pytest.mark.parametrize(
    ("peak_gib", "severity"), [(70, None), (72, "warning"), (77.6, "critical"), (79, "critical")]
)
def test_device_near_capacity(peak_gib: float, severity: str | None) -> None:
    stats = window(**(CUDA | {"cuda_peak_allocated_bytes": peak_gib * GIB}))
    rec = run("memory.device_near_capacity", stats, context(device_type="cuda"))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert "expandable_segments:True" in rec.message


@pytest.mark.parametrize(("retries", "severity"), [(0, None), (1, "warning"), (5, "critical")])
def test_alloc_retries(retries: int, severity: str | None) -> None:
    rec = run("memory.alloc_retries", window(**CUDA, cuda_alloc_retries=retries),
              context(device_type="cuda"))
    assert (rec.severity if rec else None) == severity


def test_alloc_conf_already_expandable() -> None:
    ctx = RunContext(device_type="cuda", cuda_alloc_conf="expandable_segments:True")
    rec = run("memory.alloc_retries", window(**CUDA, cuda_alloc_retries=3), ctx)
    assert rec is not None and "already on" in rec.message
