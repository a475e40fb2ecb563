"""Garbage-collection rules: Python's cyclic collector pausing the training loop.

The signal is the time between the ``start`` and ``stop`` callbacks of ``gc.callbacks`` attributed
to each step, and the number of collections. Two patterns have different fixes: frequent young
collections that free cyclic garbage made every step (break the cycles, raise the thresholds),
and long full collections that walk a large heap of long-lived objects (``gc.freeze()``).
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

# gen0 threshold to suggest: 50x CPython's default 700. Fewer, larger young collections cost the
# same per object but far less fixed overhead; large training jobs commonly use values like this.
_SUGGESTED_GEN0 = 50_000


@rule("gc.pauses", category="gc")
def gc_pauses(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Garbage collection takes a real share of step time."""
    pause_s = stats.gc_pause_s
    if pause_s < get(th, "gc.pauses.min_s"):
        return None
    share = pause_s / stats.step_s if stats.step_s > 0 else 0.0
    severity = grade(share, "gc.pauses", th)
    if severity is None:
        return None
    per_step = stats.gc_collections_per_step
    mean_pause = pause_s / per_step if per_step > 0 else pause_s
    threshold = tuple(ctx.gc_threshold)
    head = (
        f"Python's garbage collector pauses the loop {share:.0%} of step time "
        f"({pause_s * 1e3:.2f} ms/step in {per_step:.1f} collections/step). "
    )
    if mean_pause >= get(th, "gc.pauses.long_pause_s"):
        fix = (
            f"Collections are long ({mean_pause * 1e3:.1f} ms each): full collections walk every "
            "long-lived object. Call gc.freeze() once after building the model, optimizer and "
            "datasets, so the collector stops scanning them."
        )
    else:
        fix = (
            f"Collections are frequent and short ({mean_pause * 1e3:.2f} ms each): each step "
            "creates reference cycles (objects pointing at each other, closures or exceptions kept "
            "in locals). Break the cycles (weakref, clearing references), or raise the thresholds: "
            f"gc.set_threshold({_SUGGESTED_GEN0}, {threshold[1] if len(threshold) > 1 else 10}, "
            f"{threshold[2] if len(threshold) > 2 else 10}) (now {threshold}), and call "
            "gc.freeze() after setup."
        )
    evidence = {
        "gc_pause_s": pause_s,
        "step_s": stats.step_s,
        "gc_share": share,
        "collections_per_step": per_step,
        "mean_pause_s": mean_pause,
        "gc_threshold": list(threshold),
    }
    return Finding(severity=severity, message=head + fix, evidence=evidence, est_gain=share)
