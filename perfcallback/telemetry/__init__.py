"""Telemetry probes that feed each window: NVML device samples, the FLOP count, host threads.

Each probe is a :class:`WindowProbe`: the recorder calls :meth:`WindowProbe.sample` once per
window on the training thread (cheap: it reads what a background thread gathered, or a few
counters) and :meth:`WindowProbe.figures` whenever it summarises a window. The figures join
``WindowStats.extra`` under the names in :data:`perfcallback.stats.EXTRA_KEYS`.
"""

from __future__ import annotations

from typing import Protocol


class WindowProbe(Protocol):
    """A source of per-window figures (see the module docstring)."""

    name: str  # fail-open component name

    def sample(self) -> None:
        """Close the current window's figures (once per window, on the training thread)."""

    def figures(self, step_s: float) -> dict[str, float]:
        """The latest closed window's figures; ``step_s`` is the mean step of the summary."""

    def close(self) -> None:
        """Release threads and handles. Idempotent."""
