"""Communication rules: collectives not hidden behind compute (distributed runs only).

Two sources, the live one first:
- **Live**: the wait for gradient synchronisation at the end of backward (DDP's reducer, FSDP),
  timed on every step without the profiler (``stats.comm_exposed_s``; see
  :class:`perfcallback.hooks.GradSyncProbe`). A rank also waits for the others' step-to-step
  jitter and for a straggler, so the rule takes the wait that recurs every step (the window's
  25th percentile, ``comm_floor_s``) and, on rank zero, the smallest of any rank's
  (``cross_rank.min_comm_floor_s``): the slowest rank waits for the network alone.
- **Traces**: ``comm_pct`` and ``comm_comp_overlap_pct`` (EXTRA_KEYS) from profiler captures.
The fixes quote the user's DDP settings (``ctx.extra["ddp"]``). In one process it never fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import grade
from perfcallback.stats import WindowStats

_MB = 2**20


@rule("communication.exposed", category="communication", needs="distributed")
def exposed_comm(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Communication the step waits for, because compute does not overlap it."""
    if ctx.world_size <= 1:
        return None
    live = _live_exposed_s(stats)
    if live is not None and stats.step_s > 0:
        return _live(live, stats, ctx, th)
    comm_pct = stats.extra.get("comm_pct")
    if comm_pct is None:
        return None
    overlap = stats.extra.get("comm_comp_overlap_pct", 0.0) / 100
    exposed = comm_pct / 100 * (1 - overlap)
    severity = grade(exposed, "communication.exposed", th)
    if severity is None:
        return None
    message = (
        f"Communication is {comm_pct:.0f}% of the step and only {overlap:.0%} of it overlaps "
        f"compute, so {exposed:.0%} of the step waits on the network across {ctx.world_size} "
        f"ranks. {ddp_fixes(ctx)}"
    )
    evidence = {"comm_pct": comm_pct, "comm_comp_overlap_pct": overlap * 100,
                "exposed_share": exposed, "world_size": ctx.world_size, "source": "trace"}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=exposed)


def _live_exposed_s(stats: WindowStats) -> float | None:
    """The recurring sync wait: rank zero takes the least of any rank's (a straggler's peers wait
    for it, not for the network); one rank alone has only its own."""
    cr = stats.cross_rank
    if cr is not None and cr.min_comm_floor_s is not None:
        return cr.min_comm_floor_s
    return stats.comm_floor_s if stats.comm_exposed_s > 0 else None


def _live(
    exposed_s: float, stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    share = exposed_s / stats.step_s
    severity = grade(share, "communication.exposed", th)
    if severity is None:
        return None
    ranks_note = ("the wait that recurs every step on the rank that waits least, so neither a "
                  "straggler nor step-to-step jitter explains it" if stats.cross_rank is not None
                  else "the wait that recurs every step, as this rank sees it")
    message = (
        f"Each step waits {exposed_s * 1e3:.1f} ms ({share:.0%} of the step) at the end of "
        f"backward for the gradient all-reduce that backward compute did not hide "
        f"({ranks_note}), across {ctx.world_size} ranks. {ddp_fixes(ctx)}"
    )
    evidence: dict[str, Any] = {
        "exposed_ms": exposed_s * 1e3,
        "exposed_share": share,
        "step_ms": stats.step_s * 1e3,
        "world_size": ctx.world_size,
        "source": "gradient-sync wait at the end of backward (live)",
    }
    ddp = ctx.extra.get("ddp")
    if isinstance(ddp, dict):
        evidence["ddp"] = dict(ddp)
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)


def ddp_fixes(ctx: RunContext) -> str:
    """Fixes for exposed gradient communication, quoting the run's DDP settings when known."""
    ddp = ctx.extra.get("ddp")
    if not isinstance(ddp, dict):
        return ("With DDP: gradient_as_bucket_view=True, tune bucket_cap_mb, static_graph=True "
                "when the graph does not change, and no_sync() on gradient-accumulation "
                "micro-steps; with FSDP: forward_prefetch=True and backward_prefetch; a larger "
                "per-rank batch amortises each all-reduce.")
    fixes = []
    cap = ddp.get("bucket_cap_mb")
    if isinstance(cap, (int, float)):
        fixes.append(f"bucket_cap_mb is {cap:g}: try {max(1, cap / 2):g} (earlier, smaller "
                     f"all-reduces overlap more of backward) and {cap * 2:g} (fewer, larger ones "
                     "for a high-latency network)")
    if ddp.get("gradient_as_bucket_view") is False:
        fixes.append("set gradient_as_bucket_view=True (no copy into the buckets)")
    if ddp.get("static_graph") is False and not ddp.get("find_unused_parameters"):
        fixes.append("set static_graph=True if the graph is the same every step")
    if ddp.get("find_unused_parameters"):
        fixes.append("find_unused_parameters=True scans the graph every step: turn it off if "
                     "every parameter gets a gradient")
    if not ddp.get("comm_hook"):
        fixes.append("a compression hook halves the bytes: ddp.register_comm_hook(None, "
                     "torch.distributed.algorithms.ddp_comm_hooks.default_hooks.bf16_compress_hook)")
    fixes.append("with gradient accumulation, run the micro-steps before the last under "
                 "ddp.no_sync() so only one all-reduce per update remains")
    return "Your DDP: " + "; ".join(fixes) + "."
