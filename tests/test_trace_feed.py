"""Finished profiler captures feed the live windows: trace figures join WindowStats.extra."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perfcallback import PerfMonitor
from perfcallback.profiling import Capture
from perfcallback.recorder import StepRecorder
from perfcallback.trace.live import capture_figures

from _helpers import FakeClock, make_loader, tiny_model

LAUNCH_BOUND = "hta/nccl_parser_config/nccl_data.json.gz"  # A100, GPU ~23% busy in steps


def _steps(rec: StepRecorder, clock: FakeClock, n: int) -> None:
    for _ in range(n):
        rec.begin_step()
        clock.advance(0.010)
        rec.end_step()


def test_a_gpu_capture_joins_the_windows_and_its_rules_fire(shared_traces: Path) -> None:
    """A launch-bound A100 trace read as if this run had captured it."""
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, window_steps=5, clock=clock, cuda=False)
    _steps(rec, clock, 5)
    assert rec.window() is not None and rec.window().extra == {}
    rec.join_capture(Capture(reason="scheduled", first_step=3, last_step=4,
                             path=shared_traces / LAUNCH_BOUND))
    _steps(rec, clock, 10)
    extra = rec.window().extra
    expected = capture_figures(shared_traces / LAUNCH_BOUND)
    assert extra == {**expected, "trace_first_step": 3.0, "trace_last_step": 4.0,
                     "trace_age_windows": 2.0}
    assert extra["gpu_idle_pct"] > 50
    assert "launch_bound.small_kernels" in {r.rule for r in rec.report().recommendations}


@pytest.mark.slow
def test_a_cpu_capture_of_this_run_is_analysed_without_error(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, logdir=tmp_path, warmup_steps=2,
                     window_steps=5, log_recommendations=False) as perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * 40)):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    report = perf.report()
    assert report.profiled_steps > 0
    assert list(tmp_path.glob("profiler/*/*.pt.trace.json.gz"))
    assert not any(k.startswith("on_trace_ready") for k in report.disabled), report.disabled
    # A host-only trace has no kernel-level figures to give: nothing is invented.
    assert not any(k.startswith("gpu_") for k in perf.recorder.trace_figures)
