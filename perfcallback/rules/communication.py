"""Communication rules: collectives not hidden behind compute (distributed runs only).

Signals (EXTRA_KEYS, from trace analysis or cross-rank gathers): ``comm_pct``, the share of the step
in communication kernels, and ``comm_comp_overlap_pct``, the share of that time overlapped by
compute. This module is the hook point; the distributed measurements arrive in a later issue. In a
single process (``world_size == 1``) it never fires.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import grade
from perfcallback.stats import WindowStats


@rule("communication.exposed", category="communication")
def exposed_comm(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Communication the step waits for, because compute does not overlap it."""
    comm_pct = stats.extra.get("comm_pct")
    if ctx.world_size <= 1 or comm_pct is None:
        return None
    overlap = stats.extra.get("comm_comp_overlap_pct", 0.0) / 100
    exposed = comm_pct / 100 * (1 - overlap)
    severity = grade(exposed, "communication.exposed", th)
    if severity is None:
        return None
    message = (
        f"Communication is {comm_pct:.0f}% of the step and only {overlap:.0%} of it overlaps "
        f"compute, so {exposed:.0%} of the step waits on the network across {ctx.world_size} "
        "ranks. With DDP: gradient_as_bucket_view=True, tune bucket_cap_mb, and use no_sync() on "
        "accumulation micro-steps; with FSDP: forward_prefetch=True and backward_prefetch; a "
        "larger per-rank batch amortises each all-reduce."
    )
    evidence = {"comm_pct": comm_pct, "comm_comp_overlap_pct": overlap * 100,
                "exposed_share": exposed, "world_size": ctx.world_size}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=exposed)
