"""Telemetry probes: the NVML sampler thread (a stand-in NVML module: no GPU here), the FLOP count
and MFU (real FlopCounterMode), and the host-threads figures (a real loop)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pynvml
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from perfcallback import PerfMonitor
from perfcallback.context import RunContext
from perfcallback.sinks.tensorboard import window_scalars
from perfcallback.telemetry.flops import (
    PEAKS,
    MfuProbe,
    StepFlopCounter,
    compute_dtype,
    peak_flops,
)
from perfcallback.telemetry.host import HostThreadsProbe
from perfcallback.telemetry.nvml import NvmlSampler

from _helpers import make_loader, tiny_model


class StandInNvml:
    """An object with pynvml's API names, its constants and its error class, scripted per device.

    The one stand-in of the test suite: there is no NVIDIA driver on the CI machine. The real
    NVML path runs in ``test_real_nvml_matches_torch`` (marked gpu).
    """

    NVMLError = pynvml.NVMLError
    NVML_CLOCK_SM, NVML_CLOCK_MEM = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_PCIE_UTIL_TX_BYTES = pynvml.NVML_PCIE_UTIL_TX_BYTES
    NVML_PCIE_UTIL_RX_BYTES = pynvml.NVML_PCIE_UTIL_RX_BYTES

    def __init__(self, *, util: float = 95.0, sm_clock: float = 1980.0, reasons: int = 0,
                 used: float = 40 * 2**30, power_supported: bool = True,
                 init_error: Exception | None = None) -> None:
        self.util, self.sm_clock, self.reasons, self.used = util, sm_clock, reasons, used
        self.power_supported, self.init_error = power_supported, init_error
        self.calls: dict[str, int] = {}
        self.threads: set[str] = set()
        self.shut_down = False

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.threads.add(threading.current_thread().name)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"handle{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return f"handle-{uuid}"

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        self._call("util")
        return pynvml.c_nvmlUtilization_t(gpu=int(self.util), memory=30)

    def nvmlDeviceGetMemoryInfo(self, h: str) -> Any:
        self._call("memory")
        return pynvml.c_nvmlMemory_t(total=80 * 2**30, free=int(80 * 2**30 - self.used),
                                     used=int(self.used))

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        self._call("power")
        if not self.power_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 650_000  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> int:
        return int(self.sm_clock) if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> int:
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 71

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        return self.reasons

    def nvmlDeviceGetPcieThroughput(self, h: str, counter: int) -> int:
        return 2048 if counter == self.NVML_PCIE_UTIL_TX_BYTES else 1024  # KB/s


def _gather(sampler: NvmlSampler, samples: int = 3) -> None:
    """Start the thread (first window), let it take ``samples`` readings, close the window."""
    sampler.sample()
    deadline = time.monotonic() + 10
    while sampler._samples < samples and time.monotonic() < deadline:
        time.sleep(0.02)
    sampler.sample()


def test_sampler_gives_window_means_from_its_own_thread() -> None:
    nvml = StandInNvml(util=40.0, sm_clock=1485.0, reasons=0x20)  # SwThermalSlowdown
    sampler = NvmlSampler(lambda: ["GPU-abc", 1], interval_s=0.1, nvml=nvml)
    try:
        _gather(sampler)
        fig = sampler.figures(0.1)
    finally:
        sampler.close()
    assert fig["nvml_sm_util_pct"] == 40.0 and fig["nvml_gpu_count"] == 2.0
    assert fig["nvml_mem_used_bytes"] == 40 * 2**30 and fig["nvml_mem_total_bytes"] == 80 * 2**30
    assert fig["nvml_power_w"] == 650.0 and fig["nvml_power_limit_w"] == 700.0
    assert fig["nvml_sm_clock_mhz"] == 1485.0 and fig["nvml_sm_clock_max_mhz"] == 1980.0
    assert fig["nvml_throttle_thermal_pct"] == 100.0 and fig["nvml_throttle_power_pct"] == 0.0
    assert fig["nvml_pcie_tx_mb_s"] == 2.0 and fig["nvml_temp_c"] == 71.0
    assert nvml.threads == {"perfcallback-nvml"}  # never the training thread
    assert nvml.shut_down and not sampler.running


def test_a_figure_the_device_lacks_is_asked_for_once() -> None:
    nvml = StandInNvml(power_supported=False)
    sampler = NvmlSampler(lambda: [0], interval_s=0.1, nvml=nvml)
    try:
        _gather(sampler, samples=4)
    finally:
        sampler.close()
    assert nvml.calls["power"] == 1 and nvml.calls["util"] >= 4
    assert "nvml_power_w" not in sampler.latest and "nvml_sm_util_pct" in sampler.latest


def test_without_nvml_it_says_so_once_at_info_and_gives_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sampler = NvmlSampler(lambda: [0], nvml=StandInNvml(init_error=error))
    with caplog.at_level(logging.DEBUG, logger="perfcallback"):
        for _ in range(3):
            sampler.sample()
        sampler.close()
    mine = [r for r in caplog.records if r.name == "perfcallback"]
    assert [r.levelname for r in mine] == ["INFO"] and "NVML is not available" in mine[0].message
    assert sampler.figures(0.1) == {} and not sampler.running


@pytest.mark.slow
def test_a_monitored_loop_reports_nvml_figures_and_the_device_rules_fire() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nvml = StandInNvml(util=20.0)
    perf = PerfMonitor(model=model, optimizer=opt, warmup_steps=1, window_steps=4,
                       log_recommendations=False, nvml=False)
    perf.recorder.probes.append(NvmlSampler(lambda: [0], interval_s=0.1, nvml=nvml))
    with perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * 17)):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
                time.sleep(0.03)  # lets the 10 Hz thread take samples within each window
    report = perf.report()
    assert report.gpu["nvml_sm_util_pct"] == 20.0
    assert report.to_dict()["gpu"]["nvml_sm_util_pct"] == 20.0
    assert "device.gpu_idle" in {r.rule for r in report.recommendations}
    window = perf.recorder.window()
    assert window is not None
    assert dict(window_scalars(window))["perf/gpu/sm_util_pct"] == 20.0
    assert nvml.shut_down  # stopped at close


@pytest.mark.gpu
def test_real_nvml_matches_torch() -> None:
    from perfcallback.telemetry.nvml import torch_device_ids

    torch.zeros(1, device="cuda")
    sampler = NvmlSampler(lambda: torch_device_ids(None), interval_s=0.1)
    try:
        _gather(sampler)
    finally:
        sampler.close()
    total = torch.cuda.get_device_properties(0).total_memory
    fig = sampler.latest
    assert fig["nvml_mem_total_bytes"] == pytest.approx(total, rel=0.02)
    assert 0 <= fig["nvml_sm_util_pct"] <= 100 and fig["nvml_sm_clock_max_mhz"] > 0


# ----------------------------------------------------------------- FLOPs and MFU
def _train(perf: PerfMonitor, model: torch.nn.Module, opt: torch.optim.Optimizer,
           batches: int) -> None:
    for x, y in perf.wrap_loader(make_loader(n=8 * batches)):
        with perf.step():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()


def test_flops_per_step_matches_flop_counter_mode_on_the_same_step() -> None:
    model = tiny_model(width=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=4,
                     log_recommendations=False) as perf:
        _train(perf, model, opt, 12)
    report = perf.report()
    x, y = next(iter(make_loader(n=8)))
    with FlopCounterMode(display=False) as mode:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    expected = mode.get_total_flops()
    assert expected > 0
    assert report.flops_per_step == pytest.approx(expected, rel=0.05)
    assert report.steps == 10  # the counted step was a warm-up step: nothing else left out
    assert report.mfu is None  # a CPU has no peak in the table
    assert report.throughput["tflops"] == pytest.approx(
        expected / report.breakdown["step"] / 1e12, rel=1e-6)
    d = report.to_dict()
    assert d["flops_per_step"] == report.flops_per_step and d["mfu"] is None


def test_a_given_flops_per_step_is_used_and_nothing_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered: list[int] = []
    original = FlopCounterMode.__enter__
    monkeypatch.setattr(FlopCounterMode, "__enter__",
                        lambda self: entered.append(1) or original(self))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=4,
                     log_recommendations=False, flops_per_step=1e9) as perf:
        _train(perf, model, opt, 8)
    assert perf.report().flops_per_step == 1e9 and entered == []


def test_a_model_the_counter_cannot_count_fails_open(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: FlopCounterMode) -> int:
        raise RuntimeError("no formula for a custom op")

    monkeypatch.setattr(FlopCounterMode, "get_total_flops", broken)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=4,
                     log_recommendations=False) as perf:
        _train(perf, model, opt, 8)
    report = perf.report()
    assert report.steps == 6 and report.flops_per_step is None
    assert set(report.disabled) == {"flop_count"}


@pytest.mark.parametrize(
    ("facts", "dtype"),
    [
        ({"autocast_seen": True, "autocast_dtype": "bfloat16"}, "bf16"),
        ({"autocast_seen": True, "autocast_dtype": "float16"}, "fp16"),
        ({"param_dtype": "bfloat16"}, "bf16"),
        ({"param_dtype": "float32", "float32_matmul_precision": "high",
          "cuda_capability": (9, 0)}, "tf32"),
        ({"param_dtype": "float32", "float32_matmul_precision": "high",
          "cuda_capability": (7, 0)}, "fp32"),
        ({"param_dtype": "float32", "float32_matmul_precision": "highest",
          "cuda_capability": (9, 0)}, "fp32"),
    ],
)
def test_compute_dtype_follows_autocast_params_and_tf32(facts: dict[str, Any], dtype: str) -> None:
    assert compute_dtype(RunContext(device_type="cuda", **facts)) == dtype


def test_mfu_uses_the_table_peak_of_the_device_and_dtype() -> None:
    ctx = RunContext(device_type="cuda", autocast_seen=True, autocast_dtype="bfloat16")
    counter = StepFlopCounter(flops_per_step=4.0e14)
    probe = MfuProbe(counter, ctx, lambda: "NVIDIA H100 80GB HBM3")
    probe.sample()
    fig = probe.figures(1.0)
    assert fig["tflops"] == 400.0
    assert fig["mfu"] == pytest.approx(4.0e14 / peak_flops("NVIDIA H100 80GB HBM3", "bf16"))
    assert peak_flops("NVIDIA H100 PCIe", "bf16") != peak_flops("NVIDIA H100 80GB HBM3", "bf16")
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("NVIDIA A10", "bf16") == 125e12 and peak_flops("NVIDIA A10G", "bf16") is None
    assert peak_flops("NVIDIA L40S", "fp32") != peak_flops("NVIDIA L4", "fp32")
    assert peak_flops("AMD Instinct MI300X", "bf16") and peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    unknown = MfuProbe(counter, ctx, lambda: "Some Future GPU")
    unknown.sample()
    assert "mfu" not in unknown.figures(1.0)


def test_every_peak_cites_its_source() -> None:
    for row in PEAKS:
        assert "datasheet" in row.source.lower() or "specification" in row.source.lower()
        assert "https://" in row.source and row.flops
        assert all(v > 1e12 for v in row.flops.values())


# ----------------------------------------------------------------- host threads
def test_host_figures_join_every_window_of_a_real_loop() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=1, window_steps=4,
                     log_recommendations=False) as perf:
        _train(perf, model, opt, 9)
    window = perf.recorder.window()
    assert window is not None
    assert window.extra["intra_op_threads"] == torch.get_num_threads()
    assert window.extra["process_cpu_cores"] > 0
    assert dict(window_scalars(window))["perf/host/intra_op_threads"] == torch.get_num_threads()


def test_host_figures_are_read_at_most_every_min_interval() -> None:
    """Two of the three reads are syscalls: windows closer than ``min_interval_s`` to the last
    sample keep its figures, and the next sample covers the whole time since."""
    now = {"wall": 0.0, "cpu": 0.0}
    reads: list[str] = []

    def clock(name: str) -> Any:
        def read() -> float:
            reads.append(name)
            return now[name]
        return read

    probe = HostThreadsProbe(wall=clock("wall"), cpu=clock("cpu"), load=lambda: 1.5,
                             min_interval_s=0.5)
    now.update(wall=0.1, cpu=0.2)
    probe.sample()  # the first window is always sampled
    assert probe.figures(0.01)["process_cpu_cores"] == pytest.approx(2.0)
    reads.clear()
    now.update(wall=0.3, cpu=0.3)
    probe.sample()
    assert reads == ["wall"]  # no CPU time (nor load) read 0.2 s after the last sample
    assert probe.figures(0.01)["process_cpu_cores"] == pytest.approx(2.0)
    now.update(wall=0.7, cpu=0.8)
    probe.sample()
    assert probe.figures(0.01)["process_cpu_cores"] == pytest.approx((0.8 - 0.2) / (0.7 - 0.1))
    assert probe.figures(0.01)["load_avg_1m"] == 1.5


def test_a_cpu_run_says_once_at_info_that_there_is_no_gpu_telemetry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import perfcallback.telemetry as telemetry

    monkeypatch.setattr(telemetry, "_said", set())
    with caplog.at_level(logging.DEBUG, logger="perfcallback"):
        for _ in range(2):
            model = tiny_model()
            with PerfMonitor(model=model, log_recommendations=False) as perf:
                assert not any(p.name == "nvml" for p in perf.recorder.probes)
    mine = [r for r in caplog.records if r.name == "perfcallback"]
    assert [(r.levelname, "no GPU telemetry" in r.getMessage()) for r in mine] == [("INFO", True)]
