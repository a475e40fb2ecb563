"""The engine session every adapter builds on: validated options, outputs, one fail-open policy,
and one torch.profiler session per process."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from perfcallback import PerfMonitor
from perfcallback.session import EngineSession, SessionOptions

from _helpers import make_loader, tiny_model


def test_options_are_validated_once_and_frozen(tmp_path: Path) -> None:
    opts = SessionOptions(logdir=str(tmp_path), disabled_rules=["gc"], thresholds={})
    assert opts.logdir == tmp_path and opts.disabled_rules == ("gc",)
    with pytest.raises(AttributeError):
        opts.warmup_steps = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"unknown perfcallback option.*'windw_steps'"):
        SessionOptions.from_kwargs(windw_steps=3)
    with pytest.raises(TypeError, match=r"write disabled_rules=\['gc'\]"):
        SessionOptions(disabled_rules="gc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_steps must be an int >= 1, got 0"):
        PerfMonitor(window_steps=0)
    with pytest.raises(TypeError, match="sinks must be perfcallback Sink objects"):
        PerfMonitor(sinks=[print])  # type: ignore[list-item]


def test_a_session_runs_without_any_adapter(tmp_path: Path) -> None:
    session = EngineSession(SessionOptions(warmup_steps=0, window_steps=2, tensorboard=False,
                                           profile=False, log_recommendations=False))
    session.open_outputs(report_dir=tmp_path)
    rec = session.recorder
    for _ in range(4):
        rec.begin_step()
        rec.end_step()
    report = session.close()
    assert report.steps == 4
    assert (tmp_path / "perf_report.json").exists()
    assert session.close().steps == 4  # idempotent


def test_only_rank_zero_speaks_unless_all_ranks(tmp_path: Path) -> None:
    quiet = EngineSession(SessionOptions(tensorboard=False), rank=1, world_size=2)
    quiet.open_outputs(report_dir=tmp_path, trace_dir=tmp_path)
    assert not quiet.speaks and quiet.report_dir is None and quiet.profiler is None
    loud = EngineSession(SessionOptions(tensorboard=False, all_ranks=True), rank=1, world_size=2)
    loud.open_outputs(report_dir=tmp_path, trace_dir=tmp_path)
    assert loud.speaks and loud.profiler is not None
    loud.close()
    assert (tmp_path / "perf_report.rank1.json").exists()
    assert not (tmp_path / "perf_report.json").exists()


def test_the_users_callback_error_is_not_called_our_bug(caplog: pytest.LogCaptureFixture) -> None:
    def on_rec(rec: object) -> None:
        raise KeyError("my typo")

    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=0, window_steps=2,
                     on_recommendation=on_rec, thresholds={"dataloader.stall.warning": 0.0,
                                                           "dataloader.stall.info": 0.0},
                     fire_after=1) as perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * 8, sleep_s=0.001)):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    assert "user:on_recommendation callback" in perf.report().disabled
    errors = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    message = errors[0].getMessage()
    assert "your on_recommendation callback raised KeyError" in message
    assert "report" not in message.lower()
    assert errors[0].exc_info is not None  # the traceback of the user's own code


def test_nested_monitors_with_default_settings_both_finish(tmp_path: Path) -> None:
    """Two nested monitors, each with a logdir and the default profiler: torch allows one
    profiler session per process; the second skips its capture, says so once, and measures on.
    Run in a child process: the failure this guards against was a segmentation fault."""
    script = textwrap.dedent(f"""
        import logging, torch
        logging.basicConfig(level=logging.WARNING)
        from perfcallback import PerfMonitor
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(30)]
        with PerfMonitor(model=model, optimizer=opt, logdir=r"{tmp_path / 'outer'}") as outer:
            with PerfMonitor(model=model, optimizer=opt, logdir=r"{tmp_path / 'inner'}") as inner:
                for x, y in outer.wrap_loader(data):
                    with outer.step(), inner.step():
                        torch.nn.functional.cross_entropy(model(x), y).backward()
                        opt.step()
                        opt.zero_grad()
        print("steps", outer.report().steps, inner.report().steps)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps" in proc.stdout
    outer_steps, inner_steps = map(int, proc.stdout.split()[-2:])
    assert outer_steps > 0 and inner_steps > 0
    assert proc.stderr.count("one profiler at a time") == 1
    traces = list(tmp_path.glob("*/profiler/*/*.pt.trace.json.gz"))
    assert len(traces) == 1  # the first monitor's capture, written whole
    assert not list(tmp_path.glob("**/*.tmp"))


def test_unmeasured_phases_say_so_instead_of_zero() -> None:
    model = tiny_model()
    with PerfMonitor(model=model, warmup_steps=1, window_steps=5,
                     log_recommendations=False) as perf:
        for x, y in perf.wrap_loader(make_loader(n=8 * 12)):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
    report = perf.report()
    assert report.unmeasured == ("optimizer",)
    assert report.to_dict()["unmeasured_phases"] == ["optimizer"]
    text = str(report)
    assert "optimizer           -       -   not measured: pass optimizer=" in text
    assert "optimizer      0.000" not in text


def test_the_report_says_which_steps_its_findings_come_from() -> None:
    with PerfMonitor(warmup_steps=0, window_steps=5, log_recommendations=False) as perf:
        for _ in perf.wrap_loader(make_loader(n=20, batch_size=1, sleep_s=0.002)):
            with perf.step():
                pass
    report = perf.report()
    assert report.findings_window == {"first_step": 16, "last_step": 20}
    assert report.recommendations  # a data stall, judged on steps 16-20
    text = str(report)
    assert "(mean over all 20 measured steps)" in text
    assert "judged on the latest window, steps 16-20" in text


def test_a_run_shorter_than_its_warmup_says_so() -> None:
    with PerfMonitor(warmup_steps=5, log_recommendations=False) as perf, perf.step():
        pass
    report = perf.report()
    assert (report.steps, report.steps_run) == (0, 1)
    assert "all 1 steps run were warm-up (warmup_steps=5): lower warmup_steps" in str(report)


def test_reusing_a_logdir_is_said_once_and_deletes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        with PerfMonitor(logdir=tmp_path, warmup_steps=0, window_steps=5, profile=False) as perf:
            for _ in perf.wrap_loader(range(10)):
                with perf.step():
                    pass
    warnings = [r.getMessage() for r in caplog.records if "already holds" in r.getMessage()]
    assert len(warnings) == 1
    assert "perf_report.json, TensorBoard event files" in warnings[0]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
