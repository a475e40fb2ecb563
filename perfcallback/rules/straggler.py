"""Straggler rules: one rank slower than the others, so every rank waits for it (distributed only).

Signals (EXTRA_KEYS, from cross-rank gathers): ``straggler_spread_pct`` = (max - min) / mean step
time across ranks, ``slowest_rank``, and ``comm_wait_spread_pct``. This module is the hook point;
the distributed measurements arrive in a later issue. In a single process it never fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import grade
from perfcallback.stats import WindowStats

# Share of the spread saved by the fix: bringing the slowest rank to the mean of the others saves
# about half of (max - min) on every rank.
_FIX_SAVES = 0.5


@rule("straggler.slow_rank", category="straggler")
def slow_rank(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Step times differ across ranks: the fastest ranks idle in collectives."""
    spread_pct = stats.extra.get("straggler_spread_pct")
    if ctx.world_size <= 1 or spread_pct is None:
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
