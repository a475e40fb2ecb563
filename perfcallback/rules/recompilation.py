"""Recompilation rules: torch.compile recompiling in steady state, and graph breaks.

The signals come from torch._dynamo's process-wide counters, read by the recorder once per window
(never per step) and only when compile is in use: ``recompiles`` = frames compiled during the
window's measured steps (the first compile happens during warm-up), ``compile_s`` = seconds spent
compiling them, ``graph_breaks`` = graph breaks traced since the monitor started.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.report import Severity
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats


@rule("recompilation.recompiles", category="recompilation", needs="recompiles")
def recompiles(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """torch.compile keeps compiling after warm-up: guards fail on changing inputs."""
    count = stats.recompiles
    if count is None or count < get(th, "recompilation.recompiles.min_count"):
        return None
    # counted since the last snapshot before the window, which may precede it by a few steps
    since = stats.compile_since_step
    steps = stats.last_step - since if since is not None else stats.steps
    total = stats.step_s * max(steps, 1)
    share = min(stats.compile_s / total, 1.0) if stats.compile_s is not None and total else None
    severity: Severity
    if share is None:
        severity = "warning"  # compile time unknown: the count alone is worth a warning
    else:
        severity = grade(share, "recompilation.recompiles", th) or "info"
    cost = f", {stats.compile_s:.2f} s compiling ({share:.0%} of the time)" if share else ""
    message = (
        f"torch.compile recompiled {count} times in {steps} steps{cost}. Inputs change in "
        "ways the compiled code's guards reject, usually shapes: pass dynamic=True (or "
        "torch._dynamo.mark_dynamic(x, dim) on the varying dimension), pad inputs to a few fixed "
        "sizes, or drop_last=True in the DataLoader. Run with TORCH_LOGS=recompiles to see which "
        "guard fails. After torch._dynamo.config.recompile_limit recompiles (8 by default) a "
        "function silently runs uncompiled."
    )
    evidence = {"recompiles": count, "steps": steps, "compile_s": stats.compile_s,
                "compile_share": share}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)


@rule("recompilation.graph_breaks", category="recompilation", needs="graph_breaks")
def graph_breaks(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """The compiled model is split into several graphs by graph breaks."""
    count = stats.graph_breaks
    if count is None:
        return None
    severity = grade(count, "recompilation.graph_breaks", th)
    if severity is None:
        return None
    message = (
        f"torch.compile hit {count} graph break(s): the model runs as several graphs with Python "
        "in between, losing fusion across each break. Find them with TORCH_LOGS=graph_breaks or "
        "torch._dynamo.explain(model)(*inputs); common causes are .item()/.tolist(), print, "
        "data-dependent if statements and unsupported library calls. torch.compile(model, "
        "fullgraph=True) turns the first break into an error."
    )
    return Finding(severity=severity, message=message, evidence={"graph_breaks": count})
