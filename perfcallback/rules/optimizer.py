"""Optimizer rules: ``optimizer.step()`` taking a large share of every step.

The signal is the ``optimizer`` phase, timed by the optimizer's step pre/post hooks. The fix depends
on what the optimizer in use supports (``RunContext.optimizer``, from ``optimizer.defaults``):
``fused=True`` (one kernel for all parameters), else ``foreach=True`` (one launch per group of
tensors instead of per tensor), else structural changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

# Share of the optimizer phase a fused/foreach implementation saves. Conservative: on this project's
# CPU test (Adam over a 3.2M-parameter embedding) fused=True cut optimizer.step() from 15.6 ms to
# 1.6 ms; PyTorch's own benchmarks show 2-5x for foreach over the per-tensor loop on CUDA.
_FIX_SAVES = 0.5


@rule("optimizer.dominant", category="optimizer")
def optimizer_dominant(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """``optimizer.step()`` is a large share of the step."""
    opt_s = stats.phase_s.get("optimizer", 0.0)
    if opt_s < get(th, "optimizer.dominant.min_s"):
        return None
    share = stats.share("optimizer")
    severity = grade(share, "optimizer.dominant", th)
    if severity is None:
        return None
    facts = ctx.optimizer or {}
    evidence: dict[str, Any] = {
        "optimizer_s": opt_s, "step_s": stats.step_s, "optimizer_share": share
    }
    for key in ("class", "foreach", "fused", "n_params", "n_tensors"):
        if key in facts:
            evidence[key] = facts[key]
    ds = ctx.extra.get("deepspeed")
    if ds is not None:  # the update runs inside engine.step(): the fix is a DeepSpeed setting
        evidence.update({k: ds.get(k) for k in ("zero_stage", "offload_optimizer")})
        fix, gain = _deepspeed_fix(ds, facts, ctx.world_size, share)
        message = f"engine.step() takes {share:.0%} of step time ({opt_s * 1e3:.1f} ms/step). {fix}"
        return Finding(severity=severity, message=message, evidence=evidence, est_gain=gain)
    fix, gain = _fix(facts, ctx.device_type, share)
    message = f"optimizer.step() takes {share:.0%} of step time ({opt_s * 1e3:.1f} ms/step). {fix}"
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=gain)


def _fix(facts: Mapping[str, Any], device_type: str, share: float) -> tuple[str, float | None]:
    """The change to suggest and its estimated gain, given what the optimizer supports."""
    name = facts.get("class", "the optimizer")
    fused, foreach = facts.get("fused"), facts.get("foreach")
    # foreach=None means "default": PyTorch picks foreach for CUDA tensors, the loop on CPU.
    foreach_on = foreach is True or (foreach is None and device_type == "cuda")
    if facts.get("supports_fused") and not fused:
        return (
            f"Construct {name}(..., fused=True) (now fused={fused}, foreach={foreach}): one kernel "
            "updates every parameter instead of a Python loop over tensors.",
            share * _FIX_SAVES,
        )
    if facts.get("supports_foreach") and not foreach_on and not fused:
        return (
            f"Construct {name}(..., foreach=True) (now foreach={foreach}): parameters are updated "
            "in batched multi-tensor kernels instead of one tensor at a time.",
            share * _FIX_SAVES,
        )
    if not facts:
        return (
            "Pass optimizer= to the monitor so the fix can be tailored; use fused=True or "
            "foreach=True where your optimizer supports it (Adam, AdamW, SGD, Adagrad, ...).",
            None,
        )
    return (
        f"{name} already uses its fastest update path (fused={fused}, foreach={foreach}): cut the "
        "work per step instead: a larger batch (or gradient accumulation) to step less often, "
        "sparse=True embeddings with SparseAdam, or shard the optimizer state "
        "(ZeroRedundancyOptimizer, FSDP) across ranks.",
        None,
    )


def _deepspeed_fix(
    ds: Mapping[str, Any], facts: Mapping[str, Any], world_size: int, share: float
) -> tuple[str, float | None]:
    """The DeepSpeed config change to suggest, from the engine's settings (``config_facts``)."""
    stage, offload = ds.get("zero_stage"), ds.get("offload_optimizer")
    accumulation = ds.get("gradient_accumulation_steps")
    name = facts.get("class", "the client optimizer")
    if offload:
        return (
            f"ZeRO offloads the optimizer to {offload} (zero_optimization.offload_optimizer): the "
            "update runs on the host. Let DeepSpeed build DeepSpeedCPUAdam (config \"optimizer\": "
            "{\"type\": \"AdamW\"} instead of a torch optimizer), or drop the offload if device "
            "memory allows.",
            share * _FIX_SAVES,
        )
    if world_size > 1 and not stage:
        return (
            f"Shard the update across the {world_size} ranks: set zero_optimization.stage=1 (now "
            f"{stage}), so each rank updates 1/{world_size} of the parameters and all-gathers the "
            "rest.",
            share * (1 - 1 / world_size),
        )
    if facts.get("supports_fused") and not facts.get("fused"):
        return (
            f"Let DeepSpeed build its fused optimizer: pass no optimizer= to deepspeed.initialize "
            f"and set \"optimizer\": {{\"type\": \"AdamW\", ...}} in the config (FusedAdam on "
            f"GPU, DeepSpeedCPUAdam on CPU), or construct {name}(..., fused=True).",
            share * _FIX_SAVES,
        )
    return (
        f"Step less often: raise gradient_accumulation_steps (now {accumulation}) or "
        "train_micro_batch_size_per_gpu, so one update serves more samples.",
        None,
    )
