"""A window for the precision rule's end-to-end checks: forward and backward most of the step."""

from __future__ import annotations

from perfcallback.stats import WindowStats, step_time_fields


def window_for_precision() -> WindowStats:
    return WindowStats(first_step=6, last_step=30, **step_time_fields([1.0] * 25),  # type: ignore[arg-type]
                       phase_s={"data": 0.0, "forward": 0.4, "backward": 0.4, "optimizer": 0.1,
                                "other": 0.1})
