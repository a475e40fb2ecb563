"""Memory rules: host RSS growing step after step, and CUDA allocator pressure.

Host RSS is read once per window (``/proc/self/statm``); its least-squares slope and the line's r²
over the last windows' samples separate a steady leak from a one-off allocation. The CUDA rules
read the allocator snapshot the recorder takes every few steps (allocated/reserved/peak,
``num_alloc_retries``), so they only fire where those figures exist: on a CUDA run.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.report import Severity
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

_MIB = 2**20
_GIB = 2**30


def _leak_severity(
    steps_to_full: float | None, rule_id: str, th: Mapping[str, float]
) -> Severity:
    """Critical when memory runs out within ``critical_steps`` at this rate, else warning."""
    if steps_to_full is not None and steps_to_full < get(th, f"{rule_id}.critical_steps"):
        return "critical"
    return "warning"


@rule("memory.host_leak", category="memory", needs="host_rss_slope_bytes_per_step")
def host_leak(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Host RSS grows steadily across steps."""
    slope, r2, rss = stats.host_rss_slope_bytes_per_step, stats.host_rss_r2, stats.host_rss_bytes
    if slope is None or r2 is None or rss is None:
        return None
    growth = slope * max(stats.steps - 1, 1)
    if (slope < get(th, "memory.host_leak.min_bytes_per_step")
            or growth < get(th, "memory.host_leak.min_growth_bytes")
            or r2 < get(th, "memory.host_leak.min_r2")):
        return None
    total = ctx.host_memory_bytes
    steps_to_full = (total - rss) / slope if total else None
    horizon = (
        f"; at this rate the host's {total / _GIB:.0f} GiB are used up in about "
        f"{max(steps_to_full, 0):,.0f} more steps" if total and steps_to_full is not None else ""
    )
    message = (
        f"Host memory grows by {slope / 2**10:,.0f} KiB every step ({growth / _MIB:.1f} MiB over "
        f"the last {stats.steps} steps, now {rss / _MIB:,.0f} MiB){horizon}. Something keeps "
        "per-step objects alive: accumulate loss.item() or loss.detach(), not loss (a loss tensor "
        "keeps its whole autograd graph); store outputs with .detach().cpu(); bound any list, "
        "dict or cache that grows each step."
    )
    evidence = {
        "rss_slope_bytes_per_step": slope,
        "rss_growth_bytes": growth,
        "rss_bytes": rss,
        "r2": r2,
        "steps": stats.steps,
    }
    if steps_to_full is not None:
        evidence["steps_until_host_memory_full"] = max(steps_to_full, 0.0)
    return Finding(
        severity=_leak_severity(steps_to_full, "memory.host_leak", th),
        message=message,
        evidence=evidence,
    )


@rule("memory.device_leak", category="memory", needs="cuda_allocated_slope_bytes_per_step")
def device_leak(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """CUDA allocated memory grows steadily across steps."""
    slope, alloc = stats.cuda_allocated_slope_bytes_per_step, stats.cuda_allocated_bytes
    if slope is None or not alloc:
        return None
    growth = slope * max(stats.steps - 1, 1)
    if (slope < get(th, "memory.device_leak.min_bytes_per_step")
            or growth < get(th, "memory.device_leak.min_growth_share") * alloc):
        return None
    total = stats.cuda_total_bytes
    steps_to_full = (total - alloc) / slope if total else None
    message = (
        f"CUDA allocated memory grows by {slope / _MIB:.1f} MiB every step (now "
        f"{alloc / _MIB:,.0f} MiB): tensors from earlier steps stay referenced. Accumulate "
        "loss.item() or loss.detach(), not loss; keep metrics with .detach(); check lists or "
        "caches that grow each step (torch.cuda.memory._record_memory_history shows who holds "
        "them)."
    )
    evidence = {"allocated_slope_bytes_per_step": slope, "allocated_bytes": alloc}
    if steps_to_full is not None:
        evidence["steps_until_device_full"] = max(steps_to_full, 0.0)
    return Finding(
        severity=_leak_severity(steps_to_full, "memory.device_leak", th),
        message=message,
        evidence=evidence,
    )


@rule("memory.device_near_capacity", category="memory", needs="cuda_peak_allocated_bytes")
def device_near_capacity(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """Peak CUDA allocation close to the device's capacity."""
    peak, total = stats.cuda_peak_allocated_bytes, stats.cuda_total_bytes
    if not peak or not total:
        return None
    share = peak / total
    severity = grade(share, "memory.device_near_capacity", th)
    if severity is None:
        return None
    message = (
        f"Peak CUDA memory is {share:.0%} of the device ({peak / _GIB:.1f} of {total / _GIB:.1f} "
        "GiB): one larger batch or sequence from an out-of-memory error, and fragmentation will "
        f"start forcing allocator retries. {_alloc_conf_fix(ctx)} To free memory: activation "
        "checkpointing (torch.utils.checkpoint), bf16 autocast, or a smaller micro-batch with "
        "gradient accumulation."
    )
    evidence = {"peak_allocated_bytes": peak, "total_bytes": total, "peak_share": share}
    return Finding(severity=severity, message=message, evidence=evidence)


@rule("memory.alloc_retries", category="memory", needs="cuda_alloc_retries")
def alloc_retries(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """The CUDA caching allocator had to free its cache and retry (a costly synchronisation)."""
    retries = stats.cuda_alloc_retries
    if not retries or retries < get(th, "memory.alloc_retries.warning"):
        return None
    per_step = retries / max(stats.steps, 1)
    critical = per_step >= get(th, "memory.alloc_retries.critical")
    message = (
        f"The CUDA allocator failed and retried {retries} allocations in {stats.steps} steps: each "
        "retry frees every cached block and synchronises the device. "
        f"{_alloc_conf_fix(ctx)} If it persists, lower peak memory (activation checkpointing, "
        "smaller micro-batch) or keep tensor shapes stable between steps."
    )
    evidence = {"alloc_retries": retries, "steps": stats.steps, "retries_per_step": per_step}
    return Finding(
        severity="critical" if critical else "warning", message=message, evidence=evidence
    )


def _alloc_conf_fix(ctx: RunContext) -> str:
    if "expandable_segments:True" in ctx.cuda_alloc_conf.replace(" ", ""):
        return "expandable_segments is already on."
    now = f" (now {ctx.cuda_alloc_conf!r})" if ctx.cuda_alloc_conf else ""
    return (
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before the process starts"
        f"{now} to cut fragmentation."
    )
