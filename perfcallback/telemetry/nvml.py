"""NVML device telemetry, sampled on a background daemon thread, averaged per window.

Design notes:
- Never on the training thread: one daemon thread reads NVML every ``interval_s`` (5 Hz by
  default) and adds each reading to running sums under a lock. Once per window the recorder calls
  :meth:`NvmlSampler.sample`, which swaps the sums out (a few dict operations) and keeps their
  means. Memory is bounded (sums, not series); the thread is stopped and joined at :meth:`close`.
- Lazy: ``pynvml`` (the ``nvml`` extra, ``nvidia-ml-py``) is imported at the first window, not
  when the monitor is built; the devices to sample are read from torch (their UUIDs) on the
  training thread then. Everything that talks to the driver (``nvmlInit``, which can take a
  while, the handles, the static figures, the samples) runs on the sampler's thread.
- Without NVML (a CPU-only run, another vendor, no driver, the extra missing) the sampler says so
  once at INFO level and produces no figures; nothing else changes.
- A figure a device does not support (power on some boards, PCIe counters in some VMs) is read
  once, fails with ``NVMLError``, and is not read again.
- PCIe throughput counters block for ~20 ms inside the driver, so they are read every
  ``_PCIE_EVERY``-th sample only; NVLink counters are not read (they need per-link setup).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("perfcallback")

DEFAULT_INTERVAL_S = 0.2  # 5 Hz: NVML's utilisation counters update every 1/6 s to 1 s anyway
_PCIE_EVERY = 10  # samples between PCIe throughput reads (each blocks ~20 ms in the driver)
_JOIN_TIMEOUT_S = 2.0
# Clock event ("throttle") reason bits, from nvml.h (nvmlClocksEventReason*).
_POWER_CAP = 0x4  # SwPowerCap
_HW_SLOWDOWN = 0x8 | 0x80  # HwSlowdown | HwPowerBrakeSlowdown
_THERMAL = 0x20 | 0x40  # SwThermalSlowdown | HwThermalSlowdown

DeviceIds = Callable[[], Sequence[str | int]]  # NVML UUIDs ("GPU-...") or NVML indices


class NvmlSampler:
    """Samples NVML for the GPUs this process uses and gives per-window means.

    Args:
        devices: Returns the devices to sample (NVML UUIDs or indices); called once, on the
            training thread, at the first window.
        interval_s: Seconds between samples (0.1 to 1: 1-10 Hz).
        nvml: The ``pynvml`` module, or an object with its API (tests inject one); ``None``
            imports ``pynvml`` at the first window.

    Example::

        >>> sampler = NvmlSampler(lambda: [0])
        >>> sampler.sample()  # first window: starts the thread (or logs that NVML is missing)
        >>> sampler.figures(0.1)  # doctest: +SKIP
        {'nvml_sm_util_pct': 97.0, ...}
        >>> sampler.close()
    """

    name = "nvml"

    def __init__(self, devices: DeviceIds, *, interval_s: float = DEFAULT_INTERVAL_S,
                 nvml: Any = None) -> None:
        if not 0.1 <= interval_s <= 1.0:
            raise ValueError(f"interval_s must be in [0.1, 1] (1-10 Hz), got {interval_s!r}")
        self._devices, self.interval_s, self._nvml = devices, interval_s, nvml
        self._handles: list[Any] = []
        self._static: list[dict[str, float]] = []  # per device: totals and limits, read once
        self._sums: list[dict[str, float]] = []
        self._counts: list[dict[str, int]] = []
        self._unsupported: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "new"  # new -> running | unavailable -> closed
        self._samples = 0
        self.latest: dict[str, float] = {}  # the last closed window's figures

    # ----------------------------------------------------------------- recorder interface
    def sample(self) -> None:
        """Close the window: keep the means gathered since the last call (training thread)."""
        if self._state == "new":
            self._start()
        if self._state != "running":
            return
        with self._lock:
            sums, counts, static = self._sums, self._counts, self._static
            self._sums = [{} for _ in sums]
            self._counts = [{} for _ in counts]
        self.latest = _window_figures(sums, counts, static)

    def figures(self, step_s: float) -> dict[str, float]:
        return self.latest

    def close(self) -> None:
        """Stop and join the thread, shut NVML down. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            self._thread = None
        state, self._state = self._state, "closed"
        if state == "running":
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down anyway
                logger.debug("perfcallback: nvmlShutdown failed", exc_info=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- start-up
    def _start(self) -> None:
        """Training thread, first window: find the devices, start the thread."""
        self._state = "unavailable"
        nvml = self._nvml if self._nvml is not None else _import_pynvml()
        if nvml is None:
            return
        self._nvml = nvml
        devices = list(self._devices())
        self._state = "running"
        self._thread = threading.Thread(target=self._run, args=(devices,),
                                        name="perfcallback-nvml", daemon=True)
        self._thread.start()

    def _open(self, devices: list[str | int]) -> bool:
        """Sampler thread: initialise NVML and read what does not change; ``False`` if NVML is
        not there (said once, at INFO: expected on CPU-only machines)."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            logger.info("perfcallback: NVML is not available (%s): no GPU telemetry", exc)
            return False
        try:
            handles = [_handle(nvml, d) for d in devices]
        except Exception as exc:
            logger.info("perfcallback: NVML cannot find this process's GPUs %s (%s): no GPU "
                        "telemetry", devices, exc)
            nvml.nvmlShutdown()
            return False
        static = [self._static_figures(h) for h in handles]
        with self._lock:
            self._handles, self._static = handles, static
            self._sums = [{} for _ in handles]
            self._counts = [{} for _ in handles]
        return True

    def _static_figures(self, handle: Any) -> dict[str, float]:
        nvml, out = self._nvml, {}
        reads: dict[str, Callable[[], float]] = {
            "mem_total_bytes": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            "power_limit_w": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
            "sm_clock_max_mhz": lambda: float(
                nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)),
            "mem_clock_max_mhz": lambda: float(
                nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        }
        for key, read in reads.items():
            value = self._read(key, read)
            if value is not None:
                out[key] = value
        return out

    # ----------------------------------------------------------------- the thread
    def _run(self, devices: list[str | int]) -> None:
        if not self._open(devices):
            self._state = "unavailable"
            return
        while not self._stop.wait(self.interval_s):
            try:
                self.sample_once()
            except Exception:  # fail open: the thread stops, training goes on
                logger.warning("perfcallback: NVML sampling failed; GPU telemetry is off",
                               exc_info=True)
                return

    def sample_once(self) -> None:
        """Read every device once and add the readings to the window's sums."""
        self._samples += 1
        readings = [self._read_device(h) for h in self._handles]
        with self._lock:
            for sums, counts, reading in zip(self._sums, self._counts, readings, strict=True):
                for key, value in reading.items():
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1

    def _read_device(self, h: Any) -> dict[str, float]:
        nvml, out = self._nvml, {}
        util = self._read("util", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            out["sm_util_pct"], out["mem_util_pct"] = float(util.gpu), float(util.memory)
        reads: dict[str, Callable[[], float]] = {
            "mem_used_bytes": lambda: float(nvml.nvmlDeviceGetMemoryInfo(h).used),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1e3,  # mW
            "sm_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
            "mem_clock_mhz": lambda: float(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)),
            "temp_c": lambda: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
        }
        if self._samples % _PCIE_EVERY == 1:
            reads["pcie_tx_mb_s"] = lambda: nvml.nvmlDeviceGetPcieThroughput(
                h, nvml.NVML_PCIE_UTIL_TX_BYTES) / 1024  # KB/s
            reads["pcie_rx_mb_s"] = lambda: nvml.nvmlDeviceGetPcieThroughput(
                h, nvml.NVML_PCIE_UTIL_RX_BYTES) / 1024
        for key, read in reads.items():
            value = self._read(key, read)
            if value is not None:
                out[key] = value
        reasons = self._read("reasons", lambda: _event_reasons(nvml, h))
        if reasons is not None:
            bits = int(reasons)
            out["throttle_power_pct"] = 100.0 if bits & _POWER_CAP else 0.0
            out["throttle_thermal_pct"] = 100.0 if bits & _THERMAL else 0.0
            out["throttle_hw_slowdown_pct"] = 100.0 if bits & _HW_SLOWDOWN else 0.0
        return out

    def _read(self, key: str, read: Callable[[], Any]) -> Any:
        """``read()``, or ``None`` once the device has said it does not support ``key``."""
        if key in self._unsupported:
            return None
        try:
            return read()
        except self._nvml.NVMLError:
            self._unsupported.add(key)
            return None


def _event_reasons(nvml: Any, handle: Any) -> int:
    """Clock event reasons (named "throttle reasons" before NVML 12.2)."""
    read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if read is None:
        read = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(read(handle))


def _handle(nvml: Any, device: str | int) -> Any:
    if isinstance(device, str):
        return nvml.nvmlDeviceGetHandleByUUID(device)
    return nvml.nvmlDeviceGetHandleByIndex(device)


def _window_figures(sums: list[dict[str, float]], counts: list[dict[str, int]],
                    static: list[dict[str, float]]) -> dict[str, float]:
    """Per-device means, then across devices: mean, except memory (the fullest device) and the
    temperature and throttling (the worst device)."""
    per_device = [{k: s[k] / c[k] for k in s} | st
                  for s, c, st in zip(sums, counts, static, strict=True)]
    per_device = [d for d in per_device if "sm_util_pct" in d or "mem_used_bytes" in d]
    if not per_device:
        return {}
    out: dict[str, float] = {"nvml_gpu_count": float(len(per_device))}
    worst = ("temp_c", "throttle_power_pct", "throttle_thermal_pct", "throttle_hw_slowdown_pct")
    keys = {k for d in per_device for k in d}
    for key in sorted(keys - {"mem_used_bytes", "mem_total_bytes"}):
        values = [d[key] for d in per_device if key in d]
        out[f"nvml_{key}"] = max(values) if key in worst else sum(values) / len(values)
    with_memory = [d for d in per_device if "mem_used_bytes" in d and d.get("mem_total_bytes")]
    if with_memory:
        fullest = max(with_memory, key=lambda d: d["mem_used_bytes"] / d["mem_total_bytes"])
        out["nvml_mem_used_bytes"] = fullest["mem_used_bytes"]
        out["nvml_mem_total_bytes"] = fullest["mem_total_bytes"]
    return out


def cuda_index(device: Any = None) -> int:
    """Index of the CUDA device ``device`` (a ``torch.device``, an int, or ``None``: current)."""
    import torch

    if isinstance(device, int):
        return device
    if device is not None and torch.device(device).index is not None:
        return int(torch.device(device).index)
    return int(torch.cuda.current_device())


def torch_device_ids(device: Any = None) -> list[str | int]:
    """NVML ids of the CUDA device ``device`` (``None``: the current one): its UUID, so that
    ``CUDA_VISIBLE_DEVICES`` renumbering cannot point NVML at another GPU."""
    import torch

    index = cuda_index(device)
    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        return [uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index < len(ids) and ids[index].isdigit():
        return [int(ids[index])]
    return [index]


def _import_pynvml() -> Any:
    from perfcallback._optional import MissingExtraError, require

    try:
        return require("pynvml", extra="nvml")
    except MissingExtraError as exc:
        logger.info("perfcallback: no GPU telemetry: %s", exc)
        return None
