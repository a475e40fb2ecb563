"""Hand-built windows and contexts for rule unit tests (no recorder, no clock)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from perfcallback.context import RunContext
from perfcallback.report import Recommendation
from perfcallback.rules import evaluate, registered_rules
from perfcallback.stats import PHASE_NAMES, WindowStats, step_time_fields


def window(
    *,
    step_s: float = 1.0,
    steps: int = 25,
    phases: Mapping[str, float] | None = None,
    times: Sequence[float] | None = None,
    first_step: int = 6,
    **fields: Any,
) -> WindowStats:
    """A window of ``steps`` identical steps (or of ``times``), with ``phases`` in seconds.

    ``step_s=1.0`` keeps shares exact: a phase of 0.1 s is a share of exactly 0.1.
    """
    if times is None:
        times = [step_s] * steps
    else:
        step_s = sum(times) / len(times)
    phase_s = dict.fromkeys(PHASE_NAMES, 0.0) | dict(phases or {})
    phase_s["other"] = max(0.0, step_s - sum(v for k, v in phase_s.items() if k != "other"))
    base: dict[str, Any] = {
        "first_step": first_step,
        "last_step": first_step + len(times) - 1,
        **step_time_fields(times),
        "step_s": step_s,  # as given: a mean of repeated floats can be off by an ulp
        "phase_s": phase_s,
    }
    return WindowStats(**(base | fields))


def context(**facts: Any) -> RunContext:
    """A CPU context with 8 cores unless told otherwise."""
    facts.setdefault("cpu_count", 8)
    return RunContext(**facts)


def run(
    rule_id: str,
    stats: WindowStats,
    ctx: RunContext | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> Recommendation | None:
    """Evaluate one rule through the registry; its recommendation or ``None``."""
    others = [r for r in registered_rules() if r != rule_id]
    recs = evaluate(stats, ctx or context(), thresholds=thresholds, disabled=others)
    assert len(recs) <= 1
    return recs[0] if recs else None
