"""Diagnoses that real traces got wrong, each on a small synthetic trace that shows the pattern,
and the CLI's import path (no torch)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perfcallback.cli import main
from perfcallback.trace import analyze_path
from perfcallback.trace.render import short_names
from perfcallback.trace.window import recommend

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"
T0, MS = 1_000_000.0, 1000.0
LOADER = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"deviceProperties": [{"id": 0, "name": "NVIDIA H100"}],
                                "traceEvents": events}))
    return path


def _x(cat: str, name: str, ts: float, dur: float, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "ts": T0 + ts, "dur": dur, "args": args}


def _input_bound(steps: bool, queue_ms: float, loader_ms: float = 55) -> list[dict[str, Any]]:
    """4 x 100 ms: DataLoader ``loader_ms``, then 200 small kernels launched 25 us apart, each
    starting ``queue_ms`` after its launch (a deep queue: the host runs ahead of the GPU)."""
    events, corr = [], 0
    for i in range(4):
        base = i * 100 * MS
        if steps:
            events.append(_x("user_annotation", f"ProfilerStep#{i + 1}", base, 100 * MS))
        events.append(_x("user_annotation", LOADER, base, loader_ms * MS))
        for k in range(200):
            corr += 1
            launch = base + loader_ms * MS + k * 25.0
            events.append(_x("cuda_runtime", "cudaLaunchKernel", launch, 4.0, correlation=corr))
            events.append(_x("kernel", "void small_kernel<float>", launch + queue_ms * MS, 8.0,
                             stream=7, correlation=corr))
    return events


def test_trace_without_profiler_steps_gets_the_dataloader_diagnosis(tmp_path: Path) -> None:
    path = _write(tmp_path / "rank-0.json", _input_bound(steps=False, queue_ms=0.01, loader_ms=94))
    analysis = analyze_path(path)
    ra = analysis.ranks[0]
    assert not ra.steps and ra.data_share_pct == pytest.approx(100 * 376 / 399, abs=1)
    rules = {r.rule for r in recommend(analysis)}
    assert "dataloader.stall" in rules and "launch_bound.small_kernels" not in rules


def test_idle_explained_by_data_wait_is_not_launch_bound(tmp_path: Path) -> None:
    path = _write(tmp_path / "rank-0.json", _input_bound(steps=True, queue_ms=64))
    analysis = analyze_path(path, steps=(1, 4))
    assert analysis.ranks[0].launch is not None
    assert analysis.ranks[0].launch.delay_p50_us > 1000  # host far ahead of the GPU
    rules = {r.rule for r in recommend(analysis)}
    assert "dataloader.stall" in rules and "launch_bound.small_kernels" not in rules


def test_launch_bound_still_fires_without_data_wait(tmp_path: Path) -> None:
    """The control: the same small kernels, no DataLoader, kernels start as they are launched."""
    events = [e for e in _input_bound(steps=True, queue_ms=0.01) if e["name"] != LOADER]
    rules = {r.rule for r in recommend(analyze_path(_write(tmp_path / "r.json", events)))}
    assert "launch_bound.small_kernels" in rules


def test_offline_findings_do_not_quote_this_machines_cores(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["analyze", str(DATA / "dataloader_bound")]) == 0
    out = capsys.readouterr().out
    assert "dataloader.stall" in out and "training host's cores" in out
    assert "you have" not in out


def test_diff_does_not_call_a_longer_launch_delay_worse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = _write(tmp_path / "a.json", _input_bound(steps=True, queue_ms=0.01))
    b = _write(tmp_path / "b.json", _input_bound(steps=True, queue_ms=2))
    assert main(["diff", str(a), str(b), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    delay = next(m for m in payload["metrics"] if m["key"] == "launch_delay_p50_us")
    assert delay["b"] > delay["a"] and delay["worse"] is None
    assert "launch_delay_p50_us" not in payload["slower"]
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "launch delay p50 (ms)" in out and "see note" in out and "host runs further" in out


def test_analyze_and_diff_show_times_in_ms_only(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = str(DATA / "overlap_full"), str(DATA / "overlap_none")
    for argv in (["analyze", a], ["diff", a, b]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert " us" not in out and "(us" not in out and "mean us" not in out
    assert "step time (ms)" in out


def test_long_kernel_names_stay_distinct() -> None:
    stem = "void at::native::vectorized_elementwise_kernel<4, at::native::" + "X" * 40
    names = [stem + "AddFunctor<float>>", stem + "AddFunctor<half>>", stem + "MulFunctor<float>>"]
    short = short_names(names, width=60)
    assert len(set(short)) == 3 and all(len(s) <= 60 for s in short)
    same_tail = ["A" * 80 + "B" * 10, "A" * 70 + "C" * 10 + "B" * 10]  # differ only mid-name
    cut = short_names(same_tail, width=40)
    assert len(set(cut)) == 2 and all(len(s) <= 40 for s in cut)


def test_the_cli_never_imports_torch() -> None:
    code = ("import sys\n"
            "from perfcallback.cli import main\n"
            f"main(['analyze', {str(DATA / 'two_ranks_late_allreduce')!r}])\n"
            f"main(['diff', {str(DATA / 'overlap_full')!r}, {str(DATA / 'overlap_none')!r}])\n"
            "import perfcallback\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "print(bad, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "[]"
    assert "Recommendations" in proc.stdout  # the rules ran, without torch


def test_public_names_still_resolve_lazily() -> None:
    code = ("import sys, perfcallback\n"
            "assert 'torch' not in sys.modules\n"
            "from perfcallback import PerfMonitor, Recommendation, Report\n"
            "assert 'torch' in sys.modules and PerfMonitor.__module__ == 'perfcallback.monitor'\n"
            "assert sorted(perfcallback.__all__) == sorted(set(perfcallback.__all__))\n"
            "assert {'PerfMonitor', 'Report'} <= set(dir(perfcallback))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_small_traces_skip_the_msgspec_import_large_ones_use_it() -> None:
    """``analyze`` imports only what the input needs: the stdlib decoder for a small trace (msgspec
    costs more to import than it saves there), msgspec for a large one; neither needs
    ``perfcallback.ranks`` (live straggler state), ``perfcallback.trace.diff`` or the operator
    table (not shown without ``--ops``), nor :mod:`dataclasses` (the result types are records:
    perfcallback/_record.py says why), :mod:`shutil` or :mod:`hashlib` (milliseconds each), nor,
    with msgspec, ``typing_extensions`` and :mod:`inspect` (parse.lean_msgspec_import)."""
    small = DATA / "two_ranks_late_allreduce"
    large = Path(__file__).resolve().parents[1] / "data" / "shared" / "hta" / "nccl_parser_config"
    # The command's own entry point (cli.run), which ends in os._exit: list the modules there.
    code = ("import os, sys\n"
            "real_exit = os._exit\n"
            "def listed(status):\n"
            "    print(sorted({'msgspec', 'perfcallback.ranks', 'perfcallback.trace.diff',"
            " 'dataclasses', 'shutil', 'hashlib', 'perfcallback.trace.operators',"
            " 'typing_extensions', 'inspect'} & set(sys.modules)), file=sys.stderr)\n"
            "    sys.stderr.flush()\n"
            "    real_exit(status)\n"
            "os._exit = listed\n"
            "sys.argv = ['perfcallback', 'analyze', sys.argv[1]]\n"
            "from perfcallback.cli import run\n"
            "run()\n")
    fast = "['msgspec']" if importlib.util.find_spec("msgspec") else "[]"  # the `trace` extra
    for path, expected in ((small, "[]"), (large, fast)):
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, timeout=60, check=True)
        assert proc.stderr.strip().splitlines()[-1] == expected, path
        assert "Recommendations" in proc.stdout
