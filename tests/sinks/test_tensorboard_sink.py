"""TensorBoardSink: what TensorBoard's own reader finds in the event files matches the Report."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from perfcallback import PerfMonitor, Recommendation
from perfcallback.rules import _REGISTRY, Finding, registered_rules, rule
from perfcallback.sinks import tensorboard as tb_module
from perfcallback.sinks.tensorboard import (
    TensorBoardSink,
    recommendations_markdown,
    window_scalars,
)

from _helpers import FakeClock, read_events, texts

pytest.importorskip("tensorboard")

WARMUP, WINDOW, STEPS = 2, 5, 20
DATA_S, COMPUTE_S, BATCH = 0.002, 0.008, 4


def fake_loop(perf: PerfMonitor, clock: FakeClock, steps: int, step_s=lambda i: COMPUTE_S) -> None:
    """``steps`` steps: each batch takes DATA_S to arrive, then the step computes for step_s(i)."""

    def batches():
        for _ in range(steps):
            clock.advance(DATA_S)
            yield torch.zeros(BATCH, 3)

    for i, _batch in enumerate(perf.wrap_loader(batches())):
        with perf.step():
            clock.advance(step_s(i))


def test_scalars_match_the_report(tmp_path: Path) -> None:
    clock = FakeClock()
    with PerfMonitor(logdir=tmp_path, warmup_steps=WARMUP, window_steps=WINDOW, profile=False,
                     clock=clock, log_recommendations=False) as perf:
        fake_loop(perf, clock, WARMUP + STEPS)
    report = perf.report()
    acc = read_events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    expected = {"perf/step_ms", "perf/step_p50_ms", "perf/step_p90_ms", "perf/step_max_ms",
                "perf/data_wait_pct", "perf/throughput/steps_per_s",
                "perf/throughput/samples_per_s", "perf/memory/host_rss_mb", "perf/gc/pause_ms",
                "perf/gc/collections_per_step",
                *(f"perf/phase/{p}_ms" for p in ("data", "forward", "backward", "optimizer",
                                                 "other"))}
    assert expected <= tags
    assert not any(t.startswith("perf/memory/cuda_") for t in tags)  # only when CUDA is present
    window_ends = [WARMUP + WINDOW * k for k in range(1, STEPS // WINDOW + 1)]
    for tag in expected:
        assert [e.step for e in acc.Scalars(tag)] == window_ends, tag

    def values(tag: str) -> list[float]:
        return [e.value for e in acc.Scalars(tag)]

    approx = lambda x: pytest.approx(x, rel=1e-5)  # noqa: E731  (events store float32)
    assert values("perf/step_ms") == [approx(report.breakdown["step"] * 1e3)] * 4
    for phase in ("data", "forward", "backward", "optimizer", "other"):
        assert values(f"perf/phase/{phase}_ms") == [approx(report.breakdown[phase] * 1e3)] * 4
    assert report.breakdown["data"] == pytest.approx(DATA_S)
    share = report.breakdown["data"] / report.breakdown["step"] * 100
    assert values("perf/data_wait_pct") == [approx(share)] * 4
    assert values("perf/throughput/samples_per_s") == [approx(report.throughput["samples_per_s"])] * 4
    assert values("perf/throughput/steps_per_s") == [approx(report.throughput["steps_per_s"])] * 4
    assert values("perf/memory/host_rss_mb")[-1] == approx(report.memory["host_rss_bytes"] / 2**20)
    assert values("perf/gc/pause_ms") == [0.0] * 4  # the fake clock does not move during a gc
    # The Text tab holds the recommendations table from the first window on.
    assert texts(acc, "perf/recommendations/text_summary")[0][0] == window_ends[0]


@pytest.fixture
def planted_rule() -> Iterator[list[str]]:
    """A registered rule that warns whenever a window's mean step exceeds 15 ms.

    Yields the ids of the built-in rules, to disable them so only the planted one can fire.
    """
    builtin = list(registered_rules())

    @rule("step_variance.planted", category="step_variance")
    def _planted(stats, ctx, th):
        if stats.step_s * 1e3 <= 15.0:
            return None
        return Finding(severity="warning", message="Steps are slow | fix it",
                       evidence={"step_ms": stats.step_s * 1e3}, est_gain=0.5)

    yield builtin
    del _REGISTRY["step_variance.planted"]


def test_recommendations_table_and_severity_track_follow_the_findings(
    tmp_path: Path, planted_rule: list[str]
) -> None:
    clock = FakeClock()
    slow = range(3 * WINDOW, 6 * WINDOW)  # measured windows 4-6 are slow (index after warm-up)
    with PerfMonitor(logdir=tmp_path, warmup_steps=WARMUP, window_steps=WINDOW, profile=False,
                     clock=clock, log_recommendations=False, fire_after=2, clear_after=2,
                     disabled_rules=planted_rule) as perf:
        fake_loop(perf, clock, WARMUP + 9 * WINDOW,
                  step_s=lambda i: 0.030 if i - WARMUP in slow else COMPUTE_S)
    acc = read_events(tmp_path)
    end = lambda k: WARMUP + WINDOW * k  # noqa: E731  step index at the end of window k
    track = [(e.step, e.value) for e in acc.Scalars("perf/recommendations/step_variance")]
    # Holds in windows 4, 5, 6 -> fires at 5 (fire_after=2); absent in 7, 8 -> resolved at 8.
    assert track == [(end(5), 2.0), (end(6), 2.0), (end(7), 2.0), (end(8), 0.0), (end(9), 0.0)]
    table = texts(acc, "perf/recommendations/text_summary")
    assert [step for step, _ in table] == [end(1), end(5), end(8)]
    assert table[0][1].startswith("No active recommendations")
    assert "| warning | `step_variance.planted` | step_variance | 50% |" in table[1][1]
    assert "* **`step_variance.planted`**: Steps are slow \\| fix it" in table[1][1]
    assert table[2][1].startswith("No active recommendations")


def test_an_existing_writer_is_reused_and_left_open(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    clock = FakeClock()
    with PerfMonitor(warmup_steps=0, window_steps=WINDOW, sinks=[TensorBoardSink(writer=writer)],
                     clock=clock, log_recommendations=False) as perf:
        fake_loop(perf, clock, 2 * WINDOW)
    writer.add_scalar("loss", 1.0, 2 * WINDOW)  # still open: the owner (e.g. Lightning) closes it
    writer.close()
    acc = read_events(tmp_path)
    assert {"loss", "perf/step_ms"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("perf/step_ms")] == [WINDOW, 2 * WINDOW]


def test_every_writes_scalars_every_nth_window(tmp_path: Path) -> None:
    clock = FakeClock()
    with PerfMonitor(warmup_steps=0, window_steps=WINDOW, clock=clock, log_recommendations=False,
                     sinks=[TensorBoardSink(tmp_path, every=2)]) as perf:
        fake_loop(perf, clock, 5 * WINDOW)
    steps = [e.step for e in read_events(tmp_path).Scalars("perf/step_ms")]
    assert steps == [WINDOW, 3 * WINDOW, 5 * WINDOW]


def test_missing_tensorboard_warns_with_the_extra_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.warns(UserWarning, match=r"pip install 'perfcallback\[tensorboard\]'") as rec:
        perf = PerfMonitor(logdir=tmp_path, warmup_steps=0, profile=False)
    assert rec[0].filename == __file__  # points at the user's line
    with perf:
        for _ in perf.wrap_loader(range(30)):
            with perf.step():
                pass
    assert perf.report().steps == 30
    assert (tmp_path / "perf_report.json").exists()
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    with pytest.raises(ImportError, match=r"perfcallback\[tensorboard\]"):
        PerfMonitor(logdir=tmp_path, tensorboard=True)


def test_a_failing_writer_is_switched_off_and_training_goes_on(tmp_path: Path) -> None:
    class BrokenWriter:
        def add_scalar(self, *args: object) -> None:
            raise OSError("disk full")

    clock = FakeClock()
    with PerfMonitor(warmup_steps=0, window_steps=WINDOW, clock=clock, log_recommendations=False,
                     sinks=[TensorBoardSink(writer=BrokenWriter())]) as perf:
        fake_loop(perf, clock, 3 * WINDOW)
    report = perf.report()
    assert report.steps == 3 * WINDOW
    assert any("TensorBoardSink" in k for k in report.disabled)


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb_module, "_is_rank_zero", lambda: False)
    clock = FakeClock()
    with PerfMonitor(logdir=tmp_path, warmup_steps=0, window_steps=WINDOW, profile=False,
                     clock=clock, log_recommendations=False) as perf:
        fake_loop(perf, clock, 2 * WINDOW)
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="exactly one of logdir"):
        TensorBoardSink()
    with pytest.raises(ValueError, match="every must be an int >= 1, got 0"):
        TensorBoardSink(writer=object(), every=0)
    with pytest.raises(ValueError, match="tensorboard=True needs a logdir"):
        PerfMonitor(tensorboard=True)


def test_markdown_table_escapes_cells_and_orders_by_severity() -> None:
    recs = [
        Recommendation(rule="gc.pauses", category="gc", severity="info", message="a|b\nc"),
        Recommendation(rule="dataloader.stall", category="dataloader", severity="critical",
                       message="Raise num_workers", est_gain=0.25),
    ]
    lines = recommendations_markdown(recs).splitlines()
    assert lines[0] == "| severity | rule | category | est. gain |"
    assert lines[2] == "| critical | `dataloader.stall` | dataloader | 25% |"
    assert lines[3] == "| info | `gc.pauses` | gc |  |"
    assert lines[5:] == ["* **`dataloader.stall`**: Raise num_workers", "* **`gc.pauses`**: a\\|b c"]


def test_window_scalars_cover_cuda_device_and_trace_figures() -> None:
    from perfcallback.stats import StepRecord, summarize

    rec = StepRecord(1, 0.01, [0.001, 0.002, 0.003, 0.001, 0.003], 8, 2**20, 0.0, 0, 1.0,
                     {"allocated_bytes": 3 * 2**20, "reserved_bytes": 4 * 2**20,
                      "peak_allocated_bytes": 5 * 2**20})
    stats = summarize([rec], device_step_s=0.009, device_phase_s={"forward": 0.004},
                      extra={"gpu_idle_pct": 12.5})
    scalars = dict(window_scalars(stats))
    assert scalars["perf/memory/cuda_allocated_mb"] == 3.0
    assert scalars["perf/memory/cuda_reserved_mb"] == 4.0
    assert scalars["perf/memory/cuda_peak_allocated_mb"] == 5.0
    assert scalars["perf/device/step_ms"] == pytest.approx(9.0)
    assert scalars["perf/device/phase/forward_ms"] == pytest.approx(4.0)
    assert scalars["perf/trace/gpu_idle_pct"] == 12.5


def test_records_framed_in_c_carry_tensorboards_own_checksums(tmp_path: Path) -> None:
    """With google-crc32c, an owned writer frames its records in C: every record's length and data
    checksums must equal what TensorBoard's own (pure-Python) CRC-32C gives, and its reader must
    read the file back."""
    pytest.importorskip("google_crc32c")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    clock = FakeClock()
    with PerfMonitor(logdir=tmp_path, warmup_steps=WARMUP, window_steps=WINDOW, profile=False,
                     clock=clock, log_recommendations=False) as perf:
        fake_loop(perf, clock, STEPS)
        sink = next(s for s in perf.recorder.sinks if isinstance(s, TensorBoardSink))
        assert sink.crc_in_c
        # in the file as each window ends, before any flush or close: a killed run keeps them
        assert len(read_events(tmp_path).Scalars("perf/step_ms")) == (STEPS - WARMUP) // WINDOW
    (events_file,) = tmp_path.glob("events.out.tfevents.*")
    blob, records = events_file.read_bytes(), 0
    while blob:
        header, header_crc = blob[:8], int.from_bytes(blob[8:12], "little")
        size = int.from_bytes(header, "little")
        data, data_crc = blob[12:12 + size], int.from_bytes(blob[12 + size:16 + size], "little")
        assert header_crc == masked_crc32c(header) and data_crc == masked_crc32c(data)
        blob, records = blob[16 + size:], records + 1
    assert records >= 1 + (STEPS - WARMUP) // WINDOW  # the file-version record, then windows
    steps = [e.step for e in read_events(tmp_path).Scalars("perf/step_ms")]
    assert steps == [WARMUP + WINDOW * k for k in range(1, (STEPS - WARMUP) // WINDOW + 1)]


def test_a_writer_the_user_passes_keeps_tensorboards_own_record_writing(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    records = writer._get_file_writer().event_writer._async_writer._writer
    clock = FakeClock()
    sink = TensorBoardSink(writer=writer)
    with PerfMonitor(warmup_steps=WARMUP, window_steps=WINDOW, sinks=[sink], tensorboard=False,
                     profile=False, clock=clock, log_recommendations=False) as perf:
        fake_loop(perf, clock, STEPS)
    writer.close()
    assert not sink.crc_in_c
    assert "write" not in vars(records)  # TensorBoard's own method, not an instance override
    assert len(read_events(tmp_path).Scalars("perf/step_ms")) == (STEPS - WARMUP) // WINDOW
