"""WindowPipeline: what happens to each window summary: rules, hysteresis, then the sinks.

This is the once-per-window half of the engine (the per-step half is the recorder). It evaluates
the registered rules on a :class:`~perfcallback.stats.WindowStats`, turns the results into
new / updated / resolved events through the :class:`~perfcallback.findings.FindingTracker`, and
hands the events and the summary to every sink, each behind its own fail-open guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from perfcallback.context import RunContext
from perfcallback.failopen import USER_PREFIX, FailOpen
from perfcallback.findings import FindingTracker
from perfcallback.report import Recommendation, sort_recommendations
from perfcallback.rules import check_disabled, evaluate
from perfcallback.rules.thresholds import validate_overrides
from perfcallback.sinks import Sink
from perfcallback.stats import WindowStats


class WindowPipeline:
    """Rules -> findings -> sinks, for one monitor.

    Args:
        context: Facts the rules read.
        failopen: The monitor's fail-open registry (a failing rule or sink is switched off).
        thresholds: Rule threshold overrides by name (validated here).
        disabled_rules: Rule ids or categories never evaluated (validated here).
        sinks: Receivers of summaries and events; more can be appended to :attr:`sinks`.
        fire_after: Windows a rule must hold before its finding is emitted.
        clear_after: Windows a rule must be absent before its finding is resolved.
    """

    def __init__(
        self,
        *,
        context: RunContext,
        failopen: FailOpen,
        thresholds: Mapping[str, float] | None = None,
        disabled_rules: Sequence[str] = (),
        sinks: Sequence[Sink] = (),
        fire_after: int = 2,
        clear_after: int = 2,
    ) -> None:
        self.context = context
        self.failopen = failopen
        self.thresholds = dict(thresholds or {})
        validate_overrides(self.thresholds)
        self.disabled_rules = tuple(disabled_rules)
        check_disabled(self.disabled_rules)
        self.sinks: list[Sink] = list(sinks)
        self.user_sinks: set[int] = set()  # id() of sinks the user passed: their errors are theirs
        self._tracker = FindingTracker(fire_after=fire_after, clear_after=clear_after)

    def process(self, stats: WindowStats) -> None:
        """Evaluate ``stats`` and deliver the resulting events and the summary to every sink."""
        events = self._tracker.update(self.evaluate(stats))
        for i, sink in enumerate(self.sinks):
            name = self.sink_name(i, sink)
            if not self.failopen.is_on(name):
                continue
            # Events first, so a sink that writes per window sees the findings of this window.
            for event, rec in events:
                self.failopen.guard(name, sink.on_recommendation)(event, rec)
            self.failopen.guard(name, sink.on_window)(stats)

    def evaluate(self, stats: WindowStats) -> list[Recommendation]:
        """Every enabled rule on ``stats``; a rule that raises is switched off."""
        if not self.failopen.is_on("rules"):
            return []
        return evaluate(
            stats,
            self.context,
            thresholds=self.thresholds,
            disabled=self.disabled_rules,
            on_error=lambda rule_id, exc: self.failopen.trip(f"rule:{rule_id}", exc),
        )

    def findings(
        self, latest: WindowStats | None
    ) -> tuple[list[Recommendation], list[Recommendation]]:
        """``(active, resolved)``: active findings plus what holds on ``latest`` even before its
        hysteresis (so a short run still gets its diagnosis), and those resolved earlier."""
        active = {r.rule: r for r in self._tracker.active()}
        if latest is not None:
            for rec in self.evaluate(latest):
                active[rec.rule] = rec  # the freshest evidence supersedes the stored one
        resolved = [r for r in self._tracker.resolved() if r.rule not in active]
        return sort_recommendations(list(active.values())), resolved

    def close(self) -> None:
        for i, sink in enumerate(self.sinks):
            self.failopen.call(self.sink_name(i, sink), sink.close)

    def sink_name(self, position: int, sink: Sink) -> str:
        """The fail-open component name of ``sink`` (see :attr:`Sink.failopen_name`); a sink the
        user passed is named ``user:sink[i]:<class>``, so its errors are reported as theirs."""
        name = sink.failopen_name or f"sink[{position}]:{type(sink).__name__}"
        return f"{USER_PREFIX}{name}" if id(sink) in self.user_sinks else name
