"""Command-line interface: ``perfcallback --version``, ``analyze`` and ``diff``.

``main(argv)`` returns an exit status and is what tests call; only this module prints. Bad input
(a :class:`~perfcallback.trace.TraceError`) becomes one line on stderr and exit status 2, never a
traceback; usage errors exit 2 through argparse. An unexpected exception (a bug) is one line too,
with exit status 3; ``PERFCALLBACK_DEBUG=1`` shows its traceback. Everything printed passes
through :func:`~perfcallback.trace.render.safe_text`: kernel names and paths come from the trace.

This module and ``perfcallback.trace`` never import torch (tests/test_cli.py checks it), so
``perfcallback analyze`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from perfcallback._version import __version__

EXIT_BAD_INPUT = 2
EXIT_BUG = 3
_PROGRESS_MIN_BYTES = 100 * 2**20  # ~1 s to read: below it a progress bar is only flicker
_PROGRESS_MIN_FILES = 8  # a folder of this many ranks takes long enough to show progress
_BAR_WIDTH = 24


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfcallback", formatter_class=_HelpFormatter,
        description="Performance monitor and advisor for PyTorch training loops.",
    )
    parser.add_argument("--version", action="version", version=f"perfcallback {__version__}")
    # prog given: argparse would otherwise build a help formatter now
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="perfcallback")
    analyze = sub.add_parser(
        "analyze", formatter_class=_HelpFormatter, help="analyse PyTorch profiler (Kineto) traces",
        description="Analyse a Kineto trace file, a folder of per-rank traces, or a log folder "
                    "of captures: GPU time breakdown, overlap, kernels, steps, recommendations.")
    analyze.add_argument("path", help="trace file (.json/.json.gz) or folder")
    analyze.add_argument("--rank", type=int, default=None, help="rank to show in detail")
    analyze.add_argument("--ops", action="store_true",
                         help="also print the top CPU operators of that rank (calls, host and "
                              "device time; --json always has them)")
    _common(analyze)
    diff = sub.add_parser(
        "diff", formatter_class=_HelpFormatter, help="compare two runs or traces",
        description="Compare run B against run A: figures side by side, what got slower and by "
                    "how much.")
    diff.add_argument("a", help="baseline trace file or folder")
    diff.add_argument("b", help="trace file or folder to compare with the baseline")
    _common(diff)
    return parser


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without :mod:`shutil`: argparse builds one for every
    ``add_argument`` (to check its metavar), and importing shutil for the terminal width cost
    2 ms of every run, help printed or not."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, as argparse would ask it: $COLUMNS, else the
    terminal's width, else 80."""
    try:
        return max(int(os.environ["COLUMNS"]), 10)
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--steps", type=_steps_arg, default=None, metavar="A:B",
                   help="analyse ProfilerStep#A up to (not including) #B; default: every step "
                        "but the last, as HolisticTraceAnalysis does")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable or invalid trace files and analyse the rest")
    p.add_argument("--allow-cpu-only", action="store_true",
                   help="analyse traces without GPU events (GPU figures show as n/a)")
    p.add_argument("--max-trace-mb", type=_max_mb_arg, default=None, metavar="MB",
                   help="refuse a trace file that decompresses to more than MB megabytes "
                        "(default 2048; 0: no limit); bounds memory on hostile input")


def _steps_arg(text: str) -> tuple[int | None, int | None]:
    from perfcallback.trace.steps import parse_steps

    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _max_mb_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of MB, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


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
        _err(f"perfcallback: error: {err}{hint}")
        return EXIT_BAD_INPUT
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("PERFCALLBACK_DEBUG"):
            raise
        _clear_progress()
        _err(f"perfcallback: internal error: {type(exc).__name__}: {exc} (set "
             "PERFCALLBACK_DEBUG=1 for the traceback, and please report it)")
        return EXIT_BUG


def run() -> NoReturn:
    """The ``perfcallback`` command and ``python -m perfcallback``: :func:`main`, then exit
    without tearing the interpreter down.

    Freeing every module and object at exit costs ~5 ms, a tenth of ``analyze`` on a small
    trace, and this process has nothing left to finalise: no files open for writing, no exit
    handlers of its own, only daemon threads. Output is flushed first.

    Also the place for choices that are the whole process's to make, not a library's (so not
    :func:`main`'s, which tests and other programs call in their own process): msgspec is
    imported without what it does not need (:func:`~perfcallback.trace.parse.lean_msgspec_import`).
    """
    from perfcallback.trace.parse import lean_msgspec_import

    lean_msgspec_import()
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (``| head``): the output was not all delivered
        status = status or 1
    os._exit(status)


def _out(text: str) -> None:
    from perfcallback.trace.render import safe_text

    print(safe_text(text, keep_newlines=True))


def _err(line: str) -> None:
    from perfcallback.trace.render import safe_text

    print(" ".join(safe_text(line).split()), file=sys.stderr)


def _load(path: str, args: argparse.Namespace, *, operators: bool = False) -> Any:
    from perfcallback.trace import analyze_path
    from perfcallback.trace.parse import MIB, TraceLimits

    limits = TraceLimits() if args.max_trace_mb is None else TraceLimits(
        max_bytes=args.max_trace_mb * MIB)
    # A gzip trace inflates on a thread (perfcallback.trace.parse._Inflater) while this one
    # decodes; at the default 5 ms switch interval that thread waits for the GIL after each zlib
    # call and the two run nearly in turn. Hand the GIL over sooner while loading (restored after).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        analysis = analyze_path(path, steps=args.steps, skip_bad=args.skip_bad,
                                require_gpu=not args.allow_cpu_only, progress=_progress_fn(path),
                                limits=limits, operators=operators)
    finally:
        sys.setswitchinterval(interval)
    _clear_progress()
    for skipped in analysis.skipped:
        _err(f"perfcallback: skipped {skipped}")
    return analysis


def _analyze(args: argparse.Namespace) -> int:
    from perfcallback.trace import TraceError
    from perfcallback.trace.render import render_analysis
    from perfcallback.trace.window import recommend

    analysis = _load(args.path, args, operators=args.ops or args.json)  # only when shown
    if args.rank is not None and args.rank not in analysis.ranks:
        have = ", ".join(str(r) for r in sorted(analysis.ranks))
        raise TraceError(args.path, f"no rank {args.rank} in this trace (ranks: {have})")

    def rule_failed(rule_id: str, exc: Exception) -> None:
        _err(f"perfcallback: rule {rule_id} failed and was skipped: {exc!r}")

    recs = recommend(analysis, on_error=rule_failed)
    if args.json:
        payload = analysis.to_dict()
        if args.rank is not None:
            payload["ranks"] = {str(args.rank): payload["ranks"][str(args.rank)]}
        payload["recommendations"] = [r.to_dict() for r in recs]
        _out(json.dumps(payload, indent=2))  # ASCII: json escapes every control character
    else:
        _out(render_analysis(analysis, recs, rank=args.rank, operators=args.ops))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from perfcallback.trace.diff import diff_analyses
    from perfcallback.trace.render import render_diff

    result = diff_analyses(_load(args.a, args), _load(args.b, args))
    _out(json.dumps(result.to_dict(), indent=2) if args.json else render_diff(result))
    return 0


_progress_shown = False


def _progress_fn(path: str) -> Any:
    """A progress bar on stderr for long reads (large files, many ranks), only on a terminal.

    No dependency: one line rewritten with ``\\r``, cleared before anything else is printed.
    """
    from perfcallback.trace import find_trace_files

    if not sys.stderr.isatty():
        return None
    try:
        files, _ = find_trace_files(path)
        sizes = {f.name: f.stat().st_size for f in files}
    except Exception:  # errors are reported by the load itself
        return None
    total = sum(sizes.values())
    if total < _PROGRESS_MIN_BYTES and len(files) < _PROGRESS_MIN_FILES:
        return None
    done: dict[str, int] = {}

    def show(name: str, read: int, size: int) -> None:
        global _progress_shown
        done[name] = min(read, size)
        frac = sum(done.values()) / total if total else 1.0
        filled = int(frac * _BAR_WIDTH)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * frac:3.0f}% "
                         f"reading {len(done)}/{len(files)} files")
        sys.stderr.flush()
        _progress_shown = True

    return show


def _clear_progress() -> None:
    global _progress_shown
    if _progress_shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
        _progress_shown = False
