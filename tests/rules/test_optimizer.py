"""optimizer.dominant on hand-built windows: grading and foreach/fused only where they apply."""

from __future__ import annotations

from typing import Any

import pytest

from rules._windows import context, run, window

RULE = "optimizer.dominant"


def adam(**kw: Any) -> dict[str, Any]:
    facts = {"class": "Adam", "foreach": None, "fused": None, "supports_foreach": True,
             "supports_fused": True, "n_params": 3_200_000, "n_tensors": 3}
    return facts | kw


@pytest.mark.parametrize(
    ("opt_s", "severity"),
    [(0.2, None), (0.25, "info"), (0.34, "info"), (0.35, "warning"), (0.6, "critical"),
     (0.9, "critical")],
)
def test_graded_by_optimizer_share(opt_s: float, severity: str | None) -> None:
    rec = run(RULE, window(phases={"optimizer": opt_s}), context(optimizer=adam()))
    assert (rec.severity if rec else None) == severity
    if rec is not None:
        assert rec.category == "optimizer"
        assert rec.evidence["optimizer_share"] == pytest.approx(opt_s)


def test_suggests_fused_when_supported_and_off() -> None:
    rec = run(RULE, window(phases={"optimizer": 0.7}), context(optimizer=adam()))
    assert rec is not None
    assert "Adam(..., fused=True)" in rec.message and "now fused=None" in rec.message
    assert rec.est_gain == pytest.approx(0.35)


def test_suggests_foreach_when_fused_is_not_supported() -> None:
    facts = adam(**{"class": "RMSprop", "supports_fused": False})
    rec = run(RULE, window(phases={"optimizer": 0.7}), context(optimizer=facts))
    assert rec is not None
    assert "RMSprop(..., foreach=True)" in rec.message and "fused=True" not in rec.message


def test_foreach_default_counts_as_on_for_cuda() -> None:
    facts = adam(**{"class": "RMSprop", "supports_fused": False})
    rec = run(RULE, window(phases={"optimizer": 0.7}),
              context(optimizer=facts, device_type="cuda"))
    assert rec is not None
    assert "(..., foreach=True)" not in rec.message and "fastest update path" in rec.message


@pytest.mark.parametrize("facts", [adam(fused=True), {"class": "LBFGS", "foreach": None,
                                   "fused": None, "supports_foreach": False,
                                   "supports_fused": False}])
def test_no_foreach_or_fused_when_on_or_unsupported(facts: dict[str, Any]) -> None:
    rec = run(RULE, window(phases={"optimizer": 0.7}), context(optimizer=facts))
    assert rec is not None
    assert "(..., fused=True)" not in rec.message and "(..., foreach=True)" not in rec.message
    assert "larger batch" in rec.message and rec.est_gain is None


def test_unknown_optimizer_asks_for_it() -> None:
    rec = run(RULE, window(phases={"optimizer": 0.7}))
    assert rec is not None and "optimizer=" in rec.message


def test_silent_below_absolute_floor() -> None:
    assert run(RULE, window(step_s=1e-3, phases={"optimizer": 4e-4})) is None


def deepspeed_facts(**kw: Any) -> dict[str, Any]:
    facts = {"zero_stage": 2, "offload_optimizer": None, "gradient_accumulation_steps": 1}
    return facts | kw


@pytest.mark.parametrize(
    ("ds", "world_size", "opt", "expected"),
    [
        (deepspeed_facts(offload_optimizer="cpu"), 1, adam(),
         "offloads the optimizer to cpu (zero_optimization.offload_optimizer)"),
        (deepspeed_facts(zero_stage=0), 4, adam(), "zero_optimization.stage=1 (now 0)"),
        (deepspeed_facts(), 4, adam(), "pass no optimizer= to deepspeed.initialize"),
        (deepspeed_facts(), 1, adam(fused=True), "raise gradient_accumulation_steps (now 1)"),
    ],
)
def test_deepspeed_fix_names_the_config_setting(
    ds: dict[str, Any], world_size: int, opt: dict[str, Any], expected: str
) -> None:
    ctx = context(optimizer=opt, world_size=world_size, extra={"deepspeed": ds})
    rec = run(RULE, window(phases={"optimizer": 0.7}), ctx)
    assert rec is not None
    assert rec.message.startswith("engine.step() takes 70%") and expected in rec.message
    assert rec.evidence["zero_stage"] == ds["zero_stage"]


def test_deepspeed_stays_silent_when_the_update_is_small() -> None:
    ctx = context(optimizer=adam(), extra={"deepspeed": deepspeed_facts()})
    assert run(RULE, window(phases={"optimizer": 0.1}), ctx) is None
