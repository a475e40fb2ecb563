"""Turn one run's ``perf/...`` scalars, recommendation tables and report into the panes' data.

Pure functions over plain data (``{tag: [(step, value), ...]}``, ``[(step, markdown), ...]`` and
the ``perf_report.json`` dict), so they are tested without TensorBoard; the plugin only reads the
event files through TensorBoard's data provider and hands the results here.

Design notes:
- Tags are the ones :mod:`perfcallback.sinks.tensorboard` writes; a tag a run lacks (CPU runs have
  no CUDA memory, runs before the per-rank scalars have no ``perf/ranks/...``) is simply absent
  from the view. Nothing is invented: no zero stands for a figure that was not written.
- The recommendation history is rebuilt from the Text-tab table written at each change (what was
  active, with its message) and the ``perf/recommendations/<category>`` severity tracks (every
  window). Evidence is not in the table; it comes from ``perf_report.json`` for the findings that
  were active or resolved when the run ended.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from perfcallback.report import PHASES, SEVERITY_RANK

Series = list[tuple[int, float]]
Scalars = Mapping[str, Sequence[tuple[int, float]]]

PREFIX = "perf/"
TABLE_TAG = "perf/recommendations"  # the Text-tab tag (TensorBoardSink._TABLE_TAG)
# torch's SummaryWriter.add_text stores the table under the tag plus this suffix
TEXT_TAGS = (f"{TABLE_TAG}/text_summary", TABLE_TAG)
_GROUPS = ("throughput", "memory", "gc")
_RANK_TAG = re.compile(r"^perf/ranks/(\d+)/(.+)$")
# "| severity | `rule` | category | est. gain |" rows of TensorBoardSink's table
_ROW = re.compile(r"^\|\s*(info|warning|critical)\s*\|\s*`([^`]+)`\s*\|"
                  r"\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|$")
_BULLET = re.compile(r"^\* \*\*`([^`]+)`\*\*: (.*)$")


def _finite(series: Iterable[tuple[int, float]]) -> Series:
    return sorted((int(s), float(v)) for s, v in series if math.isfinite(v))


def breakdown(scalars: Scalars, prefix: str = "perf/") -> dict[str, Any]:
    """The stacked step-time breakdown: one value per phase at each window's step (ms).

    ``prefix`` is ``perf/`` for the run or ``perf/ranks/<r>/`` for one rank. A phase missing at a
    step is ``None`` (drawn as nothing), so the stack never shows time that was not measured.
    """
    phases = {p: dict(_finite(scalars.get(f"{prefix}phase/{p}_ms", ()))) for p in PHASES}
    steps = sorted(set().union(*(s.keys() for s in phases.values())))
    return {
        "steps": steps,
        "phases": {p: [phases[p].get(s) for s in steps] for p in PHASES if phases[p]},
        "step_ms": _finite(scalars.get(f"{prefix}step_ms", ())),
    }


def groups(scalars: Scalars) -> dict[str, dict[str, Series]]:
    """Throughput, memory and GC series, by group then by name (the tag's last part)."""
    out: dict[str, dict[str, Series]] = {g: {} for g in _GROUPS}
    for tag, series in scalars.items():
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == "perf" and parts[1] in out:
            out[parts[1]][parts[2]] = _finite(series)
    return {g: dict(sorted(v.items())) for g, v in out.items() if v}


def severity_tracks(scalars: Scalars) -> dict[str, Series]:
    """``perf/recommendations/<category>`` tracks: severity 0..3 at each window, by category."""
    out = {}
    for tag, series in scalars.items():
        if tag.startswith(TABLE_TAG + "/") and tag not in TEXT_TAGS:
            out[tag.removeprefix(TABLE_TAG + "/")] = _finite(series)
    return dict(sorted(out.items()))


def parse_table(markdown: str) -> list[dict[str, Any]]:
    """The findings of one Text-tab table (``recommendations_markdown``), in table order."""
    rows: dict[str, dict[str, Any]] = {}
    for line in markdown.splitlines():
        line = line.strip()
        if m := _ROW.match(line):
            severity, rule, category, gain = m.groups()
            rows[rule] = {"rule": rule, "severity": severity, "category": category,
                          "est_gain": gain or None, "message": ""}
        elif (m := _BULLET.match(line)) and m.group(1) in rows:
            rows[m.group(1)]["message"] = _unescape(m.group(2))
    return list(rows.values())


def _unescape(cell: str) -> str:
    """Undo ``sinks.tensorboard._cell`` (``\\|`` and ``\\\\``)."""
    return re.sub(r"\\([\\|])", r"\1", cell)


def history(texts: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """The table at each step it changed: ``[{"step": s, "findings": [...]}, ...]``, oldest first.

    The sink rewrites the table at the last window again on close; identical consecutive tables
    are kept once.
    """
    out: list[dict[str, Any]] = []
    for step, markdown in sorted(texts, key=lambda t: t[0]):
        findings = parse_table(markdown)
        if out and out[-1]["findings"] == findings:
            continue
        out.append({"step": int(step), "findings": findings})
    return out


def report_findings(report: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Findings of ``perf_report.json`` with their evidence, active first, then resolved."""
    if not report:
        return []
    out = []
    for status in ("recommendations", "resolved"):
        for rec in report.get(status) or ():
            if isinstance(rec, dict) and isinstance(rec.get("rule"), str):
                out.append({**rec, "status": "active" if status == "recommendations" else
                            "resolved"})
    return out


def ranks(scalars: Scalars, report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The per-rank view, or ``None`` for a run that wrote no per-rank figures.

    Per-rank scalars (``perf/ranks/<r>/...``) give each rank's breakdown over the run; the
    report's ``"ranks"`` entry gives each rank's mean breakdown at the end. The slow rank is the
    one the engine named last (``perf/ranks/slowest_rank``), else the largest mean step time in
    the report.
    """
    names = sorted({int(m.group(1)) for t in scalars if (m := _RANK_TAG.match(t))})
    per_rank = {str(r): {"breakdown": breakdown(scalars, f"perf/ranks/{r}/"),
                         "comm_exposed_ms": _finite(scalars.get(f"perf/ranks/{r}/comm_exposed_ms",
                                                                ()))}
                for r in names}
    final = _report_ranks(report)
    if not per_rank and not final:
        return None
    slowest = _finite(scalars.get("perf/ranks/slowest_rank", ()))
    slow: int | None = int(slowest[-1][1]) if slowest else None
    if slow is None and final:
        slow = int(max(final, key=lambda r: final[r]["breakdown"].get("step") or 0.0))
    return {
        "scalars": per_rank,
        "report": final,
        "spread_pct": _finite(scalars.get("perf/ranks/step_spread_pct", ())),
        "slowest_rank": slowest,
        "slow": slow,
    }


def _report_ranks(report: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    raw = report.get("ranks") if report else None
    if not isinstance(raw, dict):
        return {}
    out = {}
    for rank, entry in raw.items():
        if str(rank).isdigit() and isinstance(entry, dict):
            bd = entry.get("breakdown")
            out[str(rank)] = {**entry, "breakdown": bd if isinstance(bd, dict) else {}}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def worst_severity(findings: Iterable[Mapping[str, Any]]) -> int:
    """The highest severity rank (0 none .. 3 critical) among ``findings``."""
    return max((SEVERITY_RANK.get(str(f.get("severity")), 0) for f in findings), default=0)


def run_view(scalars: Scalars, texts: Sequence[tuple[int, str]],
             report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything the run pane draws, JSON types only."""
    perf = {t: s for t, s in scalars.items() if t.startswith(PREFIX)}
    return {
        "breakdown": breakdown(perf),
        "groups": groups(perf),
        "severity": severity_tracks(perf),
        "history": history(texts),
        "findings": report_findings(report),
        "ranks": ranks(perf, report),
        "report": _report_summary(report),
    }


def _report_summary(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not report:
        return None
    keys = ("steps", "warmup_steps", "breakdown", "throughput", "memory", "gc", "disabled",
            "profiled_steps")
    return {k: report[k] for k in keys if k in report}
