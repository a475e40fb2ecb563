"""Hysteresis and de-duplication of recommendations across windows.

A rule's finding becomes *active* once it has held for ``fire_after`` consecutive windows; while it
holds, the active finding is updated in place (new evidence, possibly new severity) rather than
repeated; when it has been absent for ``clear_after`` consecutive windows it is *resolved*.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from perfcallback.report import Recommendation, sort_recommendations

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
        self._resolved: deque[Recommendation] = deque(maxlen=_MAX_RESOLVED)

    def update(self, recs: list[Recommendation]) -> list[tuple[Event, Recommendation]]:
        """Feed one window's findings; returns the events to emit, in severity order."""
        events: list[tuple[Event, Recommendation]] = []
        seen = {r.rule: r for r in recs}
        for rule_id, rec in seen.items():
            self._missing.pop(rule_id, None)
            self._streak[rule_id] = self._streak.get(rule_id, 0) + 1
            if rule_id in self._active:
                old = self._active[rule_id]
                self._active[rule_id] = rec
                if (old.severity, old.message) != (rec.severity, rec.message):
                    events.append(("updated", rec))
            elif self._streak[rule_id] >= self.fire_after:
                self._active[rule_id] = rec
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
                self._resolved.append(rec)
                events.append(("resolved", rec))
        return events

    def active(self) -> list[Recommendation]:
        return sort_recommendations(list(self._active.values()))

    def resolved(self) -> list[Recommendation]:
        return list(self._resolved)
