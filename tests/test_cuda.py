"""The CUDA path: device-side phase times from events, allocator figures, and no hidden syncs.

Marked ``gpu``: skipped without CUDA (conftest), run with ``pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from perfcallback import PerfMonitor

pytestmark = pytest.mark.gpu


def _train(perf: PerfMonitor, model, opt, steps: int, size: int = 2048) -> None:
    x = torch.randn(256, size, device="cuda")
    for _ in perf.wrap_loader(range(steps)):
        with perf.step():
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def _model(size: int = 2048) -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(size, size) for _ in range(4)]).cuda()


def test_hot_path_never_synchronizes() -> None:
    """With sync debug mode "error", any synchronizing call inside a step raises."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=5) as perf:
        torch.cuda.set_sync_debug_mode("error")
        try:
            _train(perf, model, opt, 30)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    report = perf.report()
    assert report.steps == 28
    assert not report.disabled, report.disabled


def test_device_breakdown_and_cuda_memory_are_reported() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=5) as perf:
        _train(perf, model, opt, 30)
    report = perf.report()
    dev = report.device_breakdown
    assert dev is not None
    assert dev["forward"] > 0 and dev["backward"] > dev["forward"] * 0.5
    assert dev["step"] >= dev["forward"] + dev["backward"]
    assert report.memory["cuda_allocated_bytes"] > 4 * 2048 * 2048 * 4  # the weights at least
    assert report.memory["cuda_peak_allocated_bytes"] >= report.memory["cuda_allocated_bytes"]


def test_device_time_tracks_host_time_for_a_gpu_bound_loop() -> None:
    """Large matmuls: the host waits for the GPU at the end of each step only through backward's
    natural queueing, so device step time should be within 25% of host step time."""
    model = _model(4096)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=3, window_steps=5) as perf:
        x = torch.randn(1024, 4096, device="cuda")
        for _ in perf.wrap_loader(range(25)):
            with perf.step():
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.current_stream().synchronize()  # the user's sync, not ours
    report = perf.report()
    assert report.device_breakdown is not None
    assert report.device_breakdown["step"] == pytest.approx(report.breakdown["step"], rel=0.25)


def test_a_warm_up_spike_leaves_the_window_peak() -> None:
    """The allocator's peak is reset every window: a spike in step 1 is not a later window's."""
    model = _model(1024)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(64, 1024, device="cuda")
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=5) as perf:
        for i in perf.wrap_loader(range(30)):
            with perf.step():
                if i == 0:
                    spike = torch.empty(2**30, dtype=torch.uint8, device="cuda")
                    del spike
                model(x).square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    window = perf.recorder.window()
    assert window is not None and window.cuda_peak_allocated_bytes is not None
    assert window.cuda_peak_allocated_bytes < 2**30


def test_a_step_captured_into_a_cuda_graph_is_not_timed_and_the_capture_works() -> None:
    model = _model(512)
    x = torch.randn(64, 512, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up before capture, as the CUDA graphs docs ask
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with PerfMonitor(model=model, warmup_steps=0, window_steps=5) as perf:
        with perf.step():
            model(x)  # an ordinary timed step first
        with torch.cuda.graph(graph), perf.step():
            out = model(x)
        for _ in perf.wrap_loader(range(10)):
            with perf.step():
                graph.replay()
    torch.cuda.synchronize()
    assert out.shape == (64, 512)
    assert perf.recorder._cuda is not None and perf.recorder._cuda.skipped_captures == 1
    assert not perf.report().disabled


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_events_and_memory_follow_the_models_device_not_the_current_one() -> None:
    model = _model(1024).to("cuda:1")
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(256, 1024, device="cuda:1")
    torch.cuda.set_device(0)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=2, window_steps=5) as perf:
        for _ in perf.wrap_loader(range(20)):
            with perf.step():
                model(x).square().mean().backward()
                opt.step()
    report = perf.report()
    assert not report.disabled
    assert report.device_breakdown is not None and report.device_breakdown["forward"] > 0
    assert report.memory["cuda_allocated_bytes"] >= 4 * 1024 * 1024 * 4  # on cuda:1
