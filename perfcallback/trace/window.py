"""Turn a trace analysis into the rule engine's input (:class:`WindowStats`) and recommendations.

Recommendations from a trace come from the same rules as live training
(:func:`perfcallback.rules.evaluate`): each rank's figures become one ``WindowStats``. Its steps
are the analysed ProfilerSteps; ``phase_s["data"]`` is the DataLoader ``__next__`` time per step,
so the dataloader rule applies; the GPU and cross-rank figures go into ``extra`` under the names
of :data:`perfcallback.stats.EXTRA_KEYS`. Figures the trace cannot give are left out of
``extra``, never filled with zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from perfcallback._record import replace
from perfcallback.context import RunContext
from perfcallback.report import SEVERITY_RANK, Recommendation, sort_recommendations
from perfcallback.stats import WindowStats, step_time_fields
from perfcallback.trace.analysis import CrossRank, RankAnalysis, TraceAnalysis

_US = 1e-6  # trace times are microseconds
# RankAnalysis.summary() key -> WindowStats.extra key (see EXTRA_KEYS for their meaning).
_EXTRA_FROM_SUMMARY: dict[str, str] = {
    "gpu_util_pct": "gpu_busy_pct",
    "idle_pct": "gpu_idle_pct",
    "compute_pct": "gpu_compute_pct",
    "non_compute_pct": "gpu_non_compute_pct",
    "comm_pct": "comm_pct",
    "comm_comp_overlap_pct": "comm_comp_overlap_pct",
    "idle_host_wait_pct": "idle_host_wait_pct",
    "kernels_per_step": "kernels_per_step",
    "short_kernel_pct": "short_kernel_pct",
    "launch_delay_p50_us": "launch_delay_us",
    "h2d_pageable_pct": "h2d_pageable_pct",
    "h2d_pct": "h2d_pct",
    "sync_wait_pct": "sync_wait_pct",
}


def window_stats(rank: RankAnalysis, cross: CrossRank | None = None) -> WindowStats:
    """The :class:`WindowStats` of one rank's analysed window.

    Without ProfilerSteps (a trace recorded without torch.profiler's schedule) the whole trace
    counts as one step, and its DataLoader time as that step's data wait: the dataloader rule
    then judges the trace as a whole instead of staying blind.
    """
    times = [s.wall_us * _US for s in rank.steps]
    data_s = sum(s.data_us for s in rank.steps) * _US / len(times) if times else 0.0
    if not times:
        whole = rank.trace_span_us or (rank.temporal.span_us if rank.temporal else 0.0)
        times = [whole * _US]
        data_s = rank.trace_data_us * _US
    step_s = sum(times) / len(times)
    phase_s = {"data": data_s, "forward": 0.0, "backward": 0.0, "optimizer": 0.0,
               "other": max(0.0, step_s - data_s)}
    first = rank.steps[0].number if rank.steps else 0
    return WindowStats(
        first_step=first,
        last_step=rank.steps[-1].number if rank.steps else first,
        phase_s=phase_s,
        extra=_extra(rank, cross),
        **step_time_fields(times),  # type: ignore[arg-type]
    )


def _extra(rank: RankAnalysis, cross: CrossRank | None) -> dict[str, float]:
    summary = rank.summary()
    extra = {key: float(summary[src]) for src, key in _EXTRA_FROM_SUMMARY.items()
             if summary.get(src) is not None}
    if cross is not None:
        for key in ("straggler_spread_pct", "comm_wait_spread_pct", "slowest_rank"):
            value = getattr(cross, key)
            if value is not None:
                extra[key] = float(value)
    return extra


def run_context(rank: RankAnalysis) -> RunContext:
    """What a trace tells the rules about the run (device, rank, the loader when visible)."""
    ctx = RunContext(
        device_type="cuda" if rank.temporal is not None else "cpu",
        world_size=rank.world_size or 1,
        rank=rank.rank,
        cpu_count=None,  # the training host's cores are not in a Kineto trace, and ours are not it
    )
    if rank.dataloader_iter is not None:  # the iterator's class name tells workers or not
        ctx.loader = {
            "num_workers": 0 if rank.dataloader_iter == "SingleProcess" else None,
            "pin_memory": None, "persistent_workers": None, "prefetch_factor": None,
            "batch_size": None,
        }
    ctx.extra.update(source="trace", trace_path=rank.path)
    return ctx


def recommend(
    analysis: TraceAnalysis, *, on_error: Callable[[str, Exception], None] | None = None
) -> list[Recommendation]:
    """Run the rule engine on every rank; one recommendation per rule, the most severe instance.

    When a rule fires on several ranks, its evidence gains ``"ranks"``: where it fired.
    """
    from perfcallback.rules import evaluate  # the registry loads the rule modules lazily

    cross = analysis.cross if len(analysis.ranks) > 1 else None
    best: dict[str, Recommendation] = {}
    fired: dict[str, list[int]] = {}
    for rank, ra in sorted(analysis.ranks.items()):
        for rec in evaluate(window_stats(ra, cross), run_context(ra), on_error=on_error):
            fired.setdefault(rec.rule, []).append(rank)
            old = best.get(rec.rule)
            if old is None or _weight(rec) > _weight(old):
                best[rec.rule] = rec
    out = []
    for rule_id, rec in best.items():
        evidence: dict[str, Any] = dict(rec.evidence)
        if len(analysis.ranks) > 1:
            evidence["ranks"] = fired[rule_id]
        out.append(replace(rec, evidence=evidence))
    return sort_recommendations(out)


def _weight(rec: Recommendation) -> tuple[int, float]:
    return SEVERITY_RANK[rec.severity], rec.est_gain or 0.0
