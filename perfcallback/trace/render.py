"""Plain-text tables of a trace analysis and of a diff, for terminals (the CLI prints them).

Figures that could not be computed show as ``n/a``; the notes under the tables say why.
"""

from __future__ import annotations

from collections.abc import Sequence

from perfcallback.report import Recommendation
from perfcallback.trace.analysis import RankAnalysis, TraceAnalysis
from perfcallback.trace.diff import TraceDiff

_NAME_WIDTH = 60


def _num(value: float | int | None, digits: int = 2, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], first_left: bool = True) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [f"{c:<{w}}" if i == 0 and first_left else f"{c:>{w}}"
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  " + "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _short(name: str) -> str:
    return name if len(name) <= _NAME_WIDTH else name[: _NAME_WIDTH - 3] + "..."


def render_analysis(
    analysis: TraceAnalysis, recommendations: Sequence[Recommendation], *, rank: int | None = None
) -> str:
    """The ``perfcallback analyze`` report: a per-rank summary, then one rank in detail."""
    parts = [f"perfcallback analyze: {analysis.source} ({len(analysis.ranks)} rank"
             f"{'s' if len(analysis.ranks) != 1 else ''})"]
    parts.append(_summary_table(analysis))
    detail = _detail_rank(analysis, rank)
    if detail is not None:
        parts.append(_render_rank(detail))
    parts.append(_cross(analysis))
    notes = list(analysis.notes) + [s for s in analysis.skipped]
    for r, ra in sorted(analysis.ranks.items()):
        notes.extend(f"rank {r}: {n}" for n in ra.notes)
    if notes:
        parts.append("Notes\n" + "\n".join(f"  - {n}" for n in notes))
    if recommendations:
        parts.append("Recommendations\n" + "\n".join(f"  {r.one_line()}" for r in recommendations))
    else:
        parts.append("Recommendations: none")
    return "\n\n".join(p for p in parts if p)


def _detail_rank(analysis: TraceAnalysis, rank: int | None) -> RankAnalysis | None:
    if rank is not None:
        return analysis.ranks[rank]
    slowest = analysis.cross.slowest_rank
    return analysis.ranks[slowest if slowest is not None else min(analysis.ranks)]


def _summary_table(analysis: TraceAnalysis) -> str:
    header = ["rank", "GPU span ms", "idle %", "compute %", "non-compute %", "comm/comp overlap %",
              "steps", "step ms", "GPU util %", "data %"]
    rows = []
    for r, ra in sorted(analysis.ranks.items()):
        s = ra.summary()
        rows.append([str(r), _num(s["span_us"], 2, 1e-3), _num(s["idle_pct"]),
                     _num(s["compute_pct"]), _num(s["non_compute_pct"]),
                     _num(s["comm_comp_overlap_pct"]), str(s["steps"]),
                     _num(s["step_mean_us"], 2, 1e-3), _num(s["gpu_util_pct"]),
                     _num(s["data_share_pct"])])
    return ("GPU time (HTA temporal breakdown: % of the span from first to last GPU event)\n"
            + _table(header, rows, first_left=False))


def _render_rank(ra: RankAnalysis) -> str:
    lines = [f"Rank {ra.rank}: {ra.path}" + (f" ({ra.device_name})" if ra.device_name else ""),
             f"  window: {ra.window}"]
    if ra.kernel_types:
        rows = [[k.kernel_type, str(k.count), _num(k.total_us, 3, 1e-3), _num(k.pct, 1)]
                for k in ra.kernel_types]
        lines += ["Kernel types (summed GPU time)", _table(["type", "count", "ms", "%"], rows)]
    if ra.top_kernels:
        rows = [[_short(k.name), k.kernel_type, str(k.count), _num(k.total_us, 3, 1e-3),
                 _num(k.mean_us, 1), _num(k.pct, 1)] for k in ra.top_kernels]
        lines += ["Top kernels", _table(["kernel", "type", "count", "ms", "mean us", "%"], rows)]
    if ra.idle is not None:
        i = ra.idle
        lines.append("Idle gaps between kernels, per stream: host wait "
                     f"{_num(i.host_wait_us, 3, 1e-3)} ms ({_num(i.host_wait_pct, 1)}%), "
                     "kernel wait "
                     f"{_num(i.kernel_wait_us, 3, 1e-3)} ms, other {_num(i.other_us, 3, 1e-3)} ms")
    if ra.launch is not None:
        la = ra.launch
        lines.append(f"Launches: {la.launches}, delay p50 {_num(la.delay_p50_us, 1)} us, p90 "
                     f"{_num(la.delay_p90_us, 1)} us, max {_num(la.delay_max_us, 1)} us; launch "
                     f"call p50 {_num(la.runtime_p50_us, 1)} us; kernels < 10 us "
                     f"{_num(la.short_kernel_pct, 1)}%; kernels shorter than their launch call "
                     f"{_num(la.gpu_shorter_than_launch_pct, 1)}%")
    if ra.steps:
        rows = [[f"#{s.number}", _num(s.wall_us, 3, 1e-3), _num(s.gpu_util_pct, 1),
                 _num(100 * s.data_us / s.wall_us if s.wall_us else None, 1),
                 _num(s.comm_us, 3, 1e-3), str(s.kernels)] for s in ra.steps]
        lines += ["Steps", _table(["step", "wall ms", "GPU util %", "data %", "comm ms", "kernels"],
                                  rows)]
    return "\n".join(lines)


def _cross(analysis: TraceAnalysis) -> str:
    c = analysis.cross
    if c.straggler_spread_pct is None:
        return ""
    return (f"Across ranks: step-time spread {_num(c.straggler_spread_pct, 1)}% (slowest rank "
            f"{c.slowest_rank}), communication-time spread {_num(c.comm_wait_spread_pct, 1)}%")


def render_diff(diff: TraceDiff) -> str:
    """The ``perfcallback diff`` report: figures side by side, moved kernels, what got worse."""
    rows = []
    for m in diff.metrics:
        mark = {True: "worse", False: "better", None: ""}[m.worse]
        change = "" if m.change_pct is None else f"{m.change_pct:+.1f}%"
        rows.append([m.label + (f" ({m.unit})" if m.unit else ""), _num(m.a), _num(m.b),
                     _num(m.delta), change, mark])
    parts = [f"perfcallback diff\n  A: {diff.a_source}\n  B: {diff.b_source}",
             _table(["figure (mean over ranks)", "A", "B", "B - A", "change", ""], rows)]
    if diff.kernels:
        krows = [[_short(k.name), _num(k.a_us, 1), _num(k.b_us, 1), f"{k.delta_us:+.1f}"]
                 for k in diff.kernels]
        parts.append("Kernels that changed most (us per step)\n"
                     + _table(["kernel", "A", "B", "B - A"], krows))
    slower = diff.slower
    if slower:
        parts.append("Worse in B: " + "; ".join(
            f"{m.label} {_num(m.a)} -> {_num(m.b)}{' ' + m.unit if m.unit else ''}"
            for m in slower))
    else:
        parts.append("Worse in B: nothing")
    return "\n\n".join(parts)
