"""Launch-bound rules: the GPU idles while the host launches many small kernels.

Signals (EXTRA_KEYS, from trace analysis of a CUDA run): ``gpu_idle_pct``, ``short_kernel_pct``
(kernels under 10 us), ``idle_host_wait_pct`` (idle time spent waiting on the host),
``kernels_per_step`` and ``launch_delay_us``. CUDA events alone cannot tell idle from busy device
time, so without a trace the rule stays silent. Idle time is not blamed on launches when the host
is far ahead of the GPU (long launch delays) or when waiting for data explains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

# Share of the idle time the fix recovers. CUDA graphs remove per-kernel launch cost but not the
# host's own Python work between launches; assume half (conservative).
_FIX_RECOVERS = 0.5
# Median launch-to-start delay above which kernels queue behind earlier work: the host is ahead
# of the GPU, not behind it, so launch cost cannot be what idles the GPU. A launch-bound step
# shows delays of a few to tens of microseconds (the kernel starts as soon as it is launched).
_HOST_AHEAD_US = 1000.0


@rule("launch_bound.small_kernels", category="launch_bound", needs="gpu_idle_pct")
def small_kernels(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """The device is idle much of the step because kernels are too small to hide launch cost."""
    idle_pct = stats.extra.get("gpu_idle_pct")
    if idle_pct is None:
        return None
    short = stats.extra.get("short_kernel_pct")
    host_wait = stats.extra.get("idle_host_wait_pct")
    short_ok = short is not None and short / 100 >= get(
        th, "launch_bound.small_kernels.short_kernel_share"
    )
    wait_ok = host_wait is not None and host_wait / 100 >= get(
        th, "launch_bound.small_kernels.host_wait_share"
    )
    if not (short_ok or wait_ok):
        return None
    kernels = stats.extra.get("kernels_per_step")
    if kernels is not None and kernels < get(th, "launch_bound.small_kernels.min_kernels_per_step"):
        return None  # idle, but not from launching: data loading or other host work
    delay = stats.extra.get("launch_delay_us")
    if delay is not None and delay > _HOST_AHEAD_US:
        return None  # kernels wait in the queue: the host is far ahead of the GPU
    # Idle time while the host waits for data is the dataloader rule's finding, not launch cost:
    # only the idle share that data waiting cannot explain is graded here.
    idle = max(0.0, idle_pct / 100.0 - stats.share("data"))
    severity = grade(idle, "launch_bound.small_kernels", th)
    if severity is None:
        return None
    count = f" across {kernels:,.0f} kernels per step" if kernels else ""
    if ctx.compile_in_use:
        compile_fix = 'torch.compile(model, mode="reduce-overhead") (CUDA graphs)'
    else:
        compile_fix = 'torch.compile(model, mode="reduce-overhead") (fusion + CUDA graphs)'
    message = (
        f"The GPU is idle {idle:.0%} of the step waiting for the host to launch work{count}: "
        f"kernels are too small to hide launch overhead. Use {compile_fix}, raise the batch size, "
        "or capture the step with torch.cuda.graphs (torch.cuda.CUDAGraph)."
    )
    evidence: dict[str, Any] = {"gpu_idle_pct": idle_pct, "data_share": stats.share("data")}
    for key in ("short_kernel_pct", "idle_host_wait_pct", "kernels_per_step", "launch_delay_us"):
        if key in stats.extra:
            evidence[key] = stats.extra[key]
    return Finding(
        severity=severity, message=message, evidence=evidence, est_gain=idle * _FIX_RECOVERS
    )
