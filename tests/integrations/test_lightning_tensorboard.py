"""PerfCallback's TensorBoard output with a real Trainer on CPU, read back with TensorBoard's own
reader (EventAccumulator) and torch-tb-profiler's loader: one run shared with the Trainer's
TensorBoardLogger, points on Lightning's step axis, no tag written twice, traces under its log_dir.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")

import torch  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from perfcallback.integrations._lightning_outputs import StepAxis  # noqa: E402
from perfcallback.integrations.lightning import PerfCallback  # noqa: E402
from perfcallback.profiling import ProfileOptions  # noqa: E402
from perfcallback.sinks.tensorboard import window_scalars  # noqa: E402
from perfcallback.stats import PHASE_NAMES  # noqa: E402

from _helpers import make_loader, read_events, texts  # noqa: E402

# Lightning 2.6 on torch 2.13 warns about torch's deprecated LeafSpec at every fit.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

WARMUP, WINDOW, STEPS = 2, 5, 15
# One scheduled capture right after warm-up: prepared at the end of step 3, step 4 is the
# profiler's warm-up, steps 5-6 are recorded. Steps 4-6 are left out of the figures, so the
# measured steps are 3 and 7-15: two windows, ending at recorder steps 10 and 15.
PROFILE = ProfileOptions(start_after=1, warmup=1, active=2, trigger=False)
MEASURED = STEPS - WARMUP - 3
WINDOW_ENDS = [10, 15]  # recorder step index (1-based) of each window's last step
LIGHTNING_STEPS = [9, 14]  # where Lightning logs those steps' batches (0-based)


class LoggedModule(L.LightningModule):
    """A tiny classifier that logs its loss and a 1-based batch counter at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(16, 4)
        self.batches = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.batches += 1
        loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        self.log("loss", loss)
        self.log("batch", float(self.batches))  # which batch Lightning logged at which step
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class WritesAfterUs(L.Callback):
    """Writes to the logger's writer after PerfCallback's fit end: it must still be open."""

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.logger.experiment.add_scalar("after_perfcallback", 1.0, trainer.global_step)


def fit(root: Path, cb: PerfCallback, logger: Any, steps: int = STEPS, **loader: Any) -> Any:
    """A quiet CPU fit of ``steps`` steps that logs every step; ``loader`` goes to make_loader."""
    tensorboard = isinstance(logger, L.loggers.TensorBoardLogger)
    t = L.Trainer(
        max_steps=steps,
        callbacks=[cb, WritesAfterUs()] if tensorboard else [cb],
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    t.fit(LoggedModule(), make_loader(n=8 * steps + 8, batch_size=8, **loader))
    return t


def event_files(root: Path) -> list[Path]:
    return sorted(root.rglob("events.out.tfevents.*"))


Run = tuple[PerfCallback, Path, EventAccumulator]


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One fit with a TensorBoardLogger, a planted data stall and one scheduled capture."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tb")
    cb = PerfCallback(
        warmup_steps=WARMUP,
        window_steps=WINDOW,
        fire_after=1,
        profile=PROFILE,
        log_recommendations=False,
    )
    t = fit(root, cb, L.loggers.TensorBoardLogger(root, name="tb"), sleep_s=0.002)
    log_dir = Path(t.logger.log_dir)
    return cb, log_dir, read_events(log_dir)


# ----------------------------------------------------------------- the TensorBoardLogger's run
@pytest.mark.slow
def test_one_run_one_writer_each_tag_once_on_lightnings_step_axis(tb_run: Run) -> None:
    _, log_dir, acc = tb_run
    # Our scalars, tracks and texts went through the logger's own writer: one event file, still
    # open for the callbacks after ours (Lightning closes it).
    assert len(event_files(log_dir.parent)) == 1
    tags = set(acc.Tags()["scalars"])
    assert "after_perfcallback" in tags
    expected = {
        "perf/step_ms",
        "perf/data_wait_pct",
        "perf/throughput/steps_per_s",
        "perf/throughput/samples_per_s",
        "perf/validation/mean_ms",
        *(f"perf/phase/{p}_ms" for p in PHASE_NAMES),
    }
    assert expected <= tags
    # Each window's figures once (log_metrics only, not the sink too), at the step where
    # Lightning logged the window's last batch, its own loss included.
    batch_at = {round(e.value): e.step for e in acc.Scalars("batch")}
    assert [batch_at[k] for k in WINDOW_ENDS] == LIGHTNING_STEPS
    for tag in expected:
        assert [e.step for e in acc.Scalars(tag)] == LIGHTNING_STEPS, tag
    assert {e.step for e in acc.Scalars("loss")} >= set(LIGHTNING_STEPS)


@pytest.mark.slow
def test_scalars_agree_with_the_report(tb_run: Run) -> None:
    cb, _, acc = tb_run
    report = cb.report()
    assert report.steps == MEASURED == 2 * WINDOW  # the profiled steps 4-6 are left out

    def mean(tag: str) -> float:  # two windows of equal size: their mean is the run's
        return sum(e.value for e in acc.Scalars(tag)) / 2

    approx = lambda x: pytest.approx(x, rel=1e-5)  # noqa: E731  (events store float32)
    assert mean("perf/step_ms") == approx(report.breakdown["step"] * 1e3)
    for phase in PHASE_NAMES:
        assert mean(f"perf/phase/{phase}_ms") == approx(report.breakdown[phase] * 1e3), phase


@pytest.mark.slow
def test_planted_stall_shows_in_the_text_tab_and_the_severity_track(tb_run: Run) -> None:
    cb, _, acc = tb_run
    assert "dataloader.stall" in {r.rule for r in cb.report().recommendations}
    track = [(e.step, e.value) for e in acc.Scalars("perf/recommendations/dataloader")]
    assert [step for step, _ in track] == LIGHTNING_STEPS
    assert all(value >= 2.0 for _, value in track)  # warning or critical, from the first window
    table = texts(acc, "perf/recommendations/text_summary")
    assert table[0][0] == LIGHTNING_STEPS[0]
    assert "`dataloader.stall`" in table[0][1] and "num_workers" in table[0][1]


@pytest.mark.slow
def test_trace_is_captured_under_the_log_dir_and_found_by_torch_tb_profiler(tb_run: Run) -> None:
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler import io as tb_io
    from torch_tb_profiler.profiler import RunLoader

    _, log_dir, acc = tb_run
    (path,) = sorted(log_dir.rglob("*.pt.trace.json.gz"))
    run_dir = path.parent
    assert run_dir.relative_to(log_dir).as_posix() == "profiler/step0000005-scheduled"
    run = RunLoader(run_dir.name, str(run_dir), tb_io.Cache(tempfile.mkdtemp())).load()
    (span,) = run.get_spans()
    profile = run.get_profile(run.workers[0], span)
    assert [row[0] for row in profile.overview["steps"]["rows"]] == ["5", "6"]
    (entry,) = texts(acc, "perf/profiler_traces/text_summary")[-1:]
    assert "profiler/step0000005-scheduled/" in entry[1]  # relative to the run's directory


# ----------------------------------------------------------------- other loggers, logdir
def test_only_a_csv_logger_gets_scalars_and_no_tensorboard_files(tmp_path: Path) -> None:
    cb = PerfCallback(warmup_steps=0, window_steps=3, log_recommendations=False)
    t = fit(tmp_path, cb, L.loggers.CSVLogger(tmp_path), steps=6)
    assert not event_files(tmp_path)
    assert not list(tmp_path.rglob("*.pt.trace.json.gz")) and not list(tmp_path.rglob("profiler"))
    with open(Path(t.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/step_ms")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert cb.report().steps == 6


def test_logdir_without_a_tensorboard_logger_gets_a_run_of_its_own(tmp_path: Path) -> None:
    cb = PerfCallback(
        tmp_path / "perf", warmup_steps=0, window_steps=3, profile=False, log_recommendations=False
    )
    t = fit(tmp_path, cb, L.loggers.CSVLogger(tmp_path / "csv"), steps=6)
    (events,) = event_files(tmp_path)
    assert events.parent == tmp_path / "perf"
    acc = read_events(events.parent)
    names = {tag for tag, _ in window_scalars(cb._active().window())}
    assert names <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("perf/step_ms")] == [2, 5]  # the CSV rows' steps too
    assert texts(acc, "perf/recommendations/text_summary")
    with open(Path(t.logger.log_dir) / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r.get("perf/step_ms")] == [2, 5]


def test_missing_tensorboard_warns_with_the_extra_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    cb = PerfCallback(
        tmp_path, warmup_steps=0, window_steps=3, profile=False, log_recommendations=False
    )
    with pytest.warns(UserWarning, match=r"pip install 'perfcallback\[tensorboard\]'"):
        fit(tmp_path, cb, False, steps=6)
    assert cb.report().steps == 6
    assert (tmp_path / "perf_report.json").exists()
    assert not event_files(tmp_path)
    with pytest.raises(ImportError, match=r"perfcallback\[tensorboard\]"):
        PerfCallback(tensorboard=True)  # asked for explicitly: an error, when built


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tensorboard": "yes"}, "tensorboard"), ({"profile": 3}, "ProfileOptions")],
)
def test_output_options_are_checked_when_built(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        PerfCallback(**kwargs)


def test_step_axis_follows_lightnings_counter_after_a_resume() -> None:
    class Loop:
        _batches_that_stepped = 1000  # e.g. a checkpoint without perfcallback state

    trainer = type("T", (), {"global_step": 2000})()  # two optimizers: global_step counts both
    trainer.fit_loop = type("F", (), {"epoch_loop": Loop()})()
    axis = StepAxis()
    assert axis(10) == 9  # a fresh run, before any step began
    axis.mark(1, trainer)  # the recorder's first step is Lightning's batch 1000
    assert axis(1) == 1000 and axis(25) == 1024
