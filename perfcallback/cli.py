"""Command-line interface: ``perfcallback --version``, ``analyze`` and ``diff``.

``main(argv)`` returns an exit status and is what tests call; only this module prints. Bad input
(a :class:`~perfcallback.trace.TraceError`) becomes one line on stderr and exit status 2, never a
traceback; usage errors exit 2 through argparse.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from perfcallback._version import __version__

EXIT_BAD_INPUT = 2
_PROGRESS_MIN_BYTES = 8 * 2**20  # smaller inputs load too fast to need a progress line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfcallback",
        description="Performance monitor and advisor for PyTorch training loops.",
    )
    parser.add_argument("--version", action="version", version=f"perfcallback {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    analyze = sub.add_parser(
        "analyze", help="analyse PyTorch profiler (Kineto) traces",
        description="Analyse a Kineto trace file, a folder of per-rank traces, or a log folder "
                    "of captures: GPU time breakdown, overlap, kernels, steps, recommendations.")
    analyze.add_argument("path", help="trace file (.json/.json.gz) or folder")
    analyze.add_argument("--rank", type=int, default=None, help="rank to show in detail")
    _common(analyze)
    diff = sub.add_parser(
        "diff", help="compare two runs or traces", description="Compare run B against run A: "
        "figures side by side, what got slower and by how much.")
    diff.add_argument("a", help="baseline trace file or folder")
    diff.add_argument("b", help="trace file or folder to compare with the baseline")
    _common(diff)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--steps", type=_steps_arg, default=None, metavar="A:B",
                   help="analyse ProfilerStep#A up to (not including) #B; default: every step "
                        "but the last, as HolisticTraceAnalysis does")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable or invalid trace files and analyse the rest")
    p.add_argument("--allow-cpu-only", action="store_true",
                   help="analyse traces without GPU events (GPU figures show as n/a)")


def _steps_arg(text: str) -> tuple[int | None, int | None]:
    from perfcallback.trace.steps import parse_steps

    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from perfcallback.trace import TraceError

    try:
        if args.command == "analyze":
            return _analyze(args)
        return _diff(args)
    except TraceError as err:
        _clear_progress()
        hint = " (pass --allow-cpu-only to analyse the host side)" if err.problem.startswith(
            "no GPU events") else ""
        print(f"perfcallback: error: {err}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _load(path: str, args: argparse.Namespace) -> Any:
    from perfcallback.trace import analyze_path

    analysis = analyze_path(path, steps=args.steps, skip_bad=args.skip_bad,
                            require_gpu=not args.allow_cpu_only, progress=_progress_fn(path))
    _clear_progress()
    for skipped in analysis.skipped:
        print(f"perfcallback: skipped {skipped}", file=sys.stderr)
    return analysis


def _analyze(args: argparse.Namespace) -> int:
    from perfcallback.trace import TraceError
    from perfcallback.trace.render import render_analysis
    from perfcallback.trace.window import recommend

    analysis = _load(args.path, args)
    if args.rank is not None and args.rank not in analysis.ranks:
        have = ", ".join(str(r) for r in sorted(analysis.ranks))
        raise TraceError(args.path, f"no rank {args.rank} in this trace (ranks: {have})")

    def rule_failed(rule_id: str, exc: Exception) -> None:
        print(f"perfcallback: rule {rule_id} failed and was skipped: {exc!r}", file=sys.stderr)

    recs = recommend(analysis, on_error=rule_failed)
    if args.json:
        payload = analysis.to_dict()
        if args.rank is not None:
            payload["ranks"] = {str(args.rank): payload["ranks"][str(args.rank)]}
        payload["recommendations"] = [r.to_dict() for r in recs]
        print(json.dumps(payload, indent=2))
    else:
        print(render_analysis(analysis, recs, rank=args.rank))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from perfcallback.trace.diff import diff_analyses
    from perfcallback.trace.render import render_diff

    result = diff_analyses(_load(args.a, args), _load(args.b, args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else render_diff(result))
    return 0


_progress_shown = False


def _progress_fn(path: str) -> Any:
    """A progress printer for large inputs when stderr is a terminal; else ``None``."""
    from perfcallback.trace import find_trace_files

    if not sys.stderr.isatty():
        return None
    try:
        files, _ = find_trace_files(path)
    except Exception:  # errors are reported by the load itself
        return None
    if sum(f.stat().st_size for f in files) < _PROGRESS_MIN_BYTES:
        return None

    def show(name: str, done: int, size: int) -> None:
        global _progress_shown
        pct = 100.0 * done / size if size else 100.0
        sys.stderr.write(f"\rreading {name}: {pct:5.1f}%")
        sys.stderr.flush()
        _progress_shown = True

    return show


def _clear_progress() -> None:
    global _progress_shown
    if _progress_shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        _progress_shown = False
