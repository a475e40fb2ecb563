"""Trace analysis speed and peak memory: perfcallback against HolisticTraceAnalysis, interleaved.

Each measurement runs in a fresh child process (imports done before the clock starts), so neither
tool inherits the other's caches or heap. Runs alternate perfcallback, HTA, perfcallback, HTA...
on each trace. Time covers loading the trace and computing the temporal breakdown and the
comm/comp overlap (perfcallback computes all its figures in that time). Peak memory is the rise of
the child's peak RSS over its RSS after imports (the peak is reset first via /proc/self/clear_refs).

Usage::

    python benchmarks/analyze_speed.py                  # the larger shared traces, 3 rounds
    python benchmarks/analyze_speed.py --repeat 5 DIR [DIR ...]

``--process`` measures what a user waits for instead: the wall time of a whole process, from
start to exit, of ``perfcallback analyze PATH`` (the CLI: no torch import; the breakdown,
overlap, idle time, kernels, steps and recommendations) and of ``perfcallback analyze PATH
--json`` (all that plus the operator table), against ``python -c`` running HTA's temporal
breakdown and overlap, after one untimed run of each (bytecode written, files cached).

Target: at least 10x faster than HTA as a process on each single trace, with the same figures
(temporal breakdown within 1 pp, overlap within 2 pp: tests/trace/test_shared_traces.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
ALL_SETS = sorted(str(p.relative_to(SHARED)) for p in SHARED.glob("*/*") if p.is_dir()) \
    if SHARED.is_dir() else []
_HTA_PROCESS = """
import logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
from hta.trace_analysis import TraceAnalysis
ta = TraceAnalysis(trace_dir=sys.argv[1])
ta.get_temporal_breakdown(visualize=False)
ta.get_comm_comp_overlap(visualize=False)
"""
DEFAULT_SETS = (
    "hta/df_index_resolver", "hta/trace_diff_control", "hta/trace_diff_test",
    "hta/ns_resolution_trace", "hta/nccl_parser_config", "tracelens/h100_owlv2",
    "tracelens/h100_timesformer", "tracelens/b200_eager",
)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(tool: str, path: str) -> None:
    """Run one tool once on ``path``; print its time and peak-memory rise as JSON."""
    warnings.filterwarnings("ignore")
    if tool == "hta":
        from hta.trace_analysis import TraceAnalysis

        logging.disable(logging.CRITICAL)

        def work() -> None:
            ta = TraceAnalysis(trace_dir=path)
            ta.get_temporal_breakdown(visualize=False)
            ta.get_comm_comp_overlap(visualize=False)
    else:
        from perfcallback.trace import analyze_path

        def work() -> None:
            analyze_path(path)

    try:  # reset the peak-RSS mark so import-time peaks do not hide the work's peak
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    base = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    work()
    elapsed = time.perf_counter() - t0
    print(json.dumps({"s": elapsed, "peak_mib": (_rss_kib("VmHWM") - base) / 1024}))


def _measure(tool: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", tool, str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# As installed: pip compiles every module to bytecode at install time, but an editable checkout
# run with PYTHONDONTWRITEBYTECODE=1 (as some CI images set) recompiles perfcallback's ~60 modules
# in every process (~40 ms). Children may write bytecode, and an untimed first run does it.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _process_s(tool: str, path: Path) -> float | None:
    """Wall time of one whole process; ``None`` when the tool fails on this trace."""
    if tool == "hta":
        cmd = [sys.executable, "-c", _HTA_PROCESS, str(path)]
    else:
        cmd = [sys.executable, "-m", "perfcallback", "analyze", str(path), "--allow-cpu-only"]
        if tool == "ours --json":
            cmd.append("--json")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_ENV)
    elapsed = time.perf_counter() - t0
    return elapsed if proc.returncode == 0 else None


def _process_table(paths: list[Path], repeat: int) -> None:
    print(f"{'trace':<40}{'MB':>6}{'ours s':>8}{'--json s':>9}{'HTA s':>7}"
          f"{'speed-up':>10}{'--json':>8}")
    ratios: list[float] = []
    json_ratios: list[float] = []
    tools = ("ours", "ours --json", "hta")
    for path in paths:
        runs: dict[str, list[float]] = {tool: [] for tool in tools}
        for tool in tools:  # untimed: writes bytecode, warms the page cache
            _process_s(tool, path)
        for _ in range(repeat):  # interleaved
            for tool in tools:
                t = _process_s(tool, path)
                if t is not None:
                    runs[tool].append(t)
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()))
        name = os.path.relpath(path, SHARED) if path.is_relative_to(SHARED) else str(path)
        t_ours, t_json = (statistics.median(runs[t]) if runs[t] else float("nan")
                          for t in tools[:2])
        row = f"{name[:39]:<40}{size / 2**20:>6.2f}{t_ours:>8.3f}{t_json:>9.3f}"
        if not runs["hta"]:
            print(f"{row}{'fails':>7}")
            continue
        t_hta = statistics.median(runs["hta"])
        ratios.append(t_hta / t_ours)
        json_ratios.append(t_hta / t_json)
        print(f"{row}{t_hta:>7.3f}{t_hta / t_ours:>9.1f}x{t_hta / t_json:>7.1f}x")
    print(f"process speed-up (HTA / ours) over {len(ratios)} traces HTA loads: "
          f"analyze: min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x; "
          f"analyze --json: min {min(json_ratios):.1f}x, "
          f"median {statistics.median(json_ratios):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", help="trace files or folders (default: shared traces)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per trace (median kept)")
    parser.add_argument("--process", action="store_true",
                        help="whole-process wall time of the CLI against HTA, every shared trace")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.process:
        _process_table([Path(p) for p in args.sets] or [SHARED / s for s in ALL_SETS],
                       args.repeat)
        return
    paths = [Path(p) for p in args.sets] or [SHARED / s for s in DEFAULT_SETS]
    print(f"{'trace':<34}{'MB':>6}{'ours s':>9}{'HTA s':>8}{'speed-up':>10}"
          f"{'ours MiB':>10}{'HTA MiB':>9}{'mem ratio':>11}")
    speedups, mem_ratios = [], []
    for path in paths:
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "hta": []}
        for _ in range(args.repeat):  # interleaved: ours, HTA, ours, HTA, ...
            runs["ours"].append(_measure("ours", path))
            runs["hta"].append(_measure("hta", path))
        t_ours = statistics.median(r["s"] for r in runs["ours"])
        t_hta = statistics.median(r["s"] for r in runs["hta"])
        m_ours = statistics.median(r["peak_mib"] for r in runs["ours"])
        m_hta = statistics.median(r["peak_mib"] for r in runs["hta"])
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()))
        speedups.append(t_hta / t_ours)
        mem_ratios.append(m_ours / m_hta if m_hta > 0 else float("nan"))
        name = os.path.relpath(path, SHARED) if path.is_relative_to(SHARED) else str(path)
        print(f"{name[:33]:<34}{size / 2**20:>6.2f}{t_ours:>9.3f}{t_hta:>8.3f}"
              f"{t_hta / t_ours:>9.1f}x{m_ours:>10.1f}{m_hta:>9.1f}{mem_ratios[-1]:>10.2f}x")
    print(f"speed-up (HTA time / ours): min {min(speedups):.1f}x, "
          f"median {statistics.median(speedups):.1f}x; "
          f"peak memory (ours / HTA): max {max(mem_ratios):.2f}x, "
          f"median {statistics.median(mem_ratios):.2f}x")


if __name__ == "__main__":
    main()
