"""Rule registry: recommendation rules are small registered pure functions over a window.

A rule has a stable id (``category.snake_case``), a category from :data:`CATEGORIES`, and a function
``(stats, ctx, thresholds) -> Finding | None``. :func:`evaluate` runs every enabled rule and turns
findings into :class:`~perfcallback.report.Recommendation`. Registering an id twice is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from perfcallback._record import field, record
from perfcallback.context import RunContext
from perfcallback.report import CATEGORIES, Recommendation, Severity, sort_recommendations
from perfcallback.stats import WindowStats


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


_REGISTRY: dict[str, Rule] = {}
# One module per category; imported on first evaluate() so `import perfcallback` stays light.
_BUILTIN_MODULES: tuple[str, ...] = CATEGORIES


def rule(rule_id: str, *, category: str) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn`` as rule ``rule_id``.

    Raises:
        ValueError: the id is taken, the category unknown, or the id does not start with it.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown rule category {category!r}; expected one of {CATEGORIES}")
    if not rule_id.startswith(category + "."):
        raise ValueError(f"rule id {rule_id!r} must start with its category {category!r}")

    def register(fn: RuleFn) -> RuleFn:
        if rule_id in _REGISTRY:
            raise ValueError(f"rule id {rule_id!r} is already registered")
        _REGISTRY[rule_id] = Rule(rule_id, category, fn)
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
    recs: list[Recommendation] = []
    for r in registered_rules().values():
        if r.id in off or r.category in off:
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
