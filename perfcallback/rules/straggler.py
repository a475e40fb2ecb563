"""Straggler rules: one rank slower than the others, so every rank waits for it (distributed only).

Two sources, the live one first:
- **Live** (``stats.cross_rank``, rank zero): every rank's latest window compared by the work it
  does per step (step time minus its gradient-sync wait; see :mod:`perfcallback.ranks`). This names
  the slow rank and its phase, also when DDP's all-reduce evens out the backward times.
- **Traces** (``stats.extra``): ``straggler_spread_pct`` and ``slowest_rank`` from a multi-rank
  trace set (``perfcallback analyze``).
In a single process it never fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

if TYPE_CHECKING:  # perfcallback.ranks (statistics, struct) only matters to live runs
    from perfcallback.ranks import CrossRank

# Share of the spread saved by the fix: bringing the slowest rank to the mean of the others saves
# about half of (max - min) on every rank.
_FIX_SAVES = 0.5

# What to look at on the slow rank, by the phase where it does more work than the others.
_PHASE_FIX = {
    "data": "its input pipeline: raise DataLoader(num_workers=...) there, check that rank's "
            "storage or cache, and shard samples of equal cost to every rank",
    "forward": "its inputs and device: balance variable-length samples across ranks (bucket by "
               "length, pad to a common size), and check that rank's GPU clocks and host load",
    "backward": "its inputs and device (DDP hides this one: the slow rank waits least in the "
                "all-reduce): balance per-rank batch cost, and check that rank's GPU clocks, "
                "thermal throttling and host CPU contention",
    "optimizer": "its optimizer work: uneven parameter shards (ZeRO/FSDP partitioning) or extra "
                 "per-rank work after the update (EMA, gradient checks)",
    "other": "work outside the training phases on that rank only: logging, metrics, "
             "checkpoints or evaluation guarded by `if rank == ...` inside the step",
}


@rule("straggler.slow_rank", category="straggler", needs="distributed")
def slow_rank(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Ranks do unequal work per step: the others idle in collectives, waiting for the slowest."""
    if ctx.world_size <= 1:
        return None
    if stats.cross_rank is not None:
        return _live(stats.cross_rank, ctx, th)
    spread_pct = stats.extra.get("straggler_spread_pct")
    if spread_pct is None:
        return None
    spread = spread_pct / 100
    severity = grade(spread, "straggler.slow_rank", th)
    if severity is None:
        return None
    slowest = stats.extra.get("slowest_rank")
    who = f"Rank {int(slowest)} is" if slowest is not None else "Some rank is"
    message = (
        f"{who} the slowest of {ctx.world_size}: step times spread {spread:.0%} across ranks, and "
        "every other rank waits for it in each collective. Check that rank's inputs (balance "
        "variable-length samples across ranks, e.g. bucket by length), its host (CPU contention, "
        "DataLoader workers, NUMA/affinity) and its GPU (clocks, thermal throttling in nvidia-smi)."
    )
    evidence: dict[str, Any] = {"straggler_spread_pct": spread_pct, "world_size": ctx.world_size}
    for key in ("slowest_rank", "comm_wait_spread_pct"):
        if key in stats.extra:
            evidence[key] = stats.extra[key]
    return Finding(
        severity=severity, message=message, evidence=evidence, est_gain=spread * _FIX_SAVES
    )


def _live(cr: CrossRank, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    if cr.slowest_rank is None or not cr.comparable or cr.slow_phase is None:
        return None
    spread = cr.spread_pct / 100
    severity = grade(spread, "straggler.slow_rank", th)
    # One window proves nothing: the same rank must lead most of the recent comparisons.
    persistent = cr.rounds >= 2 and cr.slowest_count / cr.rounds >= get(
        th, "straggler.slow_rank.persistence")
    if severity is None or not persistent:
        return None
    rank, phase = cr.slowest_rank, cr.slow_phase
    excess_ms = cr.phase_excess_s.get(phase, 0.0) * 1e3
    message = (
        f"Rank {rank} is the slowest of {ctx.world_size} ranks, in {phase}: it does "
        f"{excess_ms:.1f} ms more {phase} work per step than the other ranks' median, and was "
        f"slowest in {cr.slowest_count} of the last {cr.rounds} windows. The other ranks lose "
        f"{cr.others_wait_s * 1e3:.1f} ms per step waiting for it in the gradient all-reduce "
        f"({spread:.0%} of the step). Look at rank {rank}'s {_PHASE_FIX[phase]}."
    )
    evidence: dict[str, Any] = {
        "slowest_rank": rank,
        "slow_phase": phase,
        "phase_excess_ms": {p: round(v * 1e3, 3) for p, v in cr.phase_excess_s.items()},
        "spread_pct": cr.spread_pct,
        "others_wait_ms": cr.others_wait_s * 1e3,
        "slowest_in_windows": [cr.slowest_count, cr.rounds],
        "world_size": ctx.world_size,
        "missing_ranks": list(cr.missing),
        "source": "cross-rank exchange (live)",
    }
    return Finding(severity=severity, message=message, evidence=evidence,
                   est_gain=spread * _FIX_SAVES)
