"""GPU-only rules (host_sync, launch_bound, precision, h2d_copy) on synthetic CUDA windows.

Their signals come from CUDA runs (trace-analysis figures in ``WindowStats.extra``, CUDA facts in
``RunContext``), so on CPU windows they must stay silent.
"""

from __future__ import annotations

from typing import Any

import pytest

from perfcallback.context import RunContext
from perfcallback.rules import registered_rules
from rules._windows import context, run, window

GPU_RULES = ("host_sync.blocking", "launch_bound.small_kernels", "precision.fp32_matmul",
             "h2d_copy.pageable", "memory.device_leak", "memory.device_near_capacity",
             "memory.alloc_retries")


@pytest.mark.parametrize("rule_id", GPU_RULES)
def test_silent_on_a_cpu_run(rule_id: str) -> None:
    assert rule_id in registered_rules()
    stats = window(phases={"data": 0.5, "forward": 0.2, "backward": 0.2})
    assert run(rule_id, stats, context(param_dtype="float32", autocast_seen=False)) is None


@pytest.mark.parametrize(
    ("pct", "severity"), [(4.9, None), (5.0, "info"), (10.0, "warning"), (30.0, "critical")]
)
def test_host_sync_graded(pct: float, severity: str | None) -> None:
    rec = run("host_sync.blocking", window(extra={"sync_wait_pct": pct}),
              context(device_type="cuda"))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "host_sync" and rec.evidence["sync_wait_pct"] == pct
        assert ".item()" in rec.message and "set_sync_debug_mode" in rec.message


def launch(idle: float, short: float = 80.0, host_wait: float | None = None) -> dict[str, float]:
    extra = {"gpu_idle_pct": idle, "short_kernel_pct": short, "kernels_per_step": 4200.0}
    if host_wait is not None:
        extra["idle_host_wait_pct"] = host_wait
    return extra


@pytest.mark.parametrize(
    ("extra", "severity"),
    [
        (launch(29.0), None),
        (launch(30.0), "warning"),
        (launch(60.0), "critical"),
        (launch(70.0, short=10.0), None),  # idle, but kernels are long: not launch-bound
        (launch(70.0, short=10.0, host_wait=80.0), "critical"),  # idle waiting on the host
    ],
)
def test_launch_bound_graded(extra: dict[str, float], severity: str | None) -> None:
    rec = run("launch_bound.small_kernels", window(extra=extra), context(device_type="cuda"))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert "CUDA graphs" in rec.message and "4,200 kernels" in rec.message


def test_launch_bound_knows_compile_is_on() -> None:
    ctx = context(device_type="cuda", compile_in_use=True)
    rec = run("launch_bound.small_kernels", window(extra=launch(50.0)), ctx)
    assert rec is not None and 'mode="reduce-overhead"' in rec.message


def cuda_ctx(**kw: Any) -> RunContext:
    facts = {"device_type": "cuda", "cuda_capability": (9, 0), "float32_matmul_precision": "highest",
             "autocast_seen": False, "param_dtype": "float32"}
    return context(**(facts | kw))


FWD_BWD = {"forward": 0.3, "backward": 0.4}


def test_precision_fires_on_fp32_matmuls_with_tensor_cores() -> None:
    rec = run("precision.fp32_matmul", window(phases=FWD_BWD), cuda_ctx())
    assert rec is not None and rec.severity == "warning" and rec.category == "precision"
    assert "torch.autocast('cuda', dtype=torch.bfloat16)" in rec.message
    assert "set_float32_matmul_precision('high')" in rec.message
    assert rec.evidence["compute_share"] == pytest.approx(0.7)


def test_precision_info_when_compute_is_a_small_share() -> None:
    rec = run("precision.fp32_matmul", window(phases={"forward": 0.2, "backward": 0.2}), cuda_ctx())
    assert rec is not None and rec.severity == "info"


def test_precision_uses_device_times_when_present() -> None:
    stats = window(phases={"forward": 0.1}, device_step_s=1.0,
                   device_phase_s={"forward": 0.3, "backward": 0.5})
    rec = run("precision.fp32_matmul", stats, cuda_ctx())
    assert rec is not None and rec.evidence["compute_share"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "facts",
    [
        {"cuda_capability": (7, 0)},  # V100: no TF32/bf16 tensor cores
        {"float32_matmul_precision": "high"},  # TF32 already on
        {"autocast_seen": True},
        {"autocast_seen": None},  # never sampled: unknown, so silent
        {"param_dtype": "bfloat16"},
        {"device_type": "cpu"},
    ],
)
def test_precision_silent_when_already_fast_or_unknown(facts: dict[str, Any]) -> None:
    assert run("precision.fp32_matmul", window(phases=FWD_BWD), cuda_ctx(**facts)) is None


def test_precision_capability_threshold_overridable() -> None:
    ctx = cuda_ctx(cuda_capability=(7, 5))
    th = {"precision.fp32_matmul.min_capability": 7.5}
    assert run("precision.fp32_matmul", window(phases=FWD_BWD), ctx, th) is not None


@pytest.mark.parametrize(
    ("h2d", "pageable", "severity"),
    [(4.0, 100.0, None), (5.0, 100.0, "info"), (12.0, 90.0, "warning"), (30.0, 60.0, "critical"),
     (30.0, 40.0, None)],  # mostly pinned already
)
def test_h2d_graded(h2d: float, pageable: float, severity: str | None) -> None:
    extra = {"h2d_pct": h2d, "h2d_pageable_pct": pageable}
    loader = {"num_workers": 4, "pin_memory": False, "persistent_workers": True}
    rec = run("h2d_copy.pageable", window(extra=extra), context(device_type="cuda", loader=loader))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert "pin_memory=True" in rec.message and "non_blocking=True" in rec.message


def test_h2d_with_pinned_loader_points_at_later_tensors() -> None:
    loader = {"num_workers": 4, "pin_memory": True}
    rec = run("h2d_copy.pageable", window(extra={"h2d_pct": 20.0, "h2d_pageable_pct": 100.0}),
              context(device_type="cuda", loader=loader))
    assert rec is not None and "already pins memory" in rec.message


def test_launch_bound_needs_many_kernels() -> None:
    extra = launch(95.0) | {"kernels_per_step": 14.0}  # idle, but the host is not launching
    assert run("launch_bound.small_kernels", window(extra=extra), context(device_type="cuda")) is None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("autocast", [False, True])
def test_fp32_matmuls_on_a_real_gpu(autocast: bool) -> None:
    """Live: capability, matmul precision and the autocast sample come from the recorder."""
    import torch
    import torch.nn.functional as F

    from perfcallback import PerfMonitor

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2048, 2048, device=dev), torch.randint(0, 10, (2048,), device=dev)
    with PerfMonitor(model=model, optimizer=opt, log_recommendations=False) as perf:
        for xb, yb in perf.wrap_loader([(x, y)] * 80):
            with perf.step():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad()
    found = [r for r in perf.report().recommendations if r.rule == "precision.fp32_matmul"]
    if autocast or torch.cuda.get_device_capability() < (8, 0):
        assert found == []
    else:
        assert len(found) == 1 and "torch.autocast('cuda'" in found[0].message
