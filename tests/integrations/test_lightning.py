"""PerfCallback with a real Lightning Trainer on CPU: phases, steps, validation, resume, loggers, DDP.

Real-time tests plant costs of 6-30 ms (sleeps) and check them with loose bounds; they are marked
``slow``. Run as a script (``python test_lightning.py --ddp OUT``) this module is the DDP worker
that ``test_ddp_two_processes_each_rank_reports`` launches.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, IterableDataset  # noqa: E402

import perfcallback  # noqa: E402
from perfcallback.integrations._lightning_seams import TrainerProbes  # noqa: E402
from perfcallback.integrations.lightning import PerfCallback  # noqa: E402
from perfcallback.recorder import StepRecorder  # noqa: E402
from perfcallback.sinks import Sink  # noqa: E402
from perfcallback.stats import WindowStats  # noqa: E402

from _helpers import make_loader  # noqa: E402

# Lightning 2.6 on torch 2.13 warns about torch's deprecated LeafSpec at every fit.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

DATA_S = 0.016  # planted per-batch data cost
FORWARD_S, BACKWARD_S, OPTIMIZER_S = 0.008, 0.006, 0.012
VAL_BATCH_S = 0.030  # per validation batch


def planted_sleep(seconds: float, spent: list[float]) -> None:
    """Sleep ``seconds`` and record what it really took (overshoot grows on a loaded machine)."""
    t0 = time.perf_counter()
    time.sleep(seconds)
    spent.append(time.perf_counter() - t0)


class _SleepInBackward(torch.autograd.Function):
    """Identity whose backward sleeps: a planted backward cost."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seconds: float, spent: list[float]) -> torch.Tensor:
        ctx.seconds, ctx.spent = seconds, spent
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        planted_sleep(ctx.seconds, ctx.spent)
        return grad, None, None


class SlowSGD(torch.optim.SGD):
    """SGD whose ``step`` costs ``delay_s`` more: a planted optimizer cost."""

    def __init__(self, params: Any, lr: float, delay_s: float, spent: list[float]) -> None:
        super().__init__(params, lr=lr)
        self.delay_s, self.spent = delay_s, spent

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        out = super().step(closure)
        if self.delay_s:
            planted_sleep(self.delay_s, self.spent)
        return out


class PlantedModule(L.LightningModule):
    """A tiny classifier whose forward, backward, optimizer and validation cost planted times."""

    def __init__(
        self,
        forward_s: float = 0.0,
        backward_s: float = 0.0,
        optimizer_s: float = 0.0,
        val_s: float = 0.0,
        fail_at_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )
        self.forward_s, self.backward_s, self.optimizer_s = forward_s, backward_s, optimizer_s
        self.val_s, self.fail_at_batch = val_s, fail_at_batch
        self.spent: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def truth(self, phase: str, steps: int) -> float:
        """Mean real duration of the planted ``phase`` cost over the last ``steps`` steps."""
        return statistics.fmean(self.spent[phase][-steps:])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("planted failure")
        x, y = batch
        if self.forward_s:
            planted_sleep(self.forward_s, self.spent["forward"])
        out = self.net(x)
        if self.backward_s:
            out = _SleepInBackward.apply(out, self.backward_s, self.spent["backward"])
        return torch.nn.functional.cross_entropy(out, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        time.sleep(self.val_s)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return SlowSGD(self.parameters(), 0.01, self.optimizer_s, self.spent["optimizer"])


class TwoOptimizerModule(L.LightningModule):
    """Manual optimization: two optimizers stepped every batch, with gradient clipping."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt, net in zip(self.optimizers(), (self.a, self.b), strict=True):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
            opt.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.SGD(self.a.parameters(), 0.01),
            torch.optim.SGD(self.b.parameters(), 0.01),
        ]


class SlowBatches(Dataset):  # type: ignore[type-arg]
    """Whole (x, y) batches of 2, each taking ``sleep_s`` to produce (use ``batch_size=None``).

    ``spent`` keeps what each batch really took: the ground truth, sleep overshoot included (it
    grows on a loaded machine).
    """

    def __init__(self, batches: int, sleep_s: float) -> None:
        self.batches, self.sleep_s = batches, sleep_s
        self.spent: list[float] = []

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        time.sleep(self.sleep_s)
        self.spent.append(time.perf_counter() - t0)
        return torch.randn(2, 16), torch.randint(0, 4, (2,))

    def truth(self, first: int, last: int) -> float:
        """Mean time the batches ``first`` to ``last`` (1-based, inclusive) took to produce."""
        return statistics.fmean(self.spent[first - 1 : last])


class SlowStream(IterableDataset):  # type: ignore[type-arg]
    """The batches of a :class:`SlowBatches`, unsized: Lightning's prefetching fetcher path."""

    def __init__(self, source: SlowBatches) -> None:
        self.source = source

    def __iter__(self) -> Any:
        return (self.source[i] for i in range(len(self.source)))


Planted = tuple[PerfCallback, Any, SlowBatches]


def trainer(root: Path, cb: PerfCallback, **kwargs: Any) -> Any:
    """A quiet CPU Trainer with ``cb``, writing under ``root``; ``kwargs`` override the defaults."""
    options: dict[str, Any] = dict(
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def assert_unpatched(t: Any) -> None:
    """No perfcallback wrapper is left on the strategy, the module or the training loop."""
    assert "training_step" not in vars(t.strategy)
    assert "optimizer_step" not in vars(t.strategy)
    assert "optimizer_step" not in vars(t.lightning_module)
    assert "_on_before_fetch" not in vars(t.fit_loop.epoch_loop)


# ----------------------------------------------------------------- API, no Trainer run
def test_public_name_is_the_lightning_callback() -> None:
    import pytorch_lightning

    assert perfcallback.PerfCallback is PerfCallback
    assert issubclass(PerfCallback, L.Callback)
    assert issubclass(PerfCallback, pytorch_lightning.Callback)  # either Trainer accepts it


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"log_every_n_windows": -1}, "log_every_n_windows"),
        ({"window_steps": 10, "buffer_steps": 5}, "buffer_steps"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PerfCallback(**kwargs)


def test_report_before_fit_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"trainer\.fit"):
        PerfCallback().report()


def test_missing_fetch_seam_warns_and_fails_open() -> None:
    class Strategy:
        def training_step(self) -> int:
            return 1

        def optimizer_step(self) -> int:
            return 2

    class Module:
        def optimizer_step(self) -> int:
            return 3

    fake = type("T", (), {})()
    fake.strategy, fake.lightning_module = Strategy(), Module()
    fake.fit_loop = type("F", (), {"epoch_loop": object()})()
    rec = StepRecorder(warmup_steps=0)
    with pytest.warns(UserWarning, match="data wait is not measured"):
        probes = TrainerProbes(rec, fake, rec.data_begin)
    assert fake.strategy.training_step() == 1
    probes.remove()
    assert "training_step" not in vars(fake.strategy)
    rec.close()


# ----------------------------------------------------------------- planted costs (one run)
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """One fit with every cost planted, shared by the tests that check where each one lands."""
    torch.set_num_threads(1)
    cb = PerfCallback(warmup_steps=3, window_steps=10)
    t = trainer(
        tmp_path_factory.mktemp("planted"),
        cb,
        max_steps=30,
        val_check_interval=10,
        limit_val_batches=3,
    )
    module = PlantedModule(FORWARD_S, BACKWARD_S, OPTIMIZER_S, VAL_BATCH_S)
    data = SlowBatches(40, DATA_S)
    t.fit(module, DataLoader(data, batch_size=None), make_loader(n=12, batch_size=4))
    return cb, t, data


@pytest.mark.slow
def test_planted_data_stall_reported_within_10_percent(planted: Planted) -> None:
    cb, _, data = planted
    report = cb.report()
    assert report.steps == 27
    assert data.truth(4, 30) >= DATA_S
    assert report.breakdown["data"] == pytest.approx(data.truth(4, 30), rel=0.10)


@pytest.mark.slow
def test_planted_costs_land_in_their_phases(planted: Planted) -> None:
    cb, t, _ = planted
    b = cb.report().breakdown
    module = t.lightning_module
    for phase in ("forward", "backward", "optimizer"):
        truth = module.truth(phase, 27)
        # Upper bounds matter: in automatic optimization training_step and backward run inside
        # optimizer.step(closure) and must not count as optimizer time too. The slack covers the
        # real compute and Lightning's plumbing around each planted sleep.
        assert truth * 0.95 < b[phase] < truth * 1.15 + 0.002, (phase, truth, b)
    assert min(FORWARD_S, BACKWARD_S, OPTIMIZER_S) > 0.002 * 2  # the slack stays smaller
    phases = sum(b[p] for p in ("data", "forward", "backward", "optimizer", "other"))
    assert phases == pytest.approx(b["step"], rel=0.05)


@pytest.mark.slow
def test_validation_is_timed_apart_and_excluded(planted: Planted) -> None:
    cb, t, _ = planted
    val = cb.validation_summary()
    assert val["runs"] >= 2
    assert val["mean_s"] > 3 * VAL_BATCH_S * 0.9
    report = cb.report()
    # A validation run costs ~90 ms; a step with one inside it would stand out.
    assert report.step_percentiles_s["max"] < report.breakdown["step"] + 0.06
    assert_unpatched(t)


@pytest.mark.slow
def test_validation_inside_an_accumulation_window_is_excluded(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=0, window_steps=2)
    t = trainer(
        tmp_path,
        cb,
        max_steps=6,
        accumulate_grad_batches=2,
        val_check_interval=3,
        limit_val_batches=3,
    )
    t.fit(
        PlantedModule(val_s=VAL_BATCH_S),
        make_loader(n=24, batch_size=2),
        make_loader(n=12, batch_size=4),
    )
    assert cb.validation_summary()["runs"] >= 2  # after batches 3 and 9: mid-window
    report = cb.report()
    assert report.steps == 6
    assert report.step_percentiles_s["max"] < 3 * VAL_BATCH_S * 0.5


@pytest.mark.slow
def test_data_wait_of_an_unsized_loader(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=2, window_steps=5)
    t = trainer(tmp_path, cb, max_steps=15)
    data = SlowBatches(40, DATA_S)
    t.fit(PlantedModule(), DataLoader(SlowStream(data), batch_size=None))
    # the prefetching fetcher is one batch ahead: step k waits for batch k + 1
    assert cb.report().breakdown["data"] == pytest.approx(data.truth(4, 16), rel=0.10)


@pytest.mark.slow
def test_findings_as_they_appear_and_a_summary_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="perfcallback")
    cb = PerfCallback(warmup_steps=0, window_steps=3)
    t = trainer(tmp_path, cb, max_steps=9)
    t.fit(PlantedModule(), DataLoader(SlowBatches(20, DATA_S), batch_size=None))
    messages = [r.getMessage() for r in caplog.records if r.name == "perfcallback"]
    summary = next(i for i, m in enumerate(messages) if "perfcallback report" in m)
    assert any("dataloader.stall" in m for m in messages[:summary])  # during fit, not only at end
    assert "9 steps measured (0 warm-up)" in messages[summary]


def test_fast_dev_run_says_its_only_step_was_warm_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="perfcallback")
    cb = PerfCallback()
    t = trainer(tmp_path, cb, fast_dev_run=True)
    t.fit(PlantedModule(), make_loader(n=16, batch_size=4))
    summaries = [r.getMessage() for r in caplog.records
                 if r.name == "perfcallback" and "perfcallback report" in r.getMessage()]
    assert len(summaries) == 1, summaries
    assert "all 1 steps run were warm-up (warmup_steps=5): lower warmup_steps" in summaries[0]
    assert cb.report().steps_run == 1


# ----------------------------------------------------------------- step semantics
@pytest.mark.slow
def test_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=2, window_steps=3)
    t = trainer(tmp_path, cb, max_steps=8, accumulate_grad_batches=4, gradient_clip_val=0.5)
    data = SlowBatches(64, 0.004)
    t.fit(PlantedModule(), DataLoader(data, batch_size=None))
    report = cb.report()
    assert t.global_step == 8
    assert report.steps == 6
    # one step = four batches, each waiting for its data
    assert report.breakdown["data"] == pytest.approx(4 * data.truth(9, 32), rel=0.15)


def test_manual_optimization_with_two_optimizers(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=1, window_steps=2)
    t = trainer(tmp_path, cb, max_epochs=1)
    t.fit(TwoOptimizerModule(), make_loader(n=32, batch_size=4))
    report = cb.report()
    assert t.global_step == 16  # Lightning counts each optimizer's step
    assert report.steps == 7  # one step per batch: 8 batches, 1 warm-up
    assert report.breakdown["optimizer"] > 0 and report.breakdown["backward"] > 0
    assert_unpatched(t)


def test_fast_dev_run_writes_nothing(tmp_path: Path) -> None:
    cb = PerfCallback()
    t = trainer(tmp_path, cb, fast_dev_run=True, logger=True)
    t.fit(PlantedModule(), make_loader(n=16, batch_size=4), make_loader(n=8, batch_size=4))
    assert cb.report().steps == 0
    assert not list(tmp_path.rglob("perf_report*.json"))


def test_checkpoint_resume_continues_counters(tmp_path: Path) -> None:
    def fit(max_epochs: int, ckpt: Path | None) -> PerfCallback:
        cb = PerfCallback(warmup_steps=2, window_steps=3)
        t = trainer(tmp_path, cb, max_epochs=max_epochs)
        t.fit(PlantedModule(), make_loader(n=64, batch_size=8), ckpt_path=ckpt)
        t.save_checkpoint(tmp_path / "last.ckpt")
        return cb

    first = fit(1, None)
    assert first.report().steps == 6  # 8 batches, 2 warm-up
    resumed = fit(2, tmp_path / "last.ckpt")
    state = resumed.state_dict()
    assert state["steps_seen"] == 16
    assert resumed.report().steps == 12  # 6 carried over + 8 new, 2 warm-up again
    assert len(state["ring"]) == 12  # the windows continue from the restored records


def test_resume_from_a_checkpoint_saved_mid_epoch(tmp_path: Path) -> None:
    def fit(ckpt: Path | None) -> tuple[PerfCallback, Any]:
        cb = PerfCallback(warmup_steps=2, window_steps=3)
        saver = L.callbacks.ModelCheckpoint(tmp_path, every_n_train_steps=5, save_top_k=-1)
        t = trainer(tmp_path, cb, max_steps=10, enable_checkpointing=True, callbacks=[cb, saver])
        t.fit(PlantedModule(), make_loader(n=128, batch_size=8), ckpt_path=ckpt)
        return cb, t

    fit(None)
    cb, t = fit(next(tmp_path.glob("*step=5.ckpt")))
    assert t.global_step == 10
    assert cb.state_dict()["steps_seen"] == 10  # the step that was saving counts once
    assert cb.report().steps == 3 + 3  # each process leaves out its first 2 steps


def test_csv_logger_gets_the_scalars_and_the_report(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=0, window_steps=4)
    t = trainer(tmp_path, cb, max_steps=12, logger=L.loggers.CSVLogger(tmp_path))
    t.fit(PlantedModule(), make_loader(n=96, batch_size=8))
    log_dir = Path(t.logger.log_dir)
    with open(log_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/step_ms")]
    # At the step Lightning logs each window's last batch at: its 0-based optimizer step.
    assert [int(r["step"]) for r in rows] == [3, 7, 11]
    assert all(float(r["perf/phase/data_ms"]) >= 0 for r in rows)
    saved = json.loads((log_dir / "perf_report.json").read_text())
    assert saved["steps"] == 12 and "validation" in saved
    assert cb.report().steps == 12


def test_pytorch_lightning_trainer(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(16, 4)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    cb = PerfCallback(warmup_steps=1, window_steps=2)
    t = pl.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    t.fit(Module(), make_loader(n=64, batch_size=4))
    assert cb.report().steps == 4
    assert cb.report().breakdown["forward"] > 0


# ----------------------------------------------------------------- failure paths
def test_exception_in_training_closes_cleanly(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=1, window_steps=2, logdir=tmp_path / "perf")
    t = trainer(tmp_path, cb, max_epochs=1)
    with pytest.raises(RuntimeError, match="planted failure"):
        t.fit(PlantedModule(fail_at_batch=5), make_loader(n=64, batch_size=4))
    assert cb.report().steps == 4
    assert_unpatched(t)
    assert json.loads((tmp_path / "perf" / "perf_report.json").read_text())["steps"] == 4


class _BrokenSink(Sink):
    def on_window(self, stats: WindowStats) -> None:
        raise ValueError("sink bug")


def test_internal_errors_never_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cb = PerfCallback(warmup_steps=0, window_steps=2, sinks=[_BrokenSink()])
    t = trainer(tmp_path, cb, max_steps=6)
    calls = {"n": 0}

    def flaky(self: StepRecorder, samples: int) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyError("hook bug")

    monkeypatch.setattr(StepRecorder, "add_samples", flaky)
    t.fit(PlantedModule(), make_loader(n=64, batch_size=4))
    assert t.global_step == 6  # training went on
    disabled = cb.report().disabled
    assert "lightning_callback" in disabled and "user:sink[0]:_BrokenSink" in disabled
    assert_unpatched(t)  # a failing callback takes its wrappers out at once


# ----------------------------------------------------------------- DDP, two processes
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("all_ranks", [False, True])
def test_ddp_two_processes_each_rank_reports(tmp_path: Path, all_ranks: bool) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, __file__, "--ddp", str(tmp_path), str(int(all_ranks))],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # every rank measured itself (its report(), saved by the worker)
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["steps"] == 5
    written = sorted(p.name for p in (tmp_path / "perf").glob("perf_report*.json"))
    # TensorBoard output in logdir comes from rank zero only, whatever all_ranks says.
    assert len(list((tmp_path / "perf").glob("events.out.tfevents.*"))) == 1
    summaries = proc.stderr.count("perfcallback report")
    if all_ranks:
        assert written == ["perf_report.json", "perf_report.rank1.json"]
        assert summaries == 2
    else:  # printing and files on rank zero only
        assert written == ["perf_report.json"]
        assert summaries == 1


def _ddp_main(out: str, all_ranks: bool) -> None:
    """Worker for the DDP test: Lightning's launcher re-runs this script as local rank 1."""
    torch.set_num_threads(1)
    cb = PerfCallback(warmup_steps=1, window_steps=2, all_ranks=all_ranks, logdir=f"{out}/perf")
    t = L.Trainer(
        callbacks=[cb],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    t.fit(PlantedModule(), make_loader(n=64, batch_size=4))
    Path(out, f"rank{t.global_rank}.json").write_text(json.dumps(cb.report().to_dict()))


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp"]:
    _ddp_main(sys.argv[2], sys.argv[3] == "1")


def test_model_facts_reach_the_rules(tmp_path: Path) -> None:
    """Parameter dtype and compile state, as the precision and recompilation rules read them."""
    cb = PerfCallback(warmup_steps=0, window_steps=4)
    compiled = torch.compile(PlantedModule(), backend="eager")  # Lightning unwraps it in fit()
    trainer(tmp_path, cb, max_steps=2).fit(compiled, make_loader(n=32, batch_size=8))
    ctx = cb._active().context
    assert ctx.param_dtype == "float32"
    assert ctx.compile_in_use is True
