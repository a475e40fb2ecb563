"""Plain-text tables of a trace analysis and of a diff, for terminals (the CLI prints them).

Figures that could not be computed show as ``n/a``; the notes under the tables say why. Every
time is in milliseconds, in ``analyze`` and ``diff`` alike. Text that comes from the trace
(kernel names, paths) is escaped by :func:`safe_text` before it reaches the terminal: a kernel
name is the trace author's string, and an escape sequence in it could rewrite the screen.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `analyze` needs neither diff nor report at run time
    from perfcallback.report import Recommendation
    from perfcallback.trace.analysis import RankAnalysis, TraceAnalysis
    from perfcallback.trace.diff import MetricChange, TraceDiff

_NAME_WIDTH = 60
_MS = 1e-3  # trace times are microseconds; every table shows milliseconds
# C0 and C1 control characters, DEL, and Unicode bidirectional overrides (which reorder text)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e"
                                 "\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters shown as ``\\xNN`` escapes, so a terminal prints it as is.

    Example::

        >>> safe_text("\x1b[2Jkernel")
        '\\\\x1b[2Jkernel'
    """
    return (_CONTROL_KEEP_LINES if keep_newlines else _CONTROL).sub(_escape, text)


def short_names(names: Sequence[str], width: int = _NAME_WIDTH) -> list[str]:
    """Escaped names cut to ``width`` in the middle (templates differ at both ends), unique.

    Two different names that would read the same once cut get a short digest of the full name,
    so no two rows of a table look alike.
    """
    cut = [_elide(safe_text(n), width) for n in names]
    clashes = {c for c, k in Counter(cut).items() if k > 1}
    out = []
    for name, short in zip(names, cut, strict=True):
        if short in clashes and len(set(n for n, c in zip(names, cut, strict=True)
                                        if c == short)) > 1:
            # crc32, not hashlib: importing hashlib (OpenSSL) costs 3 ms, more than the table
            digest = f"{zlib.crc32(name.encode('utf-8', 'replace')):08x}"[:6]
            short = _elide(safe_text(name), width - 8) + f" [#{digest}]"
        out.append(short)
    return out


def _elide(name: str, width: int) -> str:
    if len(name) <= width:
        return name
    tail = (width - 3) // 3
    return name[: width - 3 - tail] + "..." + name[len(name) - tail:]


def _num(value: float | int | None, digits: int = 2, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], first_left: bool = True) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [f"{c:<{w}}" if i == 0 and first_left else f"{c:>{w}}"
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  " + "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def render_analysis(
    analysis: TraceAnalysis, recommendations: Sequence[Recommendation], *, rank: int | None = None,
    operators: bool = False,
) -> str:
    """The ``perfcallback analyze`` report: a per-rank summary, then one rank in detail.

    ``operators`` adds that rank's operator table (``analyze --ops``).
    """
    parts = [f"perfcallback analyze: {safe_text(analysis.source)} ({len(analysis.ranks)} rank"
             f"{'s' if len(analysis.ranks) != 1 else ''})"]
    parts.append(_summary_table(analysis))
    detail = _detail_rank(analysis, rank)
    if detail is not None:
        parts.append(_render_rank(detail))
        if operators:
            parts.append(_operator_table(detail))
    parts.append(_cross(analysis))
    notes = list(analysis.notes) + [s for s in analysis.skipped]
    for r, ra in sorted(analysis.ranks.items()):
        notes.extend(f"rank {r}: {n}" for n in ra.notes)
    if notes:
        parts.append("Notes\n" + "\n".join(f"  - {safe_text(n)}" for n in notes))
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
        rows.append([str(r), _num(s["span_us"], 2, _MS), _num(s["idle_pct"]),
                     _num(s["compute_pct"]), _num(s["non_compute_pct"]),
                     _num(s["comm_comp_overlap_pct"]), str(s["steps"]),
                     _num(s["step_mean_us"], 2, _MS), _num(s["gpu_util_pct"]),
                     _num(s["data_share_pct"])])
    return ("GPU time (HTA temporal breakdown: % of the span from first to last GPU event)\n"
            + _table(header, rows, first_left=False))


def _render_rank(ra: RankAnalysis) -> str:
    device = f" ({safe_text(ra.device_name)})" if ra.device_name else ""
    lines = [f"Rank {ra.rank}: {safe_text(ra.path)}{device}",
             f"  window: {ra.window}"]
    if ra.kernel_types:
        rows = [[k.kernel_type, str(k.count), _num(k.total_us, 3, _MS), _num(k.pct, 1)]
                for k in ra.kernel_types]
        lines += ["Kernel types (summed GPU time)", _table(["type", "count", "ms", "%"], rows)]
    if ra.top_kernels:
        names = short_names([k.name for k in ra.top_kernels])
        rows = [[name, k.kernel_type, str(k.count), _num(k.total_us, 3, _MS),
                 _num(k.mean_us, 3, _MS), _num(k.pct, 1)]
                for name, k in zip(names, ra.top_kernels, strict=True)]
        lines += ["Top kernels", _table(["kernel", "type", "count", "ms", "mean ms", "%"], rows)]
    if ra.idle is not None:
        i = ra.idle
        lines.append("Idle gaps between kernels, per stream: host wait "
                     f"{_num(i.host_wait_us, 3, _MS)} ms ({_num(i.host_wait_pct, 1)}%), "
                     "kernel wait "
                     f"{_num(i.kernel_wait_us, 3, _MS)} ms, other {_num(i.other_us, 3, _MS)} ms")
    if ra.launch is not None:
        la = ra.launch
        lines.append(f"Launches: {la.launches}, delay p50 {_num(la.delay_p50_us, 3, _MS)} ms, p90 "
                     f"{_num(la.delay_p90_us, 3, _MS)} ms, max {_num(la.delay_max_us, 3, _MS)} ms; "
                     f"launch call p50 {_num(la.runtime_p50_us, 3, _MS)} ms; kernels < 0.01 ms "
                     f"{_num(la.short_kernel_pct, 1)}%; kernels shorter than their launch call "
                     f"{_num(la.gpu_shorter_than_launch_pct, 1)}%")
    if ra.steps:
        rows = [[f"#{s.number}", _num(s.wall_us, 3, _MS), _num(s.gpu_util_pct, 1),
                 _num(100 * s.data_us / s.wall_us if s.wall_us else None, 1),
                 _num(s.comm_us, 3, _MS), str(s.kernels)] for s in ra.steps]
        lines += ["Steps", _table(["step", "wall ms", "GPU util %", "data %", "comm ms", "kernels"],
                                  rows)]
    return "\n".join(lines)


def _operator_table(ra: RankAnalysis) -> str:
    if not ra.operators:
        return f"Top operators of rank {ra.rank}: none (no cpu_op events in the window)"
    names = short_names([o.name for o in ra.operators])
    rows = [[name, str(o.calls), _num(o.device_self_us, 3, _MS), _num(o.device_total_us, 3, _MS),
             _num(o.host_self_us, 3, _MS), _num(o.host_total_us, 3, _MS)]
            for name, o in zip(names, ra.operators, strict=True)]
    return (f"Top operators of rank {ra.rank} (by device self time, then host self time)\n"
            + _table(["operator", "calls", "device self ms", "device total ms", "host self ms",
                      "host total ms"], rows))


def _cross(analysis: TraceAnalysis) -> str:
    c = analysis.cross
    if c.straggler_spread_pct is None:
        return ""
    return (f"Across ranks: step-time spread {_num(c.straggler_spread_pct, 1)}% (slowest rank "
            f"{c.slowest_rank}), communication-time spread {_num(c.comm_wait_spread_pct, 1)}%")


def render_diff(diff: TraceDiff) -> str:
    """The ``perfcallback diff`` report: figures side by side, moved kernels, what got worse.

    Times show in ms (the JSON keeps the trace's microseconds, as its keys say). Figures whose
    direction means nothing on its own (``MetricChange.worse`` is ``None`` by design, such as
    the launch delay) are marked ``see note``, never "worse".
    """
    from perfcallback.trace.diff import NEUTRAL_NOTES

    rows = []
    for m in diff.metrics:
        scale, unit = (_MS, "ms") if m.unit == "us" else (1.0, m.unit)
        mark = {True: "worse", False: "better", None: ""}[m.worse]
        if m.worse is None and m.key in NEUTRAL_NOTES and m.delta:
            mark = "see note"
        change = "" if m.change_pct is None else f"{m.change_pct:+.1f}%"
        rows.append([m.label + (f" ({unit})" if unit else ""), _num(m.a, 3, scale),
                     _num(m.b, 3, scale), _num(m.delta, 3, scale), change, mark])
    parts = [f"perfcallback diff\n  A: {safe_text(diff.a_source)}\n  B: "
             f"{safe_text(diff.b_source)}",
             _table(["figure (mean over ranks)", "A", "B", "B - A", "change", ""], rows)]
    notes = [f"{m.label}: {NEUTRAL_NOTES[m.key]}" for m in diff.metrics
             if m.key in NEUTRAL_NOTES and m.delta]
    if notes:
        parts.append("Notes\n" + "\n".join(f"  - {n}" for n in notes))
    if diff.kernels:
        names = short_names([k.name for k in diff.kernels])
        krows = [[name, _num(k.a_us, 3, _MS), _num(k.b_us, 3, _MS), f"{k.delta_us * _MS:+.3f}"]
                 for name, k in zip(names, diff.kernels, strict=True)]
        parts.append("Kernels that changed most (ms per step)\n"
                     + _table(["kernel", "A", "B", "B - A"], krows))
    slower = diff.slower
    if slower:
        parts.append("Worse in B: " + "; ".join(_change_text(m) for m in slower))
    else:
        parts.append("Worse in B: nothing")
    return "\n\n".join(parts)


def _change_text(m: MetricChange) -> str:
    scale, unit = (_MS, "ms") if m.unit == "us" else (1.0, m.unit)
    digits = 3 if unit == "ms" else 2
    return (f"{m.label} {_num(m.a, digits, scale)} -> {_num(m.b, digits, scale)}"
            f"{' ' + unit if unit else ''}")
