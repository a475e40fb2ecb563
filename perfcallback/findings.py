"""Hysteresis and de-duplication of recommendations across windows.

A rule's finding becomes *active* once it has held for ``fire_after`` consecutive windows; while it
holds, the active finding is refreshed in place with each window's evidence, and an ``"updated"``
event is emitted only when its severity changes (messages quote figures that move every window, so
comparing them would repeat the finding each window): at once when it rises, after ``clear_after``
windows at the lower level when it falls, so a figure hovering at a threshold does not flap. When
it has been absent for ``clear_after`` consecutive windows it is *resolved*. With the defaults
(2 and 2) and 25-step windows, a persistent problem is reported 50 measured steps in.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from perfcallback.report import SEVERITY_RANK, Recommendation, sort_recommendations

Event = Literal["new", "updated", "resolved"]
_MAX_RESOLVED = 64  # bounded history; the oldest resolved findings are forgotten


class FindingTracker:
    """Turns per-window rule results into new / updated / resolved events."""

    def __init__(self, *, fire_after: int = 2, clear_after: int = 2) -> None:
        if fire_after < 1:
            raise ValueError(f"fire_after must be >= 1, got {fire_after}")
        if clear_after < 1:
            raise ValueError(f"clear_after must be >= 1, got {clear_after}")
        self.fire_after, self.clear_after = fire_after, clear_after
        self._streak: dict[str, int] = {}
        self._missing: dict[str, int] = {}
        self._active: dict[str, Recommendation] = {}
        self._emitted: dict[str, str] = {}  # severity last announced for each active rule
        self._lower: dict[str, int] = {}  # consecutive windows below the announced severity
        self._resolved: deque[Recommendation] = deque(maxlen=_MAX_RESOLVED)

    def update(self, recs: list[Recommendation]) -> list[tuple[Event, Recommendation]]:
        """Feed one window's findings; returns the events to emit, in severity order."""
        events: list[tuple[Event, Recommendation]] = []
        seen = {r.rule: r for r in recs}
        for rule_id, rec in seen.items():
            self._missing.pop(rule_id, None)
            self._streak[rule_id] = self._streak.get(rule_id, 0) + 1
            if rule_id in self._active:
                self._active[rule_id] = rec  # fresh evidence, silently
                if self._severity_changed(rule_id, rec):
                    events.append(("updated", rec))
            elif self._streak[rule_id] >= self.fire_after:
                self._active[rule_id] = rec
                self._emitted[rule_id] = rec.severity
                self._resolved = deque(
                    (r for r in self._resolved if r.rule != rule_id), maxlen=_MAX_RESOLVED
                )
                events.append(("new", rec))
        for rule_id in list(self._streak):
            if rule_id in seen:
                continue
            self._streak.pop(rule_id)
        for rule_id in list(self._active):
            if rule_id in seen:
                continue
            self._missing[rule_id] = self._missing.get(rule_id, 0) + 1
            if self._missing[rule_id] >= self.clear_after:
                rec = self._active.pop(rule_id)
                self._missing.pop(rule_id)
                self._emitted.pop(rule_id, None)
                self._lower.pop(rule_id, None)
                self._resolved.append(rec)
                events.append(("resolved", rec))
        return events

    def _severity_changed(self, rule_id: str, rec: Recommendation) -> bool:
        """Announce a rise at once, a fall once it has held for ``clear_after`` windows."""
        announced = SEVERITY_RANK[self._emitted[rule_id]]
        now = SEVERITY_RANK[rec.severity]
        if now >= announced:
            self._lower.pop(rule_id, None)
            if now == announced:
                return False
        else:
            self._lower[rule_id] = self._lower.get(rule_id, 0) + 1
            if self._lower[rule_id] < self.clear_after:
                return False
            self._lower.pop(rule_id)
        self._emitted[rule_id] = rec.severity
        return True

    def active(self) -> list[Recommendation]:
        return sort_recommendations(list(self._active.values()))

    def resolved(self) -> list[Recommendation]:
        return list(self._resolved)
