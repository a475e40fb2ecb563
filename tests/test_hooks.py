"""Phase hooks on real modules and optimizers: closures, dict outputs, no-grad forwards."""

from __future__ import annotations

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
