"""Every rule threshold, in one place, each with the reason for its value.

Names are ``<rule id>.<parameter>``. Graded rules read ``<rule id>.info``, ``.warning`` and
``.critical``: the measured figure at or above each one sets the severity (see :func:`grade`).
Shares are fractions of the mean step wall time (0.10 = 10%). Users override any value by name::

    PerfMonitor(..., thresholds={"dataloader.stall.warning": 0.2})

Unknown names under a built-in category (``"dataloader.stall.warn"``) are rejected
(:func:`validate_overrides`), so a typo never silently does nothing; other names are left to
custom rules, which read their own thresholds from the same mapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from perfcallback.report import CATEGORIES, Severity

_KIB, _MIB = 2**10, 2**20

DEFAULTS: dict[str, float] = {
    # --- dataloader.stall: share of the step the loop waits for its next batch.
    "dataloader.stall.info": 0.05,  # visible, but prefetching workers would save little
    "dataloader.stall.warning": 0.10,  # the tb_plugin/kineto advisor's "dataloader_ratio > 0.05"
    # rule, made stricter: at 10% a worker pool pays for itself on any multi-core host
    "dataloader.stall.critical": 0.40,  # the loop is mostly waiting: data is *the* bottleneck
    "dataloader.stall.min_wait_s": 5e-4,  # a worker hands over a batch through shared memory
    # and a queue in ~0.1-0.5 ms, so waits below this cannot be cut by adding workers
    # --- optimizer.dominant: share of the step inside optimizer.step().
    # Forward+backward cost ~6 FLOPs per parameter per sample; Adam ~10-20 memory-bound ops per
    # parameter per step. With any real batch the optimizer is a small share (5-15% is typical).
    "optimizer.dominant.info": 0.25,
    "optimizer.dominant.warning": 0.35,  # per-tensor Python loops, or a model of mostly
    # embeddings/parameters with little compute per step: the fused kernels help most here
    "optimizer.dominant.critical": 0.60,  # the step is mostly parameter updates
    "optimizer.dominant.min_s": 5e-4,  # below 0.5 ms/step the fix saves less than the loop's own
    # Python overhead per step
    # --- step_variance.*: outlier steps, judged against the window's median step.
    "step_variance.spike_ratio": 2.0,  # a step at least twice the median is an outlier
    "step_variance.spike_min_s": 1e-3,  # ...and at least 1 ms over it: scheduler and timer noise
    # on a busy host is of that order
    "step_variance.periodic_spikes.min_spikes": 3,  # 3 spikes = 2 equal gaps: a period, not luck
    "step_variance.periodic_spikes.coverage": 0.8,  # share of the expected periodic steps that
    # must actually spike: one missed beat in five is tolerated; 3 of 4 is too easily chance
    "step_variance.periodic_spikes.warning": 0.05,  # time above the median in the spikes, as a
    # share of the window: periodic work costing 5% is worth making asynchronous
    "step_variance.periodic_spikes.critical": 0.25,
    "step_variance.erratic.info": 0.10,  # outliers without a period. Info only, by design: on a
    # shared machine, CPU contention alone puts a third of the time in such outliers (measured on
    # this project's 2-core CI host), so they do not prove a fault in the training code
    # --- memory.host_leak: least-squares slope of host RSS over the window's steps.
    "memory.host_leak.min_bytes_per_step": 64 * _KIB,  # allocator and page-cache noise stays
    # well below this; a leaked activation graph of even a small model is above it
    "memory.host_leak.min_growth_bytes": 1 * _MIB,  # total growth over the window (short windows)
    "memory.host_leak.min_r2": 0.8,  # growth must be steady (a line), not one step up
    "memory.host_leak.critical_steps": 10_000,  # critical when, at this rate, the host's free
    # memory is gone within this many steps (well inside one epoch of a typical run)
    # --- memory.device_*: CUDA caching-allocator figures.
    "memory.device_leak.min_bytes_per_step": 1 * _MIB,  # allocations are rounded to 512 B/2 MiB
    # blocks; steady growth beyond 1 MiB per step is not rounding
    "memory.device_leak.min_growth_share": 0.05,  # ...and 5% of what is allocated, per window
    "memory.device_leak.critical_steps": 10_000,  # as for the host leak
    "memory.device_near_capacity.warning": 0.90,  # peak allocated / device total: fragmentation
    # starts causing cudaMalloc retries (cache flushes) in this range
    "memory.device_near_capacity.critical": 0.97,  # one larger batch from an OOM
    "memory.alloc_retries.warning": 1,  # retries in the window: every retry frees the cache and
    # synchronises the device, costing milliseconds
    "memory.alloc_retries.critical": 0.2,  # retries per step: the allocator thrashes
    # --- gc.pauses: time inside Python's cyclic garbage collector, share of the step.
    "gc.pauses.info": 0.02,
    "gc.pauses.warning": 0.05,  # more than the monitor's own overhead budget several times over
    "gc.pauses.critical": 0.25,
    "gc.pauses.min_s": 2e-4,  # a young collection takes tens of microseconds; ignore below this
    "gc.pauses.long_pause_s": 5e-3,  # mean pause per collection above this means full
    # collections over a large heap (gc.freeze() helps) rather than frequent young ones
    # --- recompilation.*: torch._dynamo counters, read once per window.
    "recompilation.recompiles.min_count": 2,  # frames compiled during measured steps; one can
    # be a last, smaller batch and is harmless
    "recompilation.recompiles.warning": 0.05,  # compile time as a share of the window
    "recompilation.recompiles.critical": 0.25,
    "recompilation.graph_breaks.info": 1,  # graph breaks traced since the monitor started
    "recompilation.graph_breaks.warning": 8,  # as many breaks as dynamo's default recompile
    # limit: the model runs as many small graphs, losing most fusion
    # --- GPU rules: figures from CUDA events, the allocator and trace analysis (EXTRA_KEYS).
    "host_sync.blocking.info": 0.05,  # host time blocked in device synchronisation
    "host_sync.blocking.warning": 0.10,
    "host_sync.blocking.critical": 0.30,
    "launch_bound.small_kernels.warning": 0.30,  # GPU idle share of the step
    "launch_bound.small_kernels.critical": 0.60,
    "launch_bound.small_kernels.short_kernel_share": 0.50,  # share of kernels < 10 us
    "launch_bound.small_kernels.host_wait_share": 0.50,  # share of idle time waiting on the host
    "launch_bound.small_kernels.min_kernels_per_step": 100,  # at ~5-10 us of host time per
    # launch, fewer kernels cannot keep the host busy: an idle GPU then waits on other host work
    "precision.fp32_matmul.min_capability": 8.0,  # Ampere (sm_80) and later have TF32/bf16
    # tensor cores; older GPUs gain nothing from TF32
    "precision.fp32_matmul.compute_share": 0.50,  # forward+backward share above which matmul
    # precision is worth a warning (else info)
    "h2d_copy.pageable.info": 0.05,  # host-to-device copy share of the step
    "h2d_copy.pageable.warning": 0.10,
    "h2d_copy.pageable.critical": 0.30,
    "h2d_copy.pageable.min_pageable_share": 0.50,  # share of copies from pageable memory
    "communication.exposed.info": 0.05,  # communication not overlapped by compute, share of step
    "communication.exposed.warning": 0.10,
    "communication.exposed.critical": 0.30,
    "straggler.slow_rank.info": 0.05,  # (max - min) / mean step time across ranks
    "straggler.slow_rank.warning": 0.10,  # every rank waits this long for the slowest each step
    "straggler.slow_rank.critical": 0.30,
    "straggler.slow_rank.persistence": 0.6,  # share of recent windows the same rank led (live)
    # --- device.*: NVML telemetry, sampled at 5 Hz on a background thread, window means.
    "device.gpu_idle.warning": 0.40,  # share of time no kernel ran (1 - NVML utilisation): a
    # GPU-bound step keeps NVML utilisation at 90-100%; below 60% the host is the bottleneck
    "device.gpu_idle.critical": 0.75,  # the GPU mostly waits
    "device.gpu_idle.data_share": 0.10,  # host phase share that names the cause (dataloader.stall)
    "device.clocks_throttled.max_clock_ratio": 0.90,  # SM clock / max: boost clocks vary ~5-10%
    # under normal load, so only a larger drop counts as throttling
    "device.clocks_throttled.min_share": 0.25,  # share of samples with the throttle reason set
    "device.clocks_throttled.critical_share": 0.75,  # thermal/HW slowdown most of the time
    "device.memory_near_capacity.warning": 0.95,  # NVML used / total, all processes: the
    # allocator rule (memory.device_near_capacity) covers PyTorch's share; this one adds the rest
    "device.memory_near_capacity.critical": 0.99,
    # --- host.cpu_oversubscribed: threads wanting a core vs cores free for them.
    "host.cpu_oversubscribed.ratio": 1.0,  # more runnable threads than cores: OpenMP barriers
    # spin-wait on descheduled threads (the 2-thread, busy 2-core case ran 4x slower)
    "host.cpu_oversubscribed.critical_ratio": 2.0,
    "host.cpu_oversubscribed.min_compute_share": 0.30,  # CPU runs: forward+backward+optimizer
    # share of the step below which the threads are not what the step waits for
}


def get(overrides: Mapping[str, float], name: str) -> float:
    """Threshold ``name``: the user's override if given, else the default."""
    value = overrides.get(name)
    return DEFAULTS[name] if value is None else float(value)


def grade(value: float, rule_id: str, overrides: Mapping[str, float]) -> Severity | None:
    """Severity of ``value`` against ``<rule_id>.info/.warning/.critical``; ``None`` below all.

    Levels a rule does not define are skipped (a rule may start at ``warning``).
    """
    for level in ("critical", "warning", "info"):
        name = f"{rule_id}.{level}"
        if name in DEFAULTS and value >= get(overrides, name):
            return level
    return None


def validate_overrides(overrides: Mapping[str, float]) -> None:
    """Reject unknown built-in names and non-finite or negative values.

    Raises:
        ValueError: a name under a built-in category is not in :data:`DEFAULTS`, or a value is
            not a finite number >= 0.
    """
    for name, value in overrides.items():
        if name not in DEFAULTS and str(name).split(".")[0] in CATEGORIES:
            close = [k for k in DEFAULTS if k.split(".")[:2] == str(name).split(".")[:2]]
            hint = f"; known for this rule: {close}" if close else "; see docs/rules.md"
            raise ValueError(f"unknown threshold {name!r}{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"threshold {name!r} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"threshold {name!r} must be finite and >= 0, got {value!r}")
