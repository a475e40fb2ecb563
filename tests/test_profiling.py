"""Profiler trace capture: scheduled and triggered captures that torch-tb-profiler and Perfetto open."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from perfcallback import PerfMonitor
from perfcallback.capture_policy import ProfileOptions, RegressionDetector
from perfcallback.profiling import Capture, TraceProfiler

from _helpers import FakeClock, make_loader, tiny_model

STEP_RE = re.compile(r"ProfilerStep#(\d+)$")


def load_trace(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def profiler_steps(trace: dict) -> list[int]:
    names = (e.get("name", "") for e in trace["traceEvents"])
    return sorted(int(m.group(1)) for m in map(STEP_RE.match, names) if m)


def trace_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.pt.trace.json.gz"))


def train(logdir: Path, steps: int, options: ProfileOptions | None, step_sleep_s: float = 0.0,
          **kw) -> PerfMonitor:
    """A real (tiny) training loop under a monitor that profiles into ``logdir``."""
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with PerfMonitor(model=model, optimizer=opt, logdir=logdir, tensorboard=False,
                     profile=options if options is not None else True, warmup_steps=2,
                     log_recommendations=False, **kw) as perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * steps, batch_size=8)):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
                time.sleep(step_sleep_s)
    return perf


def _load_with_plugin(run_dir: str) -> object:
    from torch_tb_profiler import io as tb_io
    from torch_tb_profiler.profiler import RunLoader

    cache = tb_io.Cache(tempfile.mkdtemp())
    return RunLoader(Path(run_dir).name, run_dir, cache).load()


def test_default_capture_is_listed_and_opened_by_torch_tb_profiler(tmp_path: Path) -> None:
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler import consts

    perf = train(tmp_path, steps=20, options=None)  # defaults: one capture, 5 steps after warm-up
    (path,) = trace_files(tmp_path)
    # What the plugin scans for: a directory under the logdir holding <worker>.<ts>.pt.trace.json.gz
    run_dir = path.parent
    assert run_dir.relative_to(tmp_path).as_posix() == "profiler/step0000009-scheduled"
    match = consts.WORKER_PATTERN.match(path.name)
    assert match and match.group(1) == perf.recorder.profiler.worker
    # Loaded as the plugin loads it (RunLoader: one process per worker file).
    run = _load_with_plugin(str(run_dir))
    assert run.workers == [perf.recorder.profiler.worker]
    assert {v.name for v in run.views} >= {"overall", "operator", "trace"}
    (span,) = run.get_spans()
    profile = run.get_profile(run.workers[0], span)
    assert [row[0] for row in profile.overview["steps"]["rows"]] == ["9", "10", "11"]
    # Profiled steps (the warm-up step 8 and steps 9-11) are left out of the figures.
    assert perf.report().steps == 20 - 2 - 4


def test_traces_are_plain_chrome_trace_event_json(tmp_path: Path) -> None:
    train(tmp_path, steps=12, options=ProfileOptions(start_after=1, warmup=1, active=2,
                                                     record_shapes=True, with_stack=True,
                                                     profile_memory=True))
    (path,) = trace_files(tmp_path)
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary files left
    trace = load_trace(path)
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    for event in trace["traceEvents"]:
        assert isinstance(event["ph"], str) and event["ph"] in "XBEiIsftfCMPbenROND"
        assert "pid" in event or event["ph"] == "M"
        if event["ph"] == "X":
            assert isinstance(event["name"], str)
            assert isinstance(event["ts"], (int, float)) and event["dur"] >= 0
    assert profiler_steps(trace) == [5, 6]
    ops = [e for e in trace["traceEvents"] if e.get("cat") == "cpu_op"]
    assert any(e["name"] == "aten::addmm" for e in ops)
    assert any("Input Dims" in e.get("args", {}) for e in ops)  # record_shapes
    assert trace.get("profile_memory") == "1" or any(
        e.get("name") == "[memory]" for e in trace["traceEvents"])


def test_a_slowdown_triggers_a_capture_of_the_slow_part_and_not_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    slow_from = 60  # step index (1-based) where steps get three times slower
    options = ProfileOptions(start_after=None, trigger=True, trigger_steps=4, baseline_steps=10,
                             warmup=1, active=2)
    x = torch.randn(64, 64)
    with caplog.at_level(logging.WARNING, logger="perfcallback"), PerfMonitor(
        logdir=tmp_path, tensorboard=False, profile=options, warmup_steps=2, clock=clock,
        log_recommendations=False,
    ) as perf:
        for i in perf.wrap_loader(range(1, 101)):
            with perf.step():
                if i >= slow_from:
                    torch.linalg.qr(x)  # the slow part's extra work, to be seen in the trace
                    clock.advance(0.030)
                else:
                    clock.advance(0.010)
    captures = list(perf.recorder.profiler.captures)
    assert [c.reason for c in captures] == ["triggered"]  # once: the slower level is the new normal
    capture = captures[0]
    # 4 slow steps (60-63) fire at step 63; step 64 is the profiler's warm-up; 65-66 recorded.
    assert (capture.first_step, capture.last_step) == (65, 66)
    assert capture.evidence["baseline_step_ms"] == pytest.approx(10.0)
    assert capture.evidence["slow_step_ms"] == pytest.approx(30.0)
    trace = load_trace(capture.path)
    assert profiler_steps(trace) == [65, 66]
    assert any(e.get("name") == "aten::linalg_qr" for e in trace["traceEvents"])
    assert f"profiling steps {capture.first_step}-{capture.last_step}" in caplog.text
    assert str(capture.path) in caplog.text  # where it went
    assert perf.report().steps == 100 - 2 - 3


def test_a_steady_loop_triggers_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    options = ProfileOptions(start_after=None, trigger_steps=3, baseline_steps=5)
    with PerfMonitor(logdir=tmp_path, tensorboard=False, profile=options, warmup_steps=0,
                     clock=clock, log_recommendations=False) as perf:
        for i in perf.wrap_loader(range(200)):
            with perf.step():
                clock.advance(0.010 + 0.002 * (i % 3))  # jitter well below the 1.5x factor
    assert not perf.recorder.profiler.captures and not trace_files(tmp_path)
    assert perf.report().steps == 200


def test_regression_detector() -> None:
    det = RegressionDetector(factor=1.5, steps=3, baseline_steps=4)
    assert [det.update(0.010) for _ in range(4)] == [None] * 4  # baseline 10 ms
    assert det.update(0.020) is None and det.update(0.020) is None
    assert det.update(0.010) is None  # the streak breaks
    assert [det.update(0.020) for _ in range(2)] == [None, None]
    evidence = det.update(0.020)
    assert evidence == pytest.approx({"baseline_step_ms": 10.0, "slow_step_ms": 20.0,
                                      "slow_steps": 3.0, "factor": 2.0})
    assert [det.update(0.020) for _ in range(10)] == [None] * 10  # 20 ms is the new baseline


def test_retention_keeps_the_newest_traces(tmp_path: Path) -> None:
    options = ProfileOptions(start_after=0, every=2, warmup=0, active=1, trigger=False,
                             max_traces=2)
    perf = train(tmp_path, steps=30, options=options)
    captures = list(perf.recorder.profiler.captures)
    assert len(captures) >= 3
    kept = trace_files(tmp_path)
    assert kept == sorted(c.path for c in captures[-2:])
    assert all(c.path is None for c in captures[:-2])
    assert len(list((tmp_path / "profiler").iterdir())) == 2  # emptied folders are removed


def test_retention_bounds_megabytes(tmp_path: Path) -> None:
    options = ProfileOptions(start_after=0, every=2, warmup=0, active=1, trigger=False,
                             max_mb=0.02)
    train(tmp_path, steps=30, options=options)
    sizes = [p.stat().st_size for p in trace_files(tmp_path)]
    assert sizes and sum(sizes) <= 0.02 * 2**20


def test_zero_cost_between_captures(tmp_path: Path) -> None:
    options = ProfileOptions(start_after=0, warmup=0, active=1, trigger=False)
    p = TraceProfiler(tmp_path, options)
    assert p.on_step_end(1, 0.01) is False and p.capturing  # prepared at the end of step 1
    assert torch.autograd.profiler._is_profiler_enabled
    assert p.on_step_end(2, 0.01) is True and not p.capturing
    assert not torch.autograd.profiler._is_profiler_enabled
    assert [p.on_step_end(i, 0.01) for i in range(3, 50)] == [False] * 47
    assert not torch.autograd.profiler._is_profiler_enabled
    p.close()


def test_run_ending_mid_capture_writes_the_recorded_steps(tmp_path: Path) -> None:
    options = ProfileOptions(start_after=3, warmup=1, active=10, trigger=False)
    perf = train(tmp_path, steps=10, options=options)  # warm-up 2 + 3 -> steps 7-10 recorded
    (capture,) = perf.recorder.profiler.captures
    assert (capture.first_step, capture.last_step) == (7, 10)
    # Step 11 is the fetch that found the loader empty, cut off by the end of the run (torch's
    # own profile.stop() leaves the same partial last step).
    assert profiler_steps(load_trace(capture.path)) == [7, 8, 9, 10, 11]
    assert not torch.autograd.profiler._is_profiler_enabled


def test_on_trace_ready_gets_each_capture_and_a_failing_callback_is_contained(
    tmp_path: Path,
) -> None:
    seen: list[Capture] = []

    def broken(capture: Capture) -> None:
        raise RuntimeError("planted")

    p = TraceProfiler(tmp_path, ProfileOptions(start_after=0, warmup=0, active=1, trigger=False))
    p.on_trace_ready += [broken, seen.append]
    for i in range(1, 4):
        p.on_step_end(i, 0.01)
    p.close()
    assert len(seen) == 1 and seen[0].path is not None and seen[0].path.exists()
    assert "on_trace_ready:broken" in p.failopen.disabled


def test_profiler_failures_are_fail_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(self, path: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch.profiler.profile, "export_chrome_trace", broken_export)
    perf = train(tmp_path, steps=14, options=ProfileOptions(start_after=0, every=4, warmup=0,
                                                            active=1, trigger=False))
    assert "profiler.export" in perf.report().disabled
    assert not trace_files(tmp_path) and not list(tmp_path.rglob("*.tmp"))

    monkeypatch.undo()
    prepare = torch.profiler.profile.prepare_trace
    calls: list[int] = []

    def second_start_fails(self) -> None:  # the first capture works, the second cannot start
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("kineto unavailable")
        prepare(self)

    monkeypatch.setattr(torch.profiler.profile, "prepare_trace", second_start_fails)
    options = ProfileOptions(start_after=0, every=4, warmup=0, active=1, trigger=False)
    # steps long enough for the first export to finish before the second capture is due
    perf = train(tmp_path / "b", steps=14, options=options, step_sleep_s=0.05)
    report = perf.report()
    assert "profiler" in report.disabled and len(trace_files(tmp_path / "b")) == 1
    assert report.steps == 14 - 2 - 1
    assert not torch.autograd.profiler._is_profiler_enabled
    threads = [t.name for t in threading.enumerate()]
    assert "perfcallback-trace-export" not in threads  # joined at exit despite the failure


def test_an_error_in_the_per_step_check_switches_only_profiling_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recorder calls the profiler every step behind an inline guard: an error there (here
    in the slowdown detector) switches profiling off, and every step is still measured."""
    def broken(self: RegressionDetector, step_s: float) -> None:
        raise ZeroDivisionError("a bug in the detector")

    monkeypatch.setattr(RegressionDetector, "update", broken)
    options = ProfileOptions(start_after=None, trigger=True)
    perf = train(tmp_path, steps=12, options=options)
    report = perf.report()
    assert set(report.disabled) == {"profiler"}
    assert "ZeroDivisionError" in report.disabled["profiler"]
    assert report.steps == 12 - 2 and report.profiled_steps == 0
    assert not trace_files(tmp_path)


def test_profile_argument(tmp_path: Path) -> None:
    assert PerfMonitor(profile=None).session.profiler is None  # no logdir: nowhere to write
    assert PerfMonitor(logdir=tmp_path, profile=False, tensorboard=False).session.profiler is None
    on = PerfMonitor(logdir=tmp_path, profile=None, tensorboard=False).session.profiler
    assert isinstance(on, TraceProfiler)
    with pytest.raises(ValueError, match="needs a logdir"):
        PerfMonitor(profile=True)
    with pytest.raises(TypeError, match="profile must be a bool or ProfileOptions, got str"):
        PerfMonitor(logdir="x", profile="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="active must be an int >= 1, got 0"):
        ProfileOptions(active=0)
    with pytest.raises(ValueError, match="trigger_factor must be > 1"):
        ProfileOptions(trigger_factor=1.0)
    with pytest.raises(ValueError, match="trace_dir must be a relative path"):
        ProfileOptions(trace_dir="/abs")


@pytest.mark.gpu
def test_cuda_kernels_are_captured(tmp_path: Path) -> None:
    model = tiny_model().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with PerfMonitor(model=model, optimizer=opt, logdir=tmp_path, tensorboard=False,
                     profile=ProfileOptions(start_after=1, trigger=False), warmup_steps=2) as perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * 12, batch_size=8)):
            with perf.step():
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    (capture,) = perf.recorder.profiler.captures
    trace = load_trace(capture.path)
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])
    assert trace.get("deviceProperties")


def test_temporary_files_of_a_killed_export_are_swept(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from perfcallback.profiling import sweep_stale_exports

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    folder = tmp_path / "profiler" / "step0000009-scheduled"
    folder.mkdir(parents=True)
    stale = folder / f".{host}_{dead}.123.pt.trace.json.gz.json.tmp"
    ours = folder / f".{host}_{os.getpid()}.456.pt.trace.json.gz.tmp"  # still being written
    stale.write_text("partial")
    ours.write_text("partial")
    assert sweep_stale_exports(tmp_path / "profiler") == [stale]
    assert not stale.exists() and ours.exists()
