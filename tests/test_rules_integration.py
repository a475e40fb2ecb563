"""Each CPU rule fires on a real training loop with the problem planted, and healthy loops stay quiet.

Planted costs are sleeps or work large against the step (milliseconds), bounds are loose ratios,
and every loop runs with the monitor's defaults (warm-up 5, fire after 2) and 25-step windows
(the default window on steps of 10 ms or more; many of these steps are faster, where the default
would be longer), so each test also proves the finding arrives live within the first 100
measured steps and that ``report()`` of a ~150-step run carries it. Real wall time: all marked
``slow``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from perfcallback import PerfMonitor, Recommendation, Report

from _helpers import make_loader, tiny_model

pytestmark = pytest.mark.slow

STEPS = 150


class Run:
    """One monitored training run: the findings emitted live (with the step) and the report."""

    def __init__(self, perf: PerfMonitor | None) -> None:
        self.perf = perf
        self.live: list[tuple[int, Recommendation]] = []
        self.report: Report | None = None

    def first(self, rule_id: str) -> tuple[int, Recommendation]:
        """(measured step, finding) of the first live emission of ``rule_id``."""
        for step, rec in self.live:
            if rec.rule == rule_id:
                return step, rec
        raise AssertionError(f"{rule_id} never emitted live; got {[r.rule for _, r in self.live]}")

    def final(self, rule_id: str) -> Recommendation:
        assert self.report is not None
        for rec in self.report.recommendations:
            if rec.rule == rule_id:
                return rec
        raise AssertionError(f"{rule_id} not in the report:\n{self.report}")

    def loud(self) -> list[str]:
        """Warning or critical findings, live or in the report."""
        assert self.report is not None
        recs = [r for _, r in self.live] + self.report.recommendations
        return [r.one_line() for r in recs if r.severity in ("warning", "critical")]


def monitored(
    batches: Iterable[Any],
    step: Callable[[Any], None],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = STEPS,
    **kw: Any,
) -> Run:
    """Run ``step(batch)`` for ``steps`` batches under a default PerfMonitor."""
    holder: list[Run] = []

    def on_rec(rec: Recommendation) -> None:
        holder[0].live.append((perf.recorder.steps_seen - perf.recorder.warmup_steps, rec))

    kw.setdefault("window_steps", 25)
    perf = PerfMonitor(model=model, optimizer=optimizer, on_recommendation=on_rec,
                       log_recommendations=False, **kw)
    run = Run(perf)
    holder.append(run)
    with perf:
        for i, batch in enumerate(perf.wrap_loader(batches)):
            with perf.step():
                step(batch)
            if i + 1 >= steps:
                break
    run.report = perf.report()
    return run


def sgd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sleep_s: float = 0.0
             ) -> Callable[[Any], None]:
    def step(batch: Any) -> None:
        x, y = batch
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if sleep_s:
            time.sleep(sleep_s)  # planted compute time, stable on a loaded machine

    return step


def assert_found_live(run: Run, rule_id: str) -> Recommendation:
    """Emitted live within 100 measured steps and present in the final report; the latter."""
    step, _ = run.first(rule_id)
    assert step <= 100, f"{rule_id} first reported at measured step {step}"
    return run.final(rule_id)


# ------------------------------------------------------------------ dataloader.stall
@pytest.mark.parametrize(
    ("item_sleep_s", "severity"),
    [(0.0003, "warning"), (0.0025, "critical")],  # per sample; 8 samples per batch
)
def test_dataloader_stall_graded(item_sleep_s: float, severity: str) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = make_loader(n=8 * STEPS, batch_size=8, sleep_s=item_sleep_s)
    run = monitored(loader, sgd_step(model, opt, sleep_s=0.008), model=model, optimizer=opt,
                    steps=110)
    rec = assert_found_live(run, "dataloader.stall")
    planted = 8 * item_sleep_s
    assert rec.category == "dataloader" and rec.severity == severity, rec.one_line()
    assert planted * 0.9 <= rec.evidence["data_wait_s"] <= planted * 1.6 + 0.001
    assert rec.evidence["num_workers"] == 0
    assert "num_workers=0" in rec.message and "Set num_workers=" in rec.message


def test_disabled_rule_stays_silent_on_its_planted_loop() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = make_loader(n=8 * 60, batch_size=8, sleep_s=0.0025)
    run = monitored(loader, sgd_step(model, opt, sleep_s=0.004), model=model, optimizer=opt,
                    steps=60, disabled_rules=["dataloader"])
    assert run.report is not None
    assert not any(r.category == "dataloader" for r in run.report.recommendations)
    assert not any(r.category == "dataloader" for _, r in run.live)


# ------------------------------------------------------------------ optimizer.dominant
def test_optimizer_dominated_step_suggests_fused() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50_000, 32), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 4, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # fused=None, foreach=None: per tensor
    batches = [(torch.randint(0, 50_000, (16, 4)), torch.randint(0, 4, (16,)))] * STEPS
    run = monitored(batches, sgd_step(model, opt), model=model, optimizer=opt, steps=110)
    rec = assert_found_live(run, "optimizer.dominant")
    assert run.report is not None
    share = run.report.breakdown["optimizer"] / run.report.breakdown["step"]
    assert rec.severity == ("critical" if rec.evidence["optimizer_share"] >= 0.6 else "warning")
    assert rec.evidence["optimizer_share"] == pytest.approx(share, abs=0.2)
    assert rec.evidence["n_params"] == 50_000 * 32 + 32 * 4 * 4 + 4
    assert "Adam(..., fused=True)" in rec.message


# ------------------------------------------------------------------ step_variance.periodic_spikes
def test_periodic_spikes_name_the_period() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    counter = iter(range(10**6))
    train = sgd_step(model, opt, sleep_s=0.003)

    def step(batch: Any) -> None:
        train(batch)
        if next(counter) % 6 == 0:
            time.sleep(0.025)  # "checkpoint" every 6 steps

    run = monitored(make_loader(n=8 * STEPS), step, model=model, optimizer=opt)
    rec = assert_found_live(run, "step_variance.periodic_spikes")
    assert rec.evidence["period_steps"] == 6 and "Every 6 steps" in rec.message
    assert 0.02 <= rec.evidence["spike_extra_s"] <= 0.05
    assert rec.severity == "critical"  # 25 ms every 6 steps of ~4 ms: about half the time
    assert all(r.rule != "step_variance.erratic" for _, r in run.live)


# ------------------------------------------------------------------ memory.host_leak
def test_host_leak_from_a_loss_kept_with_its_graph() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 2048), torch.nn.ReLU(),
                                torch.nn.Linear(2048, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 4, (64,))
    running: list[torch.Tensor] = [torch.zeros(())]
    train = sgd_step(model, opt)

    def step(batch: Any) -> None:
        train(batch)
        aux = model(batch[0]).pow(2).mean()  # a metric computed with grad on, never backpropagated
        running[0] = running[0] + aux  # the classic leak: keeps every step's graph alive

    release_free_heap()
    run = monitored([(x, y)] * STEPS, step, model=model, optimizer=opt)
    rec = assert_found_live(run, "memory.host_leak")
    planted = 64 * 2048 * 4  # the ReLU output each graph saves (512 KiB)
    assert planted * 0.8 <= rec.evidence["rss_slope_bytes_per_step"] <= planted * 2.5
    left = rec.evidence.get("steps_until_host_memory_full")
    assert rec.severity == ("critical" if left is not None and left < 10_000 else "warning")
    assert "loss.item()" in rec.message
    del running[:]


def test_host_leak_from_a_growing_list_of_tensors() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    kept: list[torch.Tensor] = []
    train = sgd_step(model, opt)
    planted = 2**20  # 1 MiB a step, written so every page is resident

    def step(batch: Any) -> None:
        train(batch)
        kept.append(torch.ones(planted // 4))  # e.g. outputs stored "for later"

    release_free_heap()
    run = monitored(make_loader(n=8 * 120), step, model=model, optimizer=opt, steps=120)
    rec = assert_found_live(run, "memory.host_leak")
    assert planted * 0.9 <= rec.evidence["rss_slope_bytes_per_step"] <= planted * 1.3
    assert rec.evidence["r2"] > 0.9
    kept.clear()


def release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS grows again on new allocations.

    Earlier tests free hundreds of MiB; the allocator would otherwise reuse that heap silently and
    a planted leak would not show in RSS until it is used up.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------ gc.pauses
class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_gc_pauses_from_cyclic_garbage() -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train = sgd_step(model, opt)

    def step(batch: Any) -> None:
        train(batch)
        for _ in range(20_000):  # 40,000 objects in reference cycles, garbage at once
            a, b = _Node(), _Node()
            a.other, b.other = b, a

    gc.collect()
    run = monitored(make_loader(n=8 * STEPS), step, model=model, optimizer=opt)
    rec = assert_found_live(run, "gc.pauses")
    young = gc.get_threshold()[0]
    planted = 40_000 / young  # young collections each step, one per `young` new objects
    assert planted * 0.7 <= rec.evidence["collections_per_step"] <= planted * 1.5
    assert rec.severity == "critical", rec.one_line()  # collecting the cycles is ~half the step
    assert "reference cycles" in rec.message and "gc.set_threshold" in rec.message


# ------------------------------------------------------------------ recompilation.*
@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches and counters are process-wide: start and leave them clean."""
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=64):  # never fall back to eager here
        yield
    torch._dynamo.reset()


def test_recompiles_counted_from_dynamo(fresh_dynamo: None) -> None:
    model = tiny_model()
    compiled = torch.compile(model, dynamic=False, backend="eager")  # eager: fast compiles
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # a new batch size every step, with static shapes: a recompile every step
    batches = [(torch.randn(4 + i, 16), torch.randint(0, 4, (4 + i,))) for i in range(14)]
    run = monitored(batches, sgd_step(compiled, opt), model=compiled, optimizer=opt, steps=14,
                    warmup_steps=2, window_steps=5)
    step, live = run.first("recompilation.recompiles")
    assert step == 10 and live.evidence["recompiles"] == 5  # 5 in the second window of 5 steps
    rec = run.final("recompilation.recompiles")
    assert rec.severity == "critical"  # compiling is most of each step's time
    assert rec.evidence["recompiles"] == rec.evidence["steps"]  # one per step
    assert "dynamic=True" in rec.message


def test_graph_breaks_counted_from_dynamo(fresh_dynamo: None) -> None:
    import torch._dynamo

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).relu()
            torch._dynamo.graph_break()  # what a .item() or print() in forward does
            return self.b(h)

    model = Broken()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,)))] * 60
    run = monitored(batches, sgd_step(compiled, opt), model=compiled, optimizer=opt, steps=60)
    rec = run.final("recompilation.graph_breaks")
    assert rec.severity == "info" and rec.evidence["graph_breaks"] >= 1
    assert run.report is not None
    assert all(r.rule != "recompilation.recompiles" for r in run.report.recommendations)


# ------------------------------------------------------------------ healthy loops
def _mlp_run() -> Run:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(512, 64), torch.randint(0, 10, (512,))) for _ in range(8)]
    return monitored(batches * (STEPS // 8 + 1), sgd_step(model, opt), model=model, optimizer=opt)


def _cnn_run() -> Run:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = TensorDataset(torch.randn(32 * 16, 3, 32, 32), torch.randint(0, 10, (32 * 16,)))
    loader = DataLoader(data, batch_size=32, shuffle=True)

    def epochs() -> Iterator[Any]:
        while True:
            yield from loader

    return monitored(epochs(), sgd_step(model, opt), model=model, optimizer=opt, steps=120)


def _lightning_run() -> Run:
    pl = pytest.importorskip("lightning.pytorch")
    from perfcallback import PerfCallback

    class Module(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                           torch.nn.Linear(256, 10))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    # pre-batched data (batch_size=None): the loader hands over ready tensors
    batches = [(torch.randn(512, 64), torch.randint(0, 10, (512,))) for _ in range(16)]
    loader = DataLoader(batches, batch_size=None)  # type: ignore[arg-type]
    live: list[tuple[int, Recommendation]] = []
    perf = PerfCallback(on_recommendation=lambda rec: live.append((0, rec)),
                        log_recommendations=False)
    trainer = pl.Trainer(max_steps=STEPS, callbacks=[perf], logger=False, accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Module(), loader)
    run = Run(None)
    run.live, run.report = live, perf.report()
    return run


# Lightning 2.6 on torch 2.13 warns about torch's deprecated LeafSpec at every fit.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
@pytest.mark.parametrize("make_run", [_mlp_run, _cnn_run, _lightning_run],
                         ids=["mlp", "cnn", "lightning"])
def test_healthy_loop_gets_no_warning(make_run: Callable[[], Run]) -> None:
    run = make_run()
    assert run.report is not None and run.report.steps > 100
    assert run.loud() == [], "\n".join(run.loud())

