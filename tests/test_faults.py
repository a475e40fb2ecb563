"""The fault-injection matrix (docs/reliability.md): each fault, on PerfMonitor and on PerfCallback,
in a real child process (tests/fault_worker.py), so that a crash or a hang would show.

What must hold in every case: training is never stopped by perfcallback; the report file is absent
or complete (valid JSON), never truncated; no message asks the user to report their own mistake or
their machine's; the user's own exception reaches them unchanged.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

WORKER = Path(__file__).with_name("fault_worker.py")
ADAPTERS = ["monitor", pytest.param("lightning", marks=pytest.mark.skipif(
    not any((Path(p) / "lightning").is_dir() for p in sys.path), reason="needs lightning"))]


def run(adapter: str, case: str, out: Path, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.run([sys.executable, str(WORKER), adapter, case, str(out)],
                          capture_output=True, text=True, timeout=150,
                          env={**os.environ, **(env or {})})
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
    return proc, result


def report_file_is_absent_or_complete(out: Path) -> dict[str, Any] | None:
    path = out / "perf" / "perf_report.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())  # raises on a truncated file


def no_blame(stderr: str) -> None:
    assert "Please report" not in stderr, stderr[-3000:]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_failing_sink_is_switched_off_as_the_users(tmp_path: Path, adapter: str) -> None:
    proc, result = run(adapter, "sink", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["steps"] > 0 and "user:sink[0]:BrokenSink" in result["disabled"]
    assert "your sink[0]:BrokenSink raised RuntimeError: sink bug" in proc.stderr
    no_blame(proc.stderr)
    assert report_file_is_absent_or_complete(tmp_path)["steps"] == result["steps"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_full_disk_is_one_line_and_no_temporary_file(tmp_path: Path, adapter: str) -> None:
    proc, result = run(adapter, "fsize", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["steps"] > 0
    assert "file size limit (4096 bytes) reached writing the trace" in proc.stderr
    assert "FileNotFoundError" not in proc.stderr
    no_blame(proc.stderr)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    report_file_is_absent_or_complete(tmp_path)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unwritable_logdir_is_one_line(tmp_path: Path, adapter: str) -> None:
    proc, result = run(adapter, "unwritable", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["steps"] > 0 and "logdir" in result["disabled"]
    assert proc.stderr.count("logdir not writable") == 1 and "Traceback" not in proc.stderr
    assert (tmp_path / "a_file").read_text() == "user data"  # never lose user data


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_broken_tensorboard_lets_training_finish(tmp_path: Path, adapter: str) -> None:
    """An installed tensorboard whose import raises TypeError (a protobuf mismatch)."""
    broken = tmp_path / "site" / "tensorboard"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise TypeError("Descriptors cannot be created directly.")\n')
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH",
                                                                                 "")])}
    proc, result = run(adapter, "broken_tb", tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["steps"] > 0
    assert "fails to import (TypeError: Descriptors cannot be created directly.)" in proc.stderr
    no_blame(proc.stderr)
    assert report_file_is_absent_or_complete(tmp_path)["steps"] == result["steps"]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("sig", ["sigterm", "sigint"])
def test_a_signal_mid_run_leaves_the_report_absent_or_complete(
    tmp_path: Path, adapter: str, sig: str
) -> None:
    proc, _ = run(adapter, sig, tmp_path)
    if adapter == "monitor" and sig == "sigterm":  # default action: the process ends at once
        assert proc.returncode == -signal.SIGTERM
    if adapter == "monitor" and sig == "sigint":  # KeyboardInterrupt reaches the user
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    report = report_file_is_absent_or_complete(tmp_path)
    if report is not None:
        assert 0 < report["steps"] <= 15
    no_blame(proc.stderr)
    for trace in tmp_path.rglob("*.pt.trace.json.gz"):  # a trace that exists is whole
        with gzip.open(trace) as f:
            json.load(f)
    # A process killed mid-export may leave its hidden temporary files; the next run sweeps them.
    from perfcallback.profiling import sweep_stale_exports

    sweep_stale_exports(tmp_path / "perf" / "profiler")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_users_exception_reaches_them_unchanged(tmp_path: Path, adapter: str) -> None:
    proc, result = run(adapter, "user_exc", tmp_path)
    assert proc.returncode == 1 and result is None
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "UserBug: user bug 42", proc.stderr[-2000:]
    assert 'raise UserBug("user bug 42")' in proc.stderr  # its own traceback, to its own line
    no_blame(proc.stderr)
    report = report_file_is_absent_or_complete(tmp_path)
    # the steps before it (2 warm-up, 13 measured or profiled), written whole
    assert report is not None and report["steps"] + report["profiled_steps"] == 13


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_forked_dataloader_workers(tmp_path: Path, adapter: str) -> None:
    proc, result = run(adapter, "fork_workers", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["steps"] + result["profiled"] == 28 and not result["disabled"]
    no_blame(proc.stderr)
    reports = list(tmp_path.rglob("perf_report*.json"))
    assert [p.name for p in reports] == ["perf_report.json"]  # workers write nothing
