"""Phase hooks on real modules and optimizers: closures, dict outputs, no-grad forwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from perfcallback import PerfMonitor

from _helpers import tiny_model
from conftest import assert_no_hooks


def test_lbfgs_closure_nests_forward_and_backward_inside_the_optimizer() -> None:
    model = tiny_model()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with PerfMonitor(model=model, optimizer=opt, warmup_steps=0) as perf:
        for _ in perf.wrap_loader(range(5)):
            with perf.step():
                opt.step(closure)
    b = perf.report().breakdown
    assert b["forward"] > 0 and b["backward"] > 0 and b["optimizer"] > 0
    total = sum(b[p] for p in ("data", "forward", "backward", "optimizer", "other"))
    assert abs(total - b["step"]) < 1e-9 + 0.05 * b["step"]
    assert_no_hooks(model)


class DictModel(torch.nn.Module):
    """Returns a mapping, like many Hugging Face models."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x), "aux": torch.zeros(())}


def test_backward_is_timed_through_dict_outputs() -> None:
    model = DictModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=0) as perf:
        for _ in perf.wrap_loader(range(5)):
            with perf.step():
                model(torch.randn(8, 16))["logits"].sum().backward()
                opt.step()
    assert perf.report().breakdown["backward"] > 0


def test_forward_outside_a_step_and_under_no_grad_is_harmless() -> None:
    model = tiny_model()
    with PerfMonitor(model=model, warmup_steps=0) as perf:
        model(torch.randn(2, 16))  # outside any step: not counted, no error
        for _ in perf.wrap_loader(range(3)):
            with perf.step(), torch.no_grad():
                model(torch.randn(2, 16))
    report = perf.report()
    assert report.steps == 3
    assert report.breakdown["forward"] > 0
    assert report.breakdown["backward"] == 0.0
    assert not report.disabled


def test_recursive_calls_of_the_root_module_count_once() -> None:
    class Recursive(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, depth: int = 2) -> torch.Tensor:
            return self.lin(x) if depth == 0 else self(self.lin(x), depth - 1)

    model = Recursive()
    with PerfMonitor(model=model, warmup_steps=0) as perf:
        for _ in perf.wrap_loader(range(3)):
            with perf.step():
                model(torch.randn(2, 4)).sum().backward()
    report = perf.report()
    assert report.steps == 3 and report.breakdown["forward"] > 0
    assert not report.disabled
    assert_no_hooks(model)


class _SlowBackward(torch.autograd.Function):
    """Identity whose backward sleeps: a planted backward cost."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        time.sleep(0.004)
        return grad


class SlowBackwardModel(torch.nn.Module):
    """Two layers with the planted backward between them (on the first layer's gradient path)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(_SlowBackward.apply(self.first(x)))


def _run(model: torch.nn.Module, steps: int, backward: Callable[[torch.Tensor], None]) -> Any:
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=0, window_steps=4,
                     log_recommendations=False) as perf:
        hooks = perf._hooks
        for _ in perf.wrap_loader(range(steps)):
            with perf.step():
                backward(model(torch.randn(8, 16)).sum())
                opt.step()
                opt.zero_grad()
    return perf.report(), hooks


def test_one_process_times_backward_at_its_call_and_drops_the_engine_hook() -> None:
    """backward is the ``loss.backward()`` call; after a few steps confirm it, no hook runs inside
    the autograd engine any more (it costs ~15 us a step), and the figure stays right."""
    original = torch.autograd.backward
    report, hooks = _run(SlowBackwardModel(), 12, lambda loss: loss.backward())
    per_step = report.breakdown["backward"]
    assert 0.004 <= per_step < 0.004 * 1.5 + 0.002, per_step  # the planted 4 ms, and little else
    assert hooks._by_call and hooks._confirmed == 3  # confirmed, then the hook was dropped
    assert torch.autograd.backward is original  # restored at exit
    assert_no_hooks_on_backward()


def assert_no_hooks_on_backward() -> None:
    from perfcallback import hooks as hooks_module

    assert hooks_module._listeners == [] and hooks_module._original_backward is None


def test_backward_that_bypasses_the_call_falls_back_on_engine_hooks() -> None:
    """``torch.autograd.grad`` (or a reference to ``backward`` taken before the monitor) never
    goes through the wrapped call: the gradient hook finds out and times backward from then on."""

    def by_grad(loss: torch.Tensor) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g

    model = SlowBackwardModel()
    report, hooks = _run(model, 12, by_grad)
    assert not hooks._by_call
    per_step = report.breakdown["backward"]
    assert 0.004 <= per_step < 0.004 * 1.5 + 0.002, per_step
    assert_no_hooks_on_backward()


def test_nested_monitors_share_one_wrapper_and_restore_it() -> None:
    original = torch.autograd.backward
    model = tiny_model()
    with PerfMonitor(model=model, log_recommendations=False, warmup_steps=0):
        wrapped = torch.autograd.backward
        assert wrapped is not original
        with PerfMonitor(model=tiny_model(), log_recommendations=False, warmup_steps=0,
                         tensorboard=False):
            assert torch.autograd.backward is wrapped
        assert torch.autograd.backward is wrapped
    assert torch.autograd.backward is original
    assert_no_hooks_on_backward()


def test_a_wrapper_put_over_ours_keeps_backward_working_across_monitors() -> None:
    """Another library wraps ``torch.autograd.backward`` after us: ours stays beneath it when the
    monitor leaves, and the next monitor uses it again instead of wrapping theirs (which would
    call itself)."""
    original = torch.autograd.backward
    model = SlowBackwardModel()
    try:
        with PerfMonitor(model=model, log_recommendations=False, warmup_steps=0,
                         tensorboard=False):
            ours = torch.autograd.backward
            theirs = lambda *a, **k: ours(*a, **k)  # noqa: E731
            torch.autograd.backward = theirs
        assert torch.autograd.backward is theirs
        report, hooks = _run(model, 6, lambda loss: loss.backward())
        assert hooks._by_call and report.breakdown["backward"] >= 0.004
        assert torch.autograd.backward is theirs
    finally:
        torch.autograd.backward = original  # put back over ours: the next monitor re-wraps it
    report, hooks = _run(model, 6, lambda loss: loss.backward())
    assert hooks._by_call and report.breakdown["backward"] >= 0.004
    assert torch.autograd.backward is original
    assert_no_hooks_on_backward()
