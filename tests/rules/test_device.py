"""Device rules over NVML window figures: each fires on its evidence and stays silent without."""

from __future__ import annotations

from rules._windows import context, run, window

_GIB = 2**30


def _nvml(**figures: float) -> dict[str, float]:
    base = {"nvml_sm_util_pct": 97.0, "nvml_sm_clock_mhz": 1980.0, "nvml_sm_clock_max_mhz": 1980.0,
            "nvml_mem_used_bytes": 30.0 * _GIB, "nvml_mem_total_bytes": 80.0 * _GIB,
            "nvml_throttle_power_pct": 0.0, "nvml_throttle_thermal_pct": 0.0,
            "nvml_throttle_hw_slowdown_pct": 0.0}
    return base | figures


def test_a_healthy_gpu_gets_no_device_finding() -> None:
    for rule_id in ("device.gpu_idle", "device.clocks_throttled", "device.memory_near_capacity"):
        assert run(rule_id, window(extra=_nvml()), context(device_type="cuda")) is None, rule_id


def test_without_nvml_figures_the_device_rules_stay_silent() -> None:
    for rule_id in ("device.gpu_idle", "device.clocks_throttled", "device.memory_near_capacity"):
        assert run(rule_id, window(phases={"data": 0.5})) is None


def test_idle_gpu_names_the_data_wait() -> None:
    rec = run("device.gpu_idle", window(phases={"data": 0.3}, extra=_nvml(nvml_sm_util_pct=35)),
              context(device_type="cuda"))
    assert rec is not None and rec.severity == "warning"
    assert "65%" in rec.message and "num_workers" in rec.message
    assert rec.evidence["nvml_sm_util_pct"] == 35


def test_idle_gpu_without_a_host_phase_to_blame_names_launch_overhead() -> None:
    rec = run("device.gpu_idle", window(extra=_nvml(nvml_sm_util_pct=10)),
              context(device_type="cuda"))
    assert rec is not None and rec.severity == "critical" and "reduce-overhead" in rec.message


def test_thermal_throttling_is_named() -> None:
    extra = _nvml(nvml_sm_clock_mhz=1400, nvml_throttle_thermal_pct=60, nvml_temp_c=89)
    rec = run("device.clocks_throttled", window(extra=extra), context(device_type="cuda"))
    assert rec is not None and rec.severity == "warning"
    assert "thermal slowdown" in rec.message and rec.evidence["nvml_temp_c"] == 89
    extra["nvml_throttle_thermal_pct"] = 90
    rec = run("device.clocks_throttled", window(extra=extra), context(device_type="cuda"))
    assert rec is not None and rec.severity == "critical"


def test_power_cap_at_full_clock_is_not_throttling_and_below_it_is_info() -> None:
    full = _nvml(nvml_throttle_power_pct=100)
    assert run("device.clocks_throttled", window(extra=full)) is None
    low = _nvml(nvml_throttle_power_pct=100, nvml_sm_clock_mhz=1500)
    rec = run("device.clocks_throttled", window(extra=low))
    assert rec is not None and rec.severity == "info" and "nvidia-smi -pl" in rec.message


def test_device_memory_nearly_full_splits_ours_from_the_rest() -> None:
    extra = _nvml(nvml_mem_used_bytes=78.0 * _GIB)
    rec = run("device.memory_near_capacity", window(extra=extra, cuda_reserved_bytes=50.0 * _GIB))
    assert rec is not None and rec.severity == "warning"
    assert "50.0 GiB" in rec.message and rec.evidence["used_share"] == 78 / 80
    assert run("device.memory_near_capacity", window(extra=_nvml(
        nvml_mem_used_bytes=79.5 * _GIB))).severity == "critical"  # type: ignore[union-attr]
