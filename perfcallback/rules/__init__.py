"""Rule registry: recommendation rules are small registered pure functions over a window.

A rule has a stable id (``category.snake_case``), a category from :data:`CATEGORIES`, and a function
``(stats, ctx, thresholds) -> Finding | None``. :func:`evaluate` runs every enabled rule and turns
findings into :class:`~perfcallback.report.Recommendation`. Registering an id twice is an error.

A rule may name the one figure it ``needs`` (see :data:`NEEDS`): a window without it skips the
rule without calling it. Most rules only apply to a CUDA, distributed, compiled or profiled run;
on a plain CPU run two thirds of them would be called every window only to return ``None``, and
calls made between training steps are the costly kind (their code is cold in the caches).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from perfcallback._record import field, record
from perfcallback.context import RunContext
from perfcallback.report import CATEGORIES, Recommendation, Severity, sort_recommendations
from perfcallback.stats import EXTRA_KEYS, WindowStats


@record
class Finding:
    """What a rule returns; the registry adds the rule id and category."""

    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    est_gain: float | None = None


RuleFn = Callable[[WindowStats, RunContext, Mapping[str, float]], "Finding | None"]


@record(kw_only=False)
class Rule:
    id: str
    category: str
    fn: RuleFn
    needs: str | None = None  # skipped on windows without this figure (see NEEDS)


# WindowStats fields a rule may need (present when not None), besides the keys of
# WindowStats.extra (EXTRA_KEYS, present when in the dict) and two facts about the run.
_NEEDED_FIELDS: tuple[str, ...] = (
    "host_rss_slope_bytes_per_step",
    "cuda_allocated_slope_bytes_per_step",
    "cuda_peak_allocated_bytes",
    "cuda_alloc_retries",
    "recompiles",
    "graph_breaks",
)
_RUN_FACTS: dict[str, str] = {
    "cuda": "the run times a CUDA device (RunContext.device_type)",
    "distributed": "more than one rank (RunContext.world_size)",
}
NEEDS: frozenset[str] = frozenset(_NEEDED_FIELDS) | frozenset(EXTRA_KEYS) | frozenset(_RUN_FACTS)


_REGISTRY: dict[str, Rule] = {}
# One module per category; imported on first evaluate() so `import perfcallback` stays light.
_BUILTIN_MODULES: tuple[str, ...] = CATEGORIES


def rule(rule_id: str, *, category: str, needs: str | None = None) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as rule ``rule_id``; ``needs``: a name from :data:`NEEDS` without which
    the rule cannot fire (it must return ``None`` on any window that lacks it).

    Raises:
        ValueError: the id is taken, the category unknown, the id does not start with it, or
            ``needs`` names no figure.
    """
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"rule {rule_id!r} needs {needs!r}, which is not a WindowStats figure; "
                         f"use one of {sorted(NEEDS)}")
    if category not in CATEGORIES:
        raise ValueError(f"unknown rule category {category!r}; expected one of {CATEGORIES}")
    if not rule_id.startswith(category + "."):
        raise ValueError(f"rule id {rule_id!r} must start with its category {category!r}")

    def register(fn: RuleFn) -> RuleFn:
        if rule_id in _REGISTRY:
            raise ValueError(f"rule id {rule_id!r} is already registered")
        _REGISTRY[rule_id] = Rule(rule_id, category, fn, needs)
        return fn

    return register


_loaded = False  # the built-in modules were imported (once: evaluate() runs every window)


def registered_rules() -> dict[str, Rule]:
    """All registered rules by id (built-in ones loaded)."""
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"perfcallback.rules.{module}")
        _loaded = True
    return dict(_REGISTRY)


def check_disabled(names: Iterable[str]) -> None:
    """Reject names that are neither a registered rule id nor a category.

    Raises:
        ValueError: a name matches no rule and no category (a typo would silently do nothing).
    """
    rules = registered_rules()
    for name in names:
        if name not in rules and name not in CATEGORIES:
            raise ValueError(
                f"disabled_rules: {name!r} is neither a rule id nor a category; categories are "
                f"{', '.join(CATEGORIES)} and rule ids are listed in docs/rules.md"
            )


def evaluate(
    stats: WindowStats,
    ctx: RunContext,
    *,
    thresholds: Mapping[str, float] | None = None,
    disabled: Iterable[str] = (),
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[Recommendation]:
    """Run every enabled rule on ``stats``; most severe first.

    Args:
        disabled: Rule ids or categories to skip.
        on_error: Called with ``(rule_id, exc)`` when a rule raises; the rule is skipped.
    """
    off = set(disabled)
    th = thresholds if thresholds is not None else {}
    present = _present(stats, ctx)
    recs: list[Recommendation] = []
    for r in registered_rules().values():
        if r.id in off or r.category in off or (r.needs is not None and r.needs not in present):
            continue
        try:
            finding = r.fn(stats, ctx, th)
        except Exception as exc:
            if on_error is None:
                raise
            on_error(r.id, exc)
            continue
        if finding is not None:
            recs.append(
                Recommendation(
                    rule=r.id,
                    category=r.category,
                    severity=finding.severity,
                    message=finding.message,
                    evidence=finding.evidence,
                    est_gain=finding.est_gain,
                )
            )
    return sort_recommendations(recs)


def _present(stats: WindowStats, ctx: RunContext) -> set[str]:
    """The names of :data:`NEEDS` that ``stats`` and ``ctx`` have."""
    present = {name for name in _NEEDED_FIELDS if getattr(stats, name) is not None}
    present.update(stats.extra)
    if ctx.device_type == "cuda":
        present.add("cuda")
    if ctx.world_size > 1:
        present.add("distributed")
    return present
