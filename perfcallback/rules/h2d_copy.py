"""Host-to-device copy rules: synchronous copies from pageable memory.

Signals (EXTRA_KEYS, from trace analysis of a CUDA run): ``h2d_pct``, the share of the step in
host-to-device copies, and ``h2d_pageable_pct``, the share of those copies made from pageable
(unpinned) memory, which the driver stages through a bounce buffer and cannot overlap with compute.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats


@rule("h2d_copy.pageable", category="h2d_copy", needs="h2d_pageable_pct")
def pageable_copies(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """Host-to-device copies take a real share of the step and come from pageable memory."""
    h2d_pct, pageable_pct = stats.extra.get("h2d_pct"), stats.extra.get("h2d_pageable_pct")
    if h2d_pct is None or pageable_pct is None:
        return None
    if pageable_pct / 100 < get(th, "h2d_copy.pageable.min_pageable_share"):
        return None
    share = h2d_pct / 100
    severity = grade(share, "h2d_copy.pageable", th)
    if severity is None:
        return None
    loader = ctx.loader
    if loader is not None and not loader.get("pin_memory"):
        fix = "Set DataLoader(pin_memory=True) (now pin_memory=False)"
    elif loader is not None:
        fix = ("The DataLoader already pins memory, so these copies come from tensors made later "
               "(in the step or a transform): pin them with tensor.pin_memory()")
    else:
        fix = "Load batches with DataLoader(pin_memory=True) or call tensor.pin_memory()"
    message = (
        f"Host-to-device copies take {share:.0%} of the step and {pageable_pct:.0f}% of them come "
        f"from pageable memory, which blocks the host. {fix}, and copy with "
        ".to('cuda', non_blocking=True) so the copy overlaps compute."
    )
    evidence = {"h2d_pct": h2d_pct, "h2d_pageable_pct": pageable_pct}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)
