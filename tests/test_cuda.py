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
