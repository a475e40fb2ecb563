"""Precision rules: fp32 matmuls on a GPU whose tensor cores would run them in TF32 or bf16.

Signals, all facts of a CUDA run (``RunContext``): the device's compute capability, the global
``torch.get_float32_matmul_precision()`` (refreshed every window), whether autocast was active in a
sampled forward pass (the recorder samples it once per window), and the dtype of most parameters.
The share of the step in forward and backward grades the finding. On CPU the rule never fires.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.report import Severity
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get
from perfcallback.stats import WindowStats

# Share of forward+backward time the fix saves. An A100 runs dense matmuls at 19.5 TFLOP/s in fp32,
# 156 in TF32 and 312 in bf16; real models also spend time outside matmuls, so assume half.
_FIX_SAVES = 0.5


def _compute_share(stats: WindowStats) -> float:
    """Forward+backward share of the step, device-side when CUDA events resolved."""
    if stats.device_phase_s and stats.device_step_s:
        busy = stats.device_phase_s.get("forward", 0.0) + stats.device_phase_s.get("backward", 0.0)
        return busy / stats.device_step_s
    return stats.share("forward") + stats.share("backward")


@rule("precision.fp32_matmul", category="precision", needs="cuda")
def fp32_matmul(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """Full-fp32 matmuls where TF32 or bf16 autocast would use tensor cores."""
    if ctx.device_type != "cuda" or ctx.cuda_capability is None:
        return None
    major, minor = ctx.cuda_capability
    if major + minor / 10 < get(th, "precision.fp32_matmul.min_capability"):
        return None
    if (ctx.float32_matmul_precision != "highest" or ctx.autocast_seen is not False
            or ctx.param_dtype != "float32"):
        return None
    share = _compute_share(stats)
    severity: Severity = (
        "warning" if share >= get(th, "precision.fp32_matmul.compute_share") else "info"
    )
    message = (
        f"Matmuls run in full fp32 on a GPU with tensor cores (sm_{major}{minor}): parameters are "
        "float32, autocast is off and torch.get_float32_matmul_precision() is 'highest'; forward "
        f"and backward are {share:.0%} of the step. Wrap forward and loss in "
        "torch.autocast('cuda', dtype=torch.bfloat16), or at least call "
        "torch.set_float32_matmul_precision('high') (TF32) at start-up."
    )
    evidence = {
        "cuda_capability": f"{major}.{minor}",
        "float32_matmul_precision": ctx.float32_matmul_precision,
        "autocast": False,
        "param_dtype": ctx.param_dtype,
        "compute_share": share,
    }
    return Finding(
        severity=severity, message=message, evidence=evidence, est_gain=share * _FIX_SAVES
    )
