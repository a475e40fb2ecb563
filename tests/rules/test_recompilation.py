"""recompilation.* on hand-built windows, and the CompileProbe that feeds them."""

from __future__ import annotations

import sys
import types

import pytest

from perfcallback.context import CompileProbe, RunContext, dynamo_counts
from rules._windows import run, window


@pytest.mark.parametrize(
    ("count", "compile_s", "severity"),
    [
        (1, 1.0, None),  # one compile: a last, smaller batch
        (2, 0.0, "info"),  # recompiling, but cheaply
        (2, 1.25, "warning"),  # 5% of 25 x 1 s
        (10, 6.25, "critical"),  # 25%
        (3, None, "warning"),  # compile time unknown
    ],
)
def test_recompiles_graded(count: int, compile_s: float | None, severity: str | None) -> None:
    rec = run("recompilation.recompiles", window(recompiles=count, compile_s=compile_s))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "recompilation" and rec.evidence["recompiles"] == count
        assert "dynamic=True" in rec.message and "TORCH_LOGS=recompiles" in rec.message


def test_recompiles_silent_when_compile_not_in_use() -> None:
    assert run("recompilation.recompiles", window()) is None
    assert run("recompilation.graph_breaks", window()) is None


@pytest.mark.parametrize(("breaks", "severity"), [(0, None), (1, "info"), (7, "info"),
                                                  (8, "warning")])
def test_graph_breaks_graded(breaks: int, severity: str | None) -> None:
    rec = run("recompilation.graph_breaks", window(graph_breaks=breaks))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert "TORCH_LOGS=graph_breaks" in rec.message and "fullgraph=True" in rec.message


class FakeDynamo:
    """Stands in for torch._dynamo.utils in sys.modules: counters we control."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.module = types.ModuleType("torch._dynamo.utils")
        self.module.counters = {"frames": {"total": 0}, "graph_break": {}}  # type: ignore[attr-defined]
        self.module.compilation_time_metrics = {"_compile.compile_inner": []}  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torch._dynamo.utils", self.module)

    def compile(self, seconds: float, breaks: int = 0) -> None:
        self.module.counters["frames"]["total"] += 1  # type: ignore[attr-defined]
        self.module.compilation_time_metrics["_compile.compile_inner"].append(seconds)  # type: ignore[attr-defined]
        if breaks:
            self.module.counters["graph_break"]["print"] = breaks  # type: ignore[attr-defined]


def test_probe_counts_recompiles_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    dynamo = FakeDynamo(monkeypatch)
    probe, ctx = CompileProbe(max_marks=8), RunContext()
    assert probe.fields(1, ctx) == {} and not ctx.compile_in_use
    dynamo.compile(2.0, breaks=3)  # first compile, during warm-up (steps 1-5)
    probe.mark(5)
    assert ctx.compile_in_use is False
    assert probe.fields(6, ctx) == {
        "recompiles": 0, "compile_s": 0.0, "compile_since_step": 5, "graph_breaks": 3
    }
    assert ctx.compile_in_use is True
    dynamo.compile(0.5)
    dynamo.compile(0.25)
    assert probe.fields(6, ctx) == {
        "recompiles": 2, "compile_s": 0.75, "compile_since_step": 5, "graph_breaks": 3
    }
    probe.mark(30)  # window 6..30 processed
    dynamo.compile(0.125)
    assert probe.fields(31, ctx)["recompiles"] == 1  # this window only
    assert probe.fields(6, ctx)["recompiles"] == 3  # every step since warm-up
    assert probe.fields(40, ctx)["compile_since_step"] == 30  # a window not on a boundary


def test_probe_without_dynamo_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch._dynamo.utils", raising=False)
    assert dynamo_counts() is None
    assert CompileProbe(max_marks=4).fields(1, RunContext(compile_in_use=True)) == {}


def test_recompiles_counted_over_the_steps_since_the_snapshot() -> None:
    # report() on a window of 25 steps whose snapshot is 10 steps older: 35 steps of 1 s
    stats = window(first_step=41, recompiles=4, compile_s=3.5, compile_since_step=30)
    rec = run("recompilation.recompiles", stats)
    assert rec is not None and rec.evidence["steps"] == 35
    assert rec.evidence["compile_share"] == pytest.approx(0.1) and rec.severity == "warning"
    assert "4 times in 35 steps" in rec.message
