"""The registry, thresholds, disabling and overrides, and the docs page that lists every rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from perfcallback import rules as rules_module
from perfcallback.recorder import StepRecorder
from perfcallback.report import CATEGORIES
from perfcallback.rules import Finding, check_disabled, evaluate, registered_rules, rule
from perfcallback.rules.thresholds import DEFAULTS, get, grade, validate_overrides
from perfcallback.stats import EXTRA_KEYS
from rules._windows import context, window

from _helpers import FakeClock

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def test_every_category_has_a_rule_and_ids_are_well_formed() -> None:
    rules = registered_rules()
    assert {r.category for r in rules.values()} == set(CATEGORIES)
    for rule_id, r in rules.items():
        category, name = rule_id.split(".")
        assert category == r.category and name == name.lower() and name.isidentifier()


def test_duplicate_ids_are_refused() -> None:
    registered_rules()
    with pytest.raises(ValueError, match="already registered"):
        rule("gc.pauses", category="gc")(lambda s, c, t: None)


def test_every_threshold_belongs_to_a_rule_or_category() -> None:
    rules = registered_rules()
    for name, value in DEFAULTS.items():
        head = name.rsplit(".", 1)[0]
        assert head in rules or head in CATEGORIES, name
        assert math.isfinite(value) and value >= 0


def test_grade_reads_the_levels_a_rule_defines() -> None:
    assert grade(0.1, "dataloader.stall", {}) == "warning"
    assert grade(0.1, "dataloader.stall", {"dataloader.stall.warning": 0.2}) == "info"
    assert grade(0.3, "launch_bound.small_kernels", {}) == "warning"  # defines no info level
    assert grade(0.29, "launch_bound.small_kernels", {}) is None
    assert get({"gc.pauses.info": 0.5}, "gc.pauses.info") == 0.5


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dataloader.stall.warn": 0.2}, "unknown threshold 'dataloader.stall.warn'.*warning"),
        ({"gc.pause.info": 1.0}, "unknown threshold 'gc.pause.info'; see docs/rules.md"),
        ({"gc.pauses.info": -1.0}, "finite and >= 0"),
        ({"gc.pauses.info": float("nan")}, "finite and >= 0"),
        ({"gc.pauses.info": "high"}, "must be a number"),
    ],
)
def test_bad_overrides_are_rejected(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_overrides(overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        StepRecorder(thresholds=overrides, clock=FakeClock())  # type: ignore[arg-type]


def test_disabled_names_must_exist() -> None:
    check_disabled(["gc", "dataloader.stall"])
    with pytest.raises(ValueError, match=r"'dataloader\.stal' is neither a rule id nor a category"):
        StepRecorder(disabled_rules=["dataloader.stal"], clock=FakeClock())


def test_disable_by_id_or_category_and_override() -> None:
    stats = window(phases={"data": 0.5, "optimizer": 0.4})
    ids = lambda **kw: [r.rule for r in evaluate(stats, context(), **kw)]  # noqa: E731
    assert ids() == ["dataloader.stall", "optimizer.dominant"]
    assert ids(disabled=["dataloader"]) == ["optimizer.dominant"]
    assert ids(disabled=["optimizer.dominant"]) == ["dataloader.stall"]
    assert ids(thresholds={"dataloader.stall.info": 0.6, "dataloader.stall.warning": 0.6,
                           "dataloader.stall.critical": 0.6}) == ["optimizer.dominant"]


def test_a_raising_rule_is_reported_and_skipped() -> None:
    errors: list[str] = []
    stats = window(phases={"data": 0.5}, host_rss_bytes=1.0, host_rss_slope_bytes_per_step=1e9,
                   host_rss_r2="not a number")  # type: ignore[arg-type]
    recs = evaluate(stats, context(), on_error=lambda rid, exc: errors.append(rid))
    assert errors == ["memory.host_leak"]
    assert [r.rule for r in recs] == ["dataloader.stall"]


def test_findings_carry_json_evidence() -> None:
    stats = window(phases={"data": 0.5}, gc_pause_s=0.3, gc_collections_per_step=2.0)
    for rec in evaluate(stats, context(loader={"num_workers": 0, "pin_memory": False})):
        assert rec.to_dict()["evidence"] == rec.evidence
        assert isinstance(Finding(severity="info", message="m").evidence, dict)


def test_docs_list_every_rule_and_threshold() -> None:
    text = DOCS.read_text()
    for rule_id in registered_rules():
        assert f"`{rule_id}`" in text, rule_id
    for name in DEFAULTS:
        assert f"`{name}`" in text, name


def test_custom_rules_may_read_their_own_thresholds() -> None:
    validate_overrides({"fwd_s": 1.0, "myteam.slow_io.limit_s": 0.5})


def _everything_but(need: str) -> tuple[object, object]:
    """A window and context with every figure a rule can need, except ``need``: alarming values
    (half the GPU idle, memory nearly full, recompiling, throttled, a leak, eight ranks)."""
    extra = {key: 50.0 for key in EXTRA_KEYS if key != need}
    fields = {
        "host_rss_slope_bytes_per_step": 2**24, "host_rss_r2": 1.0, "host_rss_bytes": 2**33,
        "cuda_allocated_slope_bytes_per_step": 2**24, "cuda_allocated_bytes": 2**30,
        "cuda_peak_allocated_bytes": 79 * 2**30, "cuda_total_bytes": 80 * 2**30,
        "cuda_alloc_retries": 50, "recompiles": 40, "graph_breaks": 30, "compile_s": 5.0,
    }
    fields = {k: v for k, v in fields.items() if k != need}
    facts = {"device_type": "cuda", "cuda_capability": (9, 0), "world_size": 8,
             "host_memory_bytes": 2**34, "float32_matmul_precision": "highest",
             "autocast_seen": False}
    if need == "cuda":
        facts.update(device_type="cpu", cuda_capability=None)
    if need == "distributed":
        facts["world_size"] = 1
    stats = window(phases={"data": 0.3, "forward": 0.2, "backward": 0.2, "optimizer": 0.2},
                   extra=extra, **fields)
    return stats, context(**facts)


def test_a_rule_that_needs_a_figure_never_fires_without_it() -> None:
    """``needs`` lets evaluate() skip a rule without calling it: sound only if the rule itself
    returns nothing on such a window, whatever else the window holds."""
    needing = [r for r in registered_rules().values() if r.needs is not None]
    assert len(needing) >= 10
    for r in needing:
        stats, ctx = _everything_but(r.needs)
        assert r.fn(stats, ctx, {}) is None, r.id
        with_it, ctx_with = _everything_but("nothing")
        assert r.needs in rules_module._present(with_it, ctx_with), r.id


def test_a_rule_is_skipped_on_windows_without_what_it_needs() -> None:
    calls: list[int | None] = []

    @rule("recompilation.test_needs_breaks", category="recompilation", needs="graph_breaks")
    def _breaks(stats, ctx, th):
        calls.append(stats.graph_breaks)
        return Finding(severity="info", message="breaks", evidence={})

    try:
        others = [r for r in registered_rules() if r != "recompilation.test_needs_breaks"]
        assert evaluate(window(), context(), disabled=others) == []
        assert calls == []
        assert len(evaluate(window(graph_breaks=0), context(), disabled=others)) == 1
        assert calls == [0]
    finally:
        del rules_module._REGISTRY["recompilation.test_needs_breaks"]
    with pytest.raises(ValueError, match="needs 'graph_break', which is not"):
        rule("recompilation.test_typo", category="recompilation", needs="graph_break")
