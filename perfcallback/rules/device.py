"""Device rules from NVML telemetry: an idle GPU, throttled clocks, device memory nearly full.

Signals (``WindowStats.extra``, means over the window from the background NVML sampler):
``nvml_sm_util_pct`` (NVML "GPU utilisation": the share of time at least one kernel ran, not SM
occupancy), ``nvml_sm_clock_mhz`` against ``nvml_sm_clock_max_mhz``, the share of samples with
each clock-event ("throttle") reason, and ``nvml_mem_used_bytes`` against its total. Without
NVML (CPU runs, other vendors) these figures are absent and the rules stay silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.report import Severity
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

_GIB = 2**30
_REASONS = {  # extra key -> (what it is, what to do)
    "nvml_throttle_thermal_pct": (
        "thermal slowdown",
        "the GPU is too hot: check the fans and airflow (nvidia-smi -q -d TEMPERATURE,PERFORMANCE)"
        " and ask the operators about cooling",
    ),
    "nvml_throttle_hw_slowdown_pct": (
        "hardware slowdown (HW slowdown / power brake)",
        "the board or its power supply asks for it: report the node to its operators "
        "(nvidia-smi -q -d PERFORMANCE shows the reason)",
    ),
    "nvml_throttle_power_pct": (
        "the power cap",
        "the GPU runs at its power limit: normal at full load, but check that the limit is the "
        "default (nvidia-smi -q -d POWER; raise it with nvidia-smi -pl <watts> if it was lowered)",
    ),
}


@rule("device.gpu_idle", category="device", needs="nvml_sm_util_pct")
def gpu_idle(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """NVML says the GPU ran no kernel for much of the window: the host cannot keep it fed."""
    util = stats.extra.get("nvml_sm_util_pct")
    if util is None:
        return None
    idle = max(0.0, 1.0 - util / 100.0)
    severity = grade(idle, "device.gpu_idle", th)
    if severity is None:
        return None
    data = stats.share("data")
    optimizer = stats.share("optimizer")
    if data >= get(th, "device.gpu_idle.data_share"):
        cause = (f"the loop waits for data {data:.0%} of the step: raise DataLoader(num_workers="
                 "...), set pin_memory=True, persistent_workers=True")
    elif optimizer >= get(th, "device.gpu_idle.data_share") and not (ctx.optimizer or {}).get(
            "fused"):
        cause = (f"the optimizer step is {optimizer:.0%} of the step: use a fused or foreach "
                 "optimizer (e.g. torch.optim.AdamW(..., fused=True))")
    else:
        cause = ("the host launches work more slowly than the GPU runs it: raise the batch size, "
                 'or use torch.compile(model, mode="reduce-overhead") (fusion and CUDA graphs)')
    message = (
        f"The GPU ran no kernel {idle:.0%} of the time (NVML utilisation {util:.0f}% over the "
        f"window): the step is host-bound; {cause}."
    )
    evidence = {"nvml_sm_util_pct": util, "data_share": data, "optimizer_share": optimizer}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=None)


@rule("device.clocks_throttled", category="device", needs="nvml_sm_clock_mhz")
def clocks_throttled(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """The SM clock runs below its maximum because of a throttle reason, named."""
    clock, top = stats.extra.get("nvml_sm_clock_mhz"), stats.extra.get("nvml_sm_clock_max_mhz")
    if clock is None or not top:
        return None
    ratio = clock / top
    if ratio > get(th, "device.clocks_throttled.max_clock_ratio"):
        return None
    shares = {k: stats.extra.get(k, 0.0) / 100.0 for k in _REASONS}
    key = max(shares, key=lambda k: shares[k])
    share = shares[key]
    if share < get(th, "device.clocks_throttled.min_share"):
        return None
    severity: Severity = "info" if key == "nvml_throttle_power_pct" else "warning"
    if severity == "warning" and share >= get(th, "device.clocks_throttled.critical_share"):
        severity = "critical"
    what, fix = _REASONS[key]
    message = (
        f"The GPU's SM clock averages {clock:.0f} MHz, {ratio:.0%} of its {top:.0f} MHz maximum, "
        f"held down by {what} in {share:.0%} of samples: {fix}."
    )
    evidence: dict[str, Any] = {"sm_clock_mhz": clock, "sm_clock_max_mhz": top,
                                "clock_ratio": ratio, "reason": what, "reason_share": share}
    for extra in ("nvml_temp_c", "nvml_power_w", "nvml_power_limit_w"):
        if extra in stats.extra:
            evidence[extra] = stats.extra[extra]
    return Finding(severity=severity, message=message, evidence=evidence,
                   est_gain=max(0.0, 1.0 - ratio))


@rule("device.memory_near_capacity", category="device", needs="nvml_mem_used_bytes")
def memory_near_capacity(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """Device memory (all processes, as NVML sees it) is nearly full."""
    used, total = stats.extra.get("nvml_mem_used_bytes"), stats.extra.get("nvml_mem_total_bytes")
    if used is None or not total:
        return None
    share = used / total
    severity = grade(share, "device.memory_near_capacity", th)
    if severity is None:
        return None
    ours = stats.cuda_reserved_bytes
    split = ""
    if ours is not None:
        split = (f"; PyTorch's allocator holds {ours / _GIB:.1f} GiB of it, the rest is the CUDA "
                 "context, NCCL/cuDNN workspaces or other processes")
    message = (
        f"Device memory is {share:.0%} full ({used / _GIB:.1f} of {total / _GIB:.1f} GiB){split}."
        " The next larger batch or sequence fails with out-of-memory: set "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, use activation checkpointing "
        "(torch.utils.checkpoint) or bf16 autocast, and check nvidia-smi for other processes."
    )
    evidence: dict[str, Any] = {"nvml_mem_used_bytes": used, "nvml_mem_total_bytes": total,
                                "used_share": share}
    if ours is not None:
        evidence["cuda_reserved_bytes"] = ours
    return Finding(severity=severity, message=message, evidence=evidence)
