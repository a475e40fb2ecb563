"""Compare two trace analyses (a baseline A and a candidate B): what got slower, and by how much.

Each run is reduced to the mean of its ranks' figures; kernels are compared by summed time per
analysed step (per trace when there are no steps), so runs of different lengths compare fairly.
"""

from __future__ import annotations

import math
from typing import Any

from perfcallback._record import asdict, record
from perfcallback.trace.analysis import TraceAnalysis

# summary key -> (label, unit, True when a larger value is worse; None: not judged on its own)
METRICS: dict[str, tuple[str, str, bool | None]] = {
    "step_mean_us": ("step time", "us", True),
    "idle_pct": ("GPU idle", "%", True),
    "compute_pct": ("GPU compute", "%", False),
    "non_compute_pct": ("GPU non-compute", "%", True),
    "comm_comp_overlap_pct": ("comm/comp overlap", "%", False),
    "gpu_util_pct": ("GPU utilisation in steps", "%", False),
    "data_share_pct": ("data loading share", "%", True),
    "sync_wait_pct": ("device sync wait", "%", True),
    "kernels_per_step": ("kernels per step", "", True),
    # A longer launch delay means kernels queue longer behind earlier work: the host runs
    # further ahead of the GPU, which is the healthy direction for a GPU-bound step. It only
    # hurts alongside more GPU idle time, which the idle figure already judges.
    "launch_delay_p50_us": ("launch delay p50", "us", None),
}
# Why a figure is not judged, shown under the diff when it changed.
NEUTRAL_NOTES: dict[str, str] = {
    "launch_delay_p50_us": "a longer delay from launch to kernel start means the host runs "
                           "further ahead of the GPU (kernels queue); it is not worse by itself, "
                           "see GPU idle for whether the GPU waited",
}
TOP_KERNEL_CHANGES = 10


@record
class MetricChange:
    """One figure in both runs."""

    key: str
    label: str
    unit: str
    a: float | None
    b: float | None
    worse: bool | None  # None when either side is missing or nothing changed

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def change_pct(self) -> float | None:
        if self.delta is None or not self.a:
            return None
        return 100.0 * self.delta / abs(self.a)


@record
class KernelChange:
    """One kernel name's summed time per step in both runs."""

    name: str
    a_us: float
    b_us: float

    @property
    def delta_us(self) -> float:
        return self.b_us - self.a_us


@record
class TraceDiff:
    """Side-by-side figures of two runs and the kernels that changed most."""

    a_source: str
    b_source: str
    metrics: tuple[MetricChange, ...]
    kernels: tuple[KernelChange, ...]

    @property
    def slower(self) -> tuple[MetricChange, ...]:
        return tuple(m for m in self.metrics if m.worse)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a_source,
            "b": self.b_source,
            "metrics": [_clean({**asdict(m), "delta": m.delta, "change_pct": m.change_pct})
                        for m in self.metrics],
            "kernels": [{**asdict(k), "delta_us": k.delta_us} for k in self.kernels],
            "slower": [m.key for m in self.slower],
        }


def diff_analyses(a: TraceAnalysis, b: TraceAnalysis) -> TraceDiff:
    """Compare run ``b`` against baseline ``a``."""
    ma, mb = _mean_summary(a), _mean_summary(b)
    metrics = []
    for key, (label, unit, higher_is_worse) in METRICS.items():
        va, vb = ma.get(key), mb.get(key)
        worse = None
        if (higher_is_worse is not None and va is not None and vb is not None
                and not math.isclose(va, vb, rel_tol=1e-9)):
            worse = (vb > va) == higher_is_worse
        metrics.append(MetricChange(key=key, label=label, unit=unit, a=va, b=vb, worse=worse))
    return TraceDiff(a_source=a.source, b_source=b.source, metrics=tuple(metrics),
                     kernels=_kernel_changes(a, b))


def _mean_summary(analysis: TraceAnalysis) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for ra in analysis.ranks.values():
        for key, value in ra.summary().items():
            if isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in values.items()}


def _per_step_kernels(analysis: TraceAnalysis) -> dict[str, float]:
    out: dict[str, float] = {}
    for ra in analysis.ranks.values():
        steps = max(1, len(ra.steps))
        for name, total in ra.kernel_us_by_name.items():
            out[name] = out.get(name, 0.0) + total / steps / len(analysis.ranks)
    return out


def _kernel_changes(a: TraceAnalysis, b: TraceAnalysis) -> tuple[KernelChange, ...]:
    ka, kb = _per_step_kernels(a), _per_step_kernels(b)
    changes = [KernelChange(name=n, a_us=ka.get(n, 0.0), b_us=kb.get(n, 0.0)) for n in ka | kb]
    changes.sort(key=lambda c: -abs(c.delta_us))
    return tuple(changes[:TOP_KERNEL_CHANGES])


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
