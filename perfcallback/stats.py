"""Per-step records and the window summary that rules, sinks and the report read.

``StepRecord`` is what the hot path produces (a handful of floats). ``WindowStats`` summarises the
last N records (means, percentiles, trends); it is the single input type of every rule, whether the
window came from live steps or from a captured trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from perfcallback._record import field, record

if TYPE_CHECKING:
    from perfcallback.ranks import CrossRank

# Indices into StepRecord.phases; "other" is derived (step wall time minus the measured phases).
DATA, FORWARD, BACKWARD, OPTIMIZER, OTHER = range(5)
PHASE_NAMES: tuple[str, ...] = ("data", "forward", "backward", "optimizer", "other")


class StepRecord:
    """One measured step. Slotted and positional: it is built once per step on the hot path."""

    __slots__ = (
        "comm_s",
        "cuda",
        "gc_collections",
        "gc_pause_s",
        "index",
        "phases",
        "rss_bytes",
        "samples",
        "step_s",
        "t_end",
    )

    def __init__(
        self,
        index: int,
        step_s: float,
        phases: list[float],
        samples: int,
        rss_bytes: int,
        gc_pause_s: float,
        gc_collections: int,
        t_end: float,
        cuda: dict[str, float] | None = None,
        comm_s: float = 0.0,
    ) -> None:
        self.index = index
        self.step_s = step_s
        self.phases = phases
        self.samples = samples
        self.rss_bytes = rss_bytes
        self.gc_pause_s = gc_pause_s
        self.gc_collections = gc_collections
        self.t_end = t_end
        self.cuda = cuda
        self.comm_s = comm_s  # exposed gradient-sync wait inside backward (see hooks.py)


@record
class WindowStats:
    """Summary of consecutive measured steps; fields that were not measured are ``None``.

    Times are seconds per step (means unless named otherwise); shares are fractions of ``step_s``.
    """

    first_step: int
    last_step: int
    steps: int
    step_s: float
    step_p50_s: float
    step_p90_s: float
    step_p99_s: float
    step_max_s: float
    step_times_s: tuple[float, ...]
    phase_s: dict[str, float]
    steps_per_s: float
    samples_per_s: float | None = None
    # Host RSS at the window's end, and its trend: a straight line's slope and r2 (how well it
    # fits, 0..1) over the samples of the last few windows (one per window; see recorder.py).
    host_rss_bytes: float | None = None
    host_rss_slope_bytes_per_step: float | None = None
    host_rss_r2: float | None = None
    gc_pause_s: float = 0.0
    gc_collections_per_step: float = 0.0
    # Mean wait per step for gradient synchronisation at the end of backward (DDP's reducer, FSDP),
    # part of the backward phase: the communication compute did not hide, as this rank saw it.
    comm_exposed_s: float = 0.0
    # Its 25th percentile over the window: the wait that recurs every step (the network's share).
    # A wait that comes and goes is mostly the other ranks' step-to-step jitter, not bandwidth.
    comm_floor_s: float = 0.0
    device_step_s: float | None = None
    device_phase_s: dict[str, float] | None = None
    cuda_allocated_bytes: float | None = None
    cuda_reserved_bytes: float | None = None
    cuda_peak_allocated_bytes: float | None = None
    cuda_total_bytes: float | None = None
    cuda_allocated_slope_bytes_per_step: float | None = None
    cuda_alloc_retries: int | None = None
    # torch.compile (None when compile is not in use): frames compiled and seconds spent compiling
    # after step `compile_since_step` (the last counter snapshot before this window, so possibly a
    # few steps before `first_step`), and graph breaks traced since the monitor started.
    recompiles: int | None = None
    compile_s: float | None = None
    compile_since_step: int | None = None
    graph_breaks: int | None = None
    # Wall time and index of every retained step (the ring buffer, beyond this window), oldest
    # first: the longer horizon periodic-spike detection needs. Empty when not collected.
    recent_step_times_s: tuple[float, ...] = ()
    recent_step_indices: tuple[int, ...] = ()
    # Figures from other sources joined into the window (trace captures, cross-rank gathers),
    # keyed by the names in EXTRA_KEYS.
    extra: dict[str, float] = field(default_factory=dict)
    # Every rank's latest window as rank zero last read it, compared (None: one process, or not
    # rank zero, or nothing exchanged yet). See perfcallback.ranks.
    cross_rank: CrossRank | None = None

    def share(self, phase: str) -> float:
        """Share of the mean step spent in ``phase`` (0 when the step time is 0)."""
        return self.phase_s.get(phase, 0.0) / self.step_s if self.step_s > 0 else 0.0


# Keys of WindowStats.extra: GPU and distributed figures that come from profiler traces (a live
# capture or `perfcallback analyze`) or from cross-rank gathers. Percentages are of the mean step
# wall time unless noted; definitions follow HolisticTraceAnalysis where it has one.
EXTRA_KEYS: dict[str, str] = {
    "gpu_busy_pct": "share of the step with any GPU kernel or memcpy/memset running",
    "gpu_idle_pct": "share of the step with the GPU idle (HTA temporal breakdown)",
    "gpu_compute_pct": "share of the step in compute kernels (HTA)",
    "gpu_non_compute_pct": "share of the step in communication and memory kernels (HTA)",
    "comm_pct": "share of the step in communication (NCCL/RCCL/gloo) kernels",
    "comm_comp_overlap_pct": "share of communication time overlapped by compute kernels (HTA)",
    "idle_host_wait_pct": "share of GPU idle time spent waiting on the host (HTA idle breakdown)",
    "kernels_per_step": "GPU kernels launched per step",
    "short_kernel_pct": "share of kernels shorter than 10 microseconds",
    "launch_delay_us": "median delay from cudaLaunchKernel to kernel start",
    "h2d_pageable_pct": "share of host-to-device copies made from pageable memory",
    "h2d_pct": "share of the step in host-to-device copies",
    "sync_wait_pct": "share of host step time blocked in device synchronisation calls",
    "straggler_spread_pct": "(max - min) / mean step time across ranks, percent",
    "comm_wait_spread_pct": "(max - min) / mean communication time across ranks, percent",
    "slowest_rank": "rank with the longest mean step",
    "trace_first_step": "first step of the profiler capture the trace figures come from",
    "trace_last_step": "last step of that capture",
    "trace_age_windows": "windows since that capture's figures joined (they age out)",
    # Device telemetry (NVML, sampled on a background thread; means over the window)
    "nvml_sm_util_pct": "NVML: share of time a kernel ran on the GPU (SM utilisation), percent",
    "nvml_mem_util_pct": "NVML: share of time device memory was read or written, percent",
    "nvml_mem_used_bytes": "NVML: device memory in use, all processes",
    "nvml_mem_total_bytes": "NVML: device memory",
    "nvml_power_w": "NVML: board power draw, watts",
    "nvml_power_limit_w": "NVML: enforced power limit, watts",
    "nvml_sm_clock_mhz": "NVML: SM clock",
    "nvml_sm_clock_max_mhz": "NVML: maximum SM clock",
    "nvml_mem_clock_mhz": "NVML: memory clock",
    "nvml_mem_clock_max_mhz": "NVML: maximum memory clock",
    "nvml_temp_c": "NVML: GPU temperature, degrees Celsius",
    "nvml_throttle_power_pct": "NVML: share of samples with clocks held down by the power cap",
    "nvml_throttle_thermal_pct": "NVML: share of samples with thermal slowdown (software or HW)",
    "nvml_throttle_hw_slowdown_pct": "NVML: share of samples with hardware slowdown/power brake",
    "nvml_pcie_tx_mb_s": "NVML: PCIe transmit throughput, MiB/s",
    "nvml_pcie_rx_mb_s": "NVML: PCIe receive throughput, MiB/s",
    "nvml_gpu_count": "NVML: GPUs sampled for this process (means; memory: the fullest)",
    # Model FLOPs (counted once with FlopCounterMode, or given as flops_per_step=)
    "flops_per_step": "model FLOPs of one optimizer step on this rank",
    "tflops": "achieved model TFLOP/s on this rank (flops_per_step / mean step time)",
    "mfu": "model FLOPs utilisation: achieved FLOP/s / the device's dense peak (0..1)",
    # Host threads (read once per window)
    "intra_op_threads": "torch.get_num_threads() in the training process",
    "process_cpu_cores": "CPU time of this process per second of wall time (cores kept busy)",
    "load_avg_1m": "host load average over the last minute (runnable threads)",
}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Least-squares ``(slope, r_squared)`` of ``ys`` over ``xs``; ``None`` where undefined.

    Fewer than 3 points give ``(None, None)``; constant ``xs`` give no slope; constant ``ys`` give
    slope 0 and no r-squared.
    """
    n = len(xs)
    if n < 3:
        return None, None
    mx, my = sum(xs) / n, sum(ys) / n
    dx, dy = [x - mx for x in xs], [y - my for y in ys]  # list comprehensions: once per window
    sxx = sum([d * d for d in dx])
    if sxx == 0:
        return None, None
    syy = sum([d * d for d in dy])
    sxy = sum([a * b for a, b in zip(dx, dy, strict=True)])
    return sxy / sxx, (sxy * sxy / (sxx * syy) if syy else None)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs``; ``None`` with fewer than 3 points."""
    return linear_fit(xs, ys)[0]


def step_time_fields(times: Sequence[float]) -> dict[str, object]:
    """The step-time fields of a :class:`WindowStats` (mean, percentiles, rate) for ``times``.

    Shared by live windows, trace windows and tests, so every source summarises steps alike.
    """
    ordered = sorted(times)
    total = sum(times)
    return {
        "steps": len(times),
        "step_s": total / len(times),
        "step_p50_s": percentile(ordered, 50),
        "step_p90_s": percentile(ordered, 90),
        "step_p99_s": percentile(ordered, 99),
        "step_max_s": ordered[-1],
        "step_times_s": tuple(times),
        "steps_per_s": len(times) / total if total > 0 else 0.0,
    }


def summarize(
    records: Sequence[StepRecord],
    rss_samples: Sequence[tuple[int, int]] | None = None,
    **extra_fields: object,
) -> WindowStats:
    """Summarise ``records`` (oldest first, at least one) into a :class:`WindowStats`.

    ``rss_samples``: the ``(step, bytes)`` host RSS samples to fit the RSS trend over (the
    recorder's last few windows); by default, those the records carry. ``extra_fields`` fill
    fields the records do not carry (recompiles, CUDA totals, ...).
    """
    # Runs once per window between training steps: list comprehensions and one transpose of the
    # phase lists (C loops), not a generator per figure.
    n = len(records)
    times = [r.step_s for r in records]
    total = sum(times)
    columns = zip(*[r.phases for r in records], strict=True)
    phase_s = {name: sum(column) / n for name, column in zip(PHASE_NAMES, columns, strict=True)}
    samples = sum([r.samples for r in records])
    comm = [r.comm_s for r in records]
    fields: dict[str, object] = {
        "first_step": records[0].index,
        "last_step": records[-1].index,
        **step_time_fields(times),
        "phase_s": phase_s,
        "samples_per_s": samples / total if samples and total > 0 else None,
        "gc_pause_s": sum([r.gc_pause_s for r in records]) / n,
        "gc_collections_per_step": sum([r.gc_collections for r in records]) / n,
        "comm_exposed_s": sum(comm) / n,
        "comm_floor_s": percentile(sorted(comm), 25) if any(comm) else 0.0,
    }
    if rss_samples is None:
        rss_samples = [(r.index, r.rss_bytes) for r in records if r.rss_bytes > 0]
    if rss_samples:
        fields["host_rss_bytes"] = float(rss_samples[-1][1])
        xs, ys = [float(i) for i, _ in rss_samples], [float(b) for _, b in rss_samples]
        fields["host_rss_slope_bytes_per_step"], fields["host_rss_r2"] = linear_fit(xs, ys)
    cuda = [r for r in records if r.cuda is not None]
    if cuda:
        last = cuda[-1].cuda or {}
        fields["cuda_allocated_bytes"] = last.get("allocated_bytes")
        fields["cuda_reserved_bytes"] = last.get("reserved_bytes")
        fields["cuda_peak_allocated_bytes"] = max(
            (r.cuda or {}).get("peak_allocated_bytes", 0.0) for r in cuda
        )
        fields["cuda_allocated_slope_bytes_per_step"] = slope(
            [float(r.index) for r in cuda],
            [(r.cuda or {}).get("allocated_bytes", 0.0) for r in cuda],
        )
    fields.update(extra_fields)
    return WindowStats(**fields)  # type: ignore[arg-type]
