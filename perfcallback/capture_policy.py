"""When to capture a profiler trace: the options, and the step-time regression detector behind
automatic captures.

Pure Python, no torch: the detector is a few float operations per step, so it can sit on the hot
path, and both are unit-tested without a profiler.
"""

from __future__ import annotations

import os

from perfcallback._record import record


@record
class ProfileOptions:
    """When and how to capture ``torch.profiler`` traces.

    Args:
        start_after: Steps after the monitor's warm-up at which the first scheduled capture
            begins; ``None`` disables scheduled captures.
        every: Steps between the starts of scheduled captures; ``None`` captures once.
        warmup: Profiler warm-up steps before each capture (prepared but not recorded).
        active: Steps recorded per capture.
        trigger: Capture automatically when the step time regresses against its baseline.
        trigger_factor: A step is slow when it takes more than this times the baseline.
        trigger_steps: Consecutive slow steps that trigger a capture.
        baseline_steps: Steps that form the baseline before triggers can fire; also sets the
            smoothing of the running baseline.
        cooldown_steps: Steps after a capture during which triggers are not checked (the export
            thread and the profiler's own after-effects perturb them).
        max_triggered: Most triggered captures per run.
        record_shapes: Record operator input shapes (``torch.profiler`` option).
        with_stack: Record Python source locations of operators.
        profile_memory: Track tensor allocations.
        cuda: Profile CUDA activity; ``None`` means "when CUDA is available".
        max_traces: Retention: most trace files kept; the oldest are deleted first.
        max_mb: Retention: most megabytes (MiB) of trace files kept.
        trace_dir: Subdirectory of the logdir that holds the captures.
    """

    start_after: int | None = 5
    every: int | None = None
    warmup: int = 1
    active: int = 3
    trigger: bool = True
    trigger_factor: float = 1.5
    trigger_steps: int = 5
    baseline_steps: int = 20
    cooldown_steps: int = 20
    max_triggered: int = 3
    record_shapes: bool = False
    with_stack: bool = False
    profile_memory: bool = False
    cuda: bool | None = None
    max_traces: int = 10
    max_mb: float = 256.0
    trace_dir: str = "profiler"

    def __post_init__(self) -> None:
        for name, low in (("start_after", 0), ("every", 1), ("warmup", 0), ("active", 1),
                          ("trigger_steps", 1), ("baseline_steps", 1), ("cooldown_steps", 0),
                          ("max_triggered", 0), ("max_traces", 1)):
            value = getattr(self, name)
            if value is None and name in ("start_after", "every"):
                continue
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not self.trigger_factor > 1.0:
            raise ValueError(f"trigger_factor must be > 1, got {self.trigger_factor!r}")
        if not self.max_mb > 0:
            raise ValueError(f"max_mb must be > 0, got {self.max_mb!r}")
        if not self.trace_dir or os.path.isabs(self.trace_dir):
            raise ValueError(f"trace_dir must be a relative path, got {self.trace_dir!r}")


class RegressionDetector:
    """Flags a run of ``steps`` consecutive step times above ``factor`` x a running baseline.

    The baseline is the mean of the first ``baseline_steps`` times, then an exponential moving
    average fed only with steps that are not slow, so a slowdown does not drag the baseline up
    before it is detected. After a detection the baseline restarts from the slow level, so a lasting
    new normal is reported once, not forever.
    """

    __slots__ = ("_alpha", "_baseline", "_factor", "_n", "_need", "_seen", "_slow_sum", "_streak",
                 "_sum")

    def __init__(self, *, factor: float, steps: int, baseline_steps: int) -> None:
        self._factor, self._need, self._n = factor, steps, baseline_steps
        self._alpha = 2.0 / (baseline_steps + 1)  # EMA span = baseline_steps
        self._baseline = self._sum = self._slow_sum = 0.0
        self._seen = self._streak = 0

    def update(self, step_s: float) -> dict[str, float] | None:
        """Feed one step time; returns the evidence when a regression is detected, else ``None``."""
        if self._seen < self._n:
            self._seen += 1
            self._sum += step_s
            if self._seen == self._n:
                self._baseline = self._sum / self._n
            return None
        if step_s > self._factor * self._baseline:
            self._streak += 1
            self._slow_sum += step_s
            if self._streak < self._need:
                return None
            slow = self._slow_sum / self._streak
            evidence = {"baseline_step_ms": self._baseline * 1e3, "slow_step_ms": slow * 1e3,
                        "slow_steps": float(self._streak), "factor": slow / self._baseline}
            self._baseline, self._streak, self._slow_sum = slow, 0, 0.0
            return evidence
        self._streak, self._slow_sum = 0, 0.0
        self._baseline += self._alpha * (step_s - self._baseline)
        return None
