"""The GPU path, as far as a CPU exercises it: no CUDA call at construction, compile, autocast,
a sticky device error at exit, and trace figures that age out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from perfcallback import PerfMonitor
from perfcallback import recorder as recorder_module
from perfcallback._record import replace
from perfcallback.clock import CudaEventTimer
from perfcallback.failopen import FailOpen
from perfcallback.profiling import Capture
from perfcallback.recorder import StepRecorder
from perfcallback.rules import evaluate, registered_rules
from perfcallback.stats import FORWARD

from _helpers import FakeClock, make_loader, tiny_model

_CUDA_CALLS = (
    "current_device", "get_device_capability", "get_device_properties", "get_device_name",
    "memory_stats", "reset_peak_memory_stats", "current_stream", "synchronize", "Event",
    "is_current_stream_capturing", "device_count", "init", "set_device",
)


@pytest.fixture
def cuda_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch.cuda looks available, and every other torch.cuda entry point records its call."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in _CUDA_CALLS:
        def record(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            raise AssertionError(f"torch.cuda.{_name} called at construction")
        monkeypatch.setattr(torch.cuda, name, record)
    return calls


def test_perfmonitor_construction_makes_no_cuda_call(cuda_calls: list[str]) -> None:
    perf = PerfMonitor(logdir=None)
    assert perf.recorder.context.device_type == "cuda"  # it did take the CUDA path
    model = tiny_model()
    PerfMonitor(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), cuda=True)
    assert cuda_calls == []
    assert perf.session.failopen.disabled == {}


def test_perfcallback_construction_makes_no_cuda_call(cuda_calls: list[str]) -> None:
    pytest.importorskip("lightning.pytorch")
    from perfcallback.integrations.lightning import PerfCallback

    PerfCallback(profile=False)
    assert cuda_calls == []


def _graph_breaks(model: torch.nn.Module, monitored: bool, forward: Any = None,
                  compile_in_place_after_enter: bool = False) -> tuple[int, Any]:
    """Graph breaks of a short training run (``forward``: what the step calls, default the
    model), and its monitor (``None`` unmonitored)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    forward = forward or model
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = make_loader(n=8 * 12)
    monitor = None
    if monitored:
        with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=5,
                         log_recommendations=False) as perf:
            if compile_in_place_after_enter:
                model.compile(backend="eager")
            for x, y in perf.wrap_loader(loader):
                with perf.step():
                    torch.nn.functional.cross_entropy(forward(x), y).backward()
                    opt.step()
                    opt.zero_grad()
        monitor = perf
    else:
        for x, y in loader:
            torch.nn.functional.cross_entropy(forward(x), y).backward()
            opt.step()
            opt.zero_grad()
    return sum(counters["graph_break"].values()), monitor


@pytest.mark.slow
def test_in_place_compile_gets_no_graph_break_from_the_monitor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_model()
    model.compile(backend="eager")
    alone, _ = _graph_breaks(model, monitored=False)
    # dynamo is loaded now: the hooks are marked for dynamo to run eagerly, and still time
    monitored, perf = _graph_breaks(model, monitored=True)
    assert monitored == alone
    assert perf.report().breakdown["forward"] > 0
    # hooks installed before dynamo was ever loaded keep out of the traced graph too
    monkeypatch.delitem(sys.modules, "torch._dynamo")
    with PerfMonitor(model=model, log_recommendations=False):
        monkeypatch.undo()
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        for x, y in make_loader(n=8 * 4):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        assert sum(counters["graph_break"].values()) == alone


@pytest.mark.slow
def test_a_model_compiled_in_place_under_the_monitor_is_timed_without_a_graph_break() -> None:
    """``model.compile()`` after the hooks went in: they are marked for dynamo at the first
    backward, so forward is timed from the next step, and the recompile that costs falls in the
    warm-up, where no recompilation finding can blame the user for it."""
    compiled_before = tiny_model()
    compiled_before.compile(backend="eager")
    alone, _ = _graph_breaks(compiled_before, monitored=False)
    monitored, perf = _graph_breaks(tiny_model(), monitored=True,
                                    compile_in_place_after_enter=True)
    assert monitored == alone
    assert all(r.phases[FORWARD] > 0 for r in perf.recorder._ring)  # every measured step
    report = perf.report()
    assert [r.rule for r in report.recommendations if r.category == "recompilation"] == []
    assert report.disabled == {}


@pytest.mark.slow
def test_a_compiled_training_function_gets_no_graph_break_from_the_monitor() -> None:
    """``torch.compile`` of a function that calls the model traces the model's hooks: they keep
    out of its graph (forward is then not timed apart, and the report says so)."""
    model = tiny_model()
    compiled = torch.compile(lambda x: model(x), backend="eager")
    alone, _ = _graph_breaks(model, monitored=False, forward=compiled)
    monitored, perf = _graph_breaks(model, monitored=True, forward=compiled)
    assert monitored == alone
    report = perf.report()
    assert "forward" in report.unmeasured
    assert report.breakdown["backward"] > 0 and report.disabled == {}


def _fit(precision: str, tmp_path: Path) -> Any:
    L = pytest.importorskip("lightning.pytorch")
    from perfcallback.integrations.lightning import PerfCallback

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    perf = PerfCallback(warmup_steps=2, window_steps=5, log_recommendations=False,
                        tensorboard=False, profile=False)
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=12, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[perf],
                        default_root_dir=tmp_path)
    trainer.fit(Classifier(), make_loader(n=8 * 12))
    return perf


def _fp32_matmul_on_an_ampere_gpu(context: Any) -> bool:
    from _windows_for_gpu import window_for_precision

    ctx = replace(context, device_type="cuda", cuda_capability=(8, 0),
                              float32_matmul_precision="highest")
    others = [r for r in registered_rules() if r != "precision.fp32_matmul"]
    return bool(evaluate(window_for_precision(), ctx, disabled=others))


@pytest.mark.slow
def test_lightning_bf16_mixed_is_seen_as_autocast(tmp_path: Path) -> None:
    perf = _fit("bf16-mixed", tmp_path)
    mixed = perf._active().context
    assert mixed.autocast_seen is True and mixed.autocast_dtype == "bfloat16"
    assert not _fp32_matmul_on_an_ampere_gpu(mixed)
    assert perf.report().flops_per_step > 0  # counted in the last warm-up step, under autocast
    full = _fit("32-true", tmp_path)._active().context
    assert full.autocast_seen is False
    assert _fp32_matmul_on_an_ampere_gpu(full)  # the same rule does fire without autocast


def test_autocast_is_sampled_inside_the_users_autocast_in_a_raw_loop() -> None:
    model = tiny_model()
    with PerfMonitor(model=model, warmup_steps=0, window_steps=2,
                     log_recommendations=False) as perf:
        for x, _ in perf.wrap_loader(make_loader(n=8 * 2)):
            with perf.step(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
    assert perf.recorder.context.autocast_seen is True
    assert perf.recorder.context.autocast_dtype == "bfloat16"


def _no_device_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA timer's step calls do nothing (no device here); drain/poll fail like a sticky
    CUDA error (an illegal memory access poisons every later CUDA call)."""
    def sticky(self: CudaEventTimer) -> list[Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    for name in ("begin", "mark", "end", "discard"):
        monkeypatch.setattr(CudaEventTimer, name, lambda self, *a: None)
    monkeypatch.setattr(CudaEventTimer, "poll", sticky)
    monkeypatch.setattr(CudaEventTimer, "drain", sticky)


def test_a_sticky_cuda_error_at_exit_keeps_the_users_exception_and_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_device_timing(monkeypatch)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    perf = PerfMonitor(model=model, optimizer=opt, logdir=tmp_path, cuda=True, warmup_steps=1,
                       window_steps=3, tensorboard=False, profile=False,
                       log_recommendations=False)
    with pytest.raises(ValueError, match="the user's own error"), perf:
        for i, (x, y) in enumerate(perf.wrap_loader(make_loader(n=8 * 10))):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            if i == 7:
                raise ValueError("the user's own error")
    assert (tmp_path / "perf_report.json").is_file()
    report = perf.report()
    assert report.steps == 7
    assert "cuda_timer" in report.disabled and "recorder" not in report.disabled


def test_the_cuda_step_path_builds_no_guard_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_device_timing(monkeypatch)
    monkeypatch.setattr(CudaEventTimer, "poll", lambda self: [])
    rec = StepRecorder(warmup_steps=0, window_steps=1000, buffer_steps=1000, cuda=True)
    built: list[str] = []
    original = FailOpen.guard
    monkeypatch.setattr(FailOpen, "guard",
                        lambda self, name, fn: built.append(name) or original(self, name, fn))
    for _ in range(20):
        rec.begin_step()
        rec.end_step()
    assert built == []


def test_capture_figures_age_out_and_their_findings_resolve(shared_traces: Path) -> None:
    clock = FakeClock()
    rec = StepRecorder(warmup_steps=0, window_steps=5, clock=clock, cuda=False)

    def steps(n: int) -> None:
        for _ in range(n):
            rec.begin_step()
            clock.advance(0.010)
            rec.end_step()

    steps(5)
    rec.join_capture(Capture(reason="scheduled", first_step=3, last_step=4,
                             path=shared_traces / "hta/nccl_parser_config/nccl_data.json.gz"))
    steps(10)
    window = rec.window()
    assert window is not None and window.extra["trace_age_windows"] == 2.0
    assert "launch_bound.small_kernels" in {r.rule for r in rec.report().recommendations}
    steps(5 * getattr(recorder_module, "_TRACE_FIGURES_WINDOWS", 4))
    window = rec.window()
    assert window is not None and "gpu_idle_pct" not in window.extra
    report = rec.report()
    assert "launch_bound.small_kernels" not in {r.rule for r in report.recommendations}
    assert "launch_bound.small_kernels" in {r.rule for r in report.resolved}
