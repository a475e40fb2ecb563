"""Results a user reads: :class:`Recommendation` (one finding) and :class:`Report` (a whole run).

Both are frozen value objects. ``to_dict()`` returns only JSON types, and ``Report.__str__`` is the
only place that formats figures for people.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from perfcallback._record import field, record

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 1, "warning": 2, "critical": 3}
CATEGORIES: tuple[str, ...] = (
    "dataloader",
    "host_sync",
    "launch_bound",
    "precision",
    "memory",
    "communication",
    "straggler",
    "h2d_copy",
    "optimizer",
    "step_variance",
    "gc",
    "recompilation",
    "device",
    "host",
)
PHASES: tuple[str, ...] = ("data", "forward", "backward", "optimizer", "other")


@record
class Recommendation:
    """One diagnosis: what is wrong, the measured evidence, and the concrete fix.

    Attributes:
        rule: Stable id, ``category.snake_case`` (e.g. ``"dataloader.stall"``).
        category: One of :data:`CATEGORIES`.
        severity: ``"info"``, ``"warning"`` or ``"critical"``, graded by the measured magnitude.
        message: What is wrong and what to change (API, flag, value).
        evidence: The measured figures the finding rests on (JSON types only).
        est_gain: Estimated share of step time saved by the fix (0..1), or ``None`` if unknown.

    Example::

        >>> r = Recommendation(rule="gc.pauses", category="gc", severity="info",
        ...                    message="Call gc.freeze() after setup.", evidence={"gc_pct": 3.0})
        >>> r.to_dict()["rule"]
        'gc.pauses'
    """

    rule: str
    category: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    est_gain: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(
                f"severity must be one of info/warning/critical, got {self.severity!r}"
            )
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "message": self.message,
            "evidence": _jsonable(self.evidence),
            "est_gain": _finite_or_none(self.est_gain),
        }

    def one_line(self) -> str:
        """Compact form for terminals: ``[warning] dataloader.stall: <message>``."""
        return f"[{self.severity}] {self.rule}: {self.message}"


def sort_recommendations(recs: list[Recommendation]) -> list[Recommendation]:
    """Most severe first; within a severity, the largest estimated gain first."""
    return sorted(recs, key=lambda r: (-SEVERITY_RANK[r.severity], -(r.est_gain or 0.0), r.rule))


@record
class Report:
    """Everything measured over a run (or over the steps seen so far).

    Attributes:
        steps: Measured steps (warm-up steps excluded).
        warmup_steps: Leading steps left out of every figure.
        breakdown: Mean seconds per step for ``data``, ``forward``, ``backward``, ``optimizer``,
            ``other`` and ``step`` (wall time of a whole step including its data wait). The five
            phases add up to ``step``.
        device_breakdown: On CUDA, the same phases measured with CUDA events (device-side view),
            plus ``step``; ``None`` on CPU or before any event resolved.
        step_percentiles_s: ``p50``/``p90``/``p99``/``max`` step time over the recent window.
        throughput: ``steps_per_s`` and, when the batch size can be read, ``samples_per_s``.
        memory: Host RSS (``host_rss_bytes``, ``host_rss_slope_bytes_per_step``) and, on CUDA,
            ``cuda_allocated_bytes``, ``cuda_reserved_bytes``, ``cuda_peak_allocated_bytes``,
            ``cuda_alloc_retries``.
        gc: ``collections_per_step``, ``pause_s_per_step`` and per-generation counts.
        recommendations: Active findings, most severe first.
        resolved: Findings that fired earlier in the run and no longer hold.
        disabled: Components switched off after an internal error (fail-open), with the reason.
        validation: Validation run during training, timed apart from the steps: ``runs``,
            ``total_s``, ``mean_s``; empty when none ran.
        profiled_steps: Steps run under the profiler, left out of every figure above.
        communication: Under torch.distributed: ``exposed_s``, the mean wait per step for
            gradient synchronisation at the end of backward (part of ``backward``), and
            ``exposed_share`` of the step; under DDP also what DDP's runtime logging measured on
            its sampled iterations: ``ddp_comm_s`` (all-reduce time per backward),
            ``ddp_overlap_s`` (the part overlapped by backward compute) and
            ``ddp_backward_compute_s``. Empty in one process.
        steps_run: Steps run, warm-up and profiled steps included.
        unmeasured: Phases nothing timed (no ``optimizer=`` given, no ``wrap_loader``, ...): their
            ``breakdown`` value is 0 because it was not measured, and their time is in ``other``.
        findings_window: ``first_step``/``last_step`` of the window the recommendations were last
            evaluated on: their figures are that window's, the breakdown is the whole run's.
        ranks: On rank zero of a distributed run, every rank's figures keyed by the rank as a
            string: ``breakdown`` (the same keys as :attr:`breakdown`, whole run),
            ``comm_exposed_s``, its latest ``window``, ``finished`` and ``missing``; plus
            ``"straggler"`` with the latest comparison. Empty elsewhere.
        flops_per_step: Model FLOPs of one optimizer step on this rank (counted once with
            ``FlopCounterMode``, or given as ``flops_per_step=``); ``None`` when not counted.
        mfu: Model FLOPs utilisation over the measured steps: achieved FLOP/s over the device's
            dense peak for the compute dtype (0..1); ``None`` where the peak is unknown (CPU,
            GPUs not in the table). Achieved TFLOP/s are in ``throughput["tflops"]``.
        gpu: NVML telemetry of the latest window (``nvml_*`` figures: utilisation, memory, power,
            clocks, temperature, throttle shares); empty without NVML.
    """

    steps: int
    warmup_steps: int
    breakdown: dict[str, float]
    device_breakdown: dict[str, float] | None = None
    step_percentiles_s: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    gc: dict[str, float] = field(default_factory=dict)
    recommendations: list[Recommendation] = field(default_factory=list)
    resolved: list[Recommendation] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    profiled_steps: int = 0
    communication: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps_run: int = 0
    unmeasured: tuple[str, ...] = ()
    findings_window: dict[str, int] = field(default_factory=dict)
    flops_per_step: float | None = None
    mfu: float | None = None
    gpu: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the content of ``perf_report.json``)."""
        return {
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "breakdown": _jsonable(self.breakdown),
            "device_breakdown": _jsonable(self.device_breakdown),
            "step_percentiles_s": _jsonable(self.step_percentiles_s),
            "throughput": _jsonable(self.throughput),
            "memory": _jsonable(self.memory),
            "gc": _jsonable(self.gc),
            "recommendations": [r.to_dict() for r in self.recommendations],
            "resolved": [r.to_dict() for r in self.resolved],
            "disabled": dict(self.disabled),
            "validation": _jsonable(self.validation),
            "profiled_steps": self.profiled_steps,
            "communication": _jsonable(self.communication),
            "ranks": _jsonable(self.ranks),
            "steps_run": self.steps_run,
            "unmeasured_phases": list(self.unmeasured),
            "findings_window": dict(self.findings_window),
            "flops_per_step": _finite_or_none(self.flops_per_step),
            "mfu": _finite_or_none(self.mfu),
            "gpu": _jsonable(self.gpu),
        }

    def __str__(self) -> str:
        step = self.breakdown.get("step", 0.0)
        lines = [f"perfcallback report: {self.steps} steps measured ({self.warmup_steps} warm-up)"]
        if self.steps == 0:
            lines.append(_nothing_measured(self.steps_run, self.warmup_steps, self.profiled_steps))
        else:
            lines.append(f"  {'phase':<10} {'ms/step':>10} {'share':>7}   (mean over all "
                         f"{self.steps} measured steps)")
            for phase in (*PHASES, "step"):
                secs = self.breakdown.get(phase, 0.0)
                share = secs / step if step > 0 else 0.0
                if phase in self.unmeasured:
                    lines.append(f"  {phase:<10} {'-':>10} {'-':>7}   not measured: "
                                 f"{_UNMEASURED_HINT[phase]}")
                else:
                    lines.append(f"  {phase:<10} {secs * 1e3:>10.3f} {share:>7.1%}")
        if self.device_breakdown:
            dev = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in self.device_breakdown.items())
            lines.append(f"  device (CUDA events, ms/step): {dev}")
        if self.step_percentiles_s:
            pct = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in self.step_percentiles_s.items())
            lines.append(f"  step time (ms): {pct}")
        if self.throughput:
            lines.append(
                "  throughput: " + ", ".join(f"{k} {v:.1f}" for k, v in self.throughput.items())
            )
        if "host_rss_bytes" in self.memory:
            lines.append(
                f"  host RSS {self.memory['host_rss_bytes'] / 2**20:.1f} MiB, trend "
                f"{self.memory.get('host_rss_slope_bytes_per_step', 0.0) / 2**10:+.1f} KiB/step"
            )
        if "cuda_allocated_bytes" in self.memory:
            lines.append(
                f"  CUDA allocated {self.memory['cuda_allocated_bytes'] / 2**20:.1f} MiB, reserved "
                f"{self.memory.get('cuda_reserved_bytes', 0.0) / 2**20:.1f} MiB, peak "
                f"{self.memory.get('cuda_peak_allocated_bytes', 0.0) / 2**20:.1f} MiB"
            )
        if self.gc:
            lines.append(
                f"  gc: {self.gc.get('collections_per_step', 0.0):.2f} collections/step, "
                f"{self.gc.get('pause_s_per_step', 0.0) * 1e3:.3f} ms/step paused"
            )
        if self.communication:
            comm = self.communication
            lines.append(
                f"  gradient sync wait (in backward): {comm.get('exposed_s', 0.0) * 1e3:.3f} "
                f"ms/step, {comm.get('exposed_share', 0.0):.1%} of the step"
            )
            if "ddp_comm_s" in comm:
                lines.append(
                    f"  DDP's own timing (sampled): all-reduce {comm['ddp_comm_s'] * 1e3:.3f} ms "
                    f"per backward, {comm.get('ddp_overlap_s', 0.0) * 1e3:.3f} ms of it "
                    "overlapped with backward compute"
                )
        lines.extend(_ranks_table(self.ranks))
        window = self.findings_window
        span = (f" (judged on the latest window, steps {window['first_step']}-"
                f"{window['last_step']}; its figures can differ from the whole-run table)"
                if window and self.steps > window["last_step"] - window["first_step"] + 1 else "")
        if self.recommendations:
            lines.append(f"recommendations{span}:")
            lines.extend(f"  {r.one_line()}" for r in self.recommendations)
        else:
            lines.append("recommendations: none")
        if self.resolved:
            lines.append("resolved during the run:")
            lines.extend(f"  {r.one_line()}" for r in self.resolved)
        if self.validation:
            lines.append(
                f"  validation (not in the steps): {self.validation.get('runs', 0):.0f} runs, "
                f"{self.validation.get('mean_s', 0.0) * 1e3:.1f} ms each"
            )
        if self.flops_per_step:
            tflops = self.throughput.get("tflops")
            achieved = f", {tflops:.2f} TFLOP/s" if tflops is not None else ""
            mfu = f", MFU {self.mfu:.1%}" if self.mfu is not None else ", MFU unknown (no peak)"
            lines.append(f"  model FLOPs: {self.flops_per_step:.3g}/step{achieved}{mfu}")
        if self.gpu:
            util, temp = self.gpu.get("nvml_sm_util_pct"), self.gpu.get("nvml_temp_c")
            parts = [f"utilisation {util:.0f}%" if util is not None else "",
                     f"{temp:.0f} C" if temp is not None else ""]
            lines.append("  GPU (NVML): " + ", ".join(p for p in parts if p))
        if self.profiled_steps:
            lines.append(f"  {self.profiled_steps} profiled steps left out of the figures")
        for component, reason in self.disabled.items():
            lines.append(f"  (switched off after an internal error: {component}: {reason})")
        return "\n".join(lines)


_UNMEASURED_HINT = {
    "data": "iterate over perf.wrap_loader(loader) to time batch fetches; the wait is in other",
    "forward": "pass model= to time forward; its time is in other",
    "backward": "pass model= (backward is timed from its output); its time is in other",
    "optimizer": "pass optimizer= to time optimizer.step(); its time is in other",
}


def _nothing_measured(steps_run: int, warmup_steps: int, profiled_steps: int) -> str:
    if steps_run == 0:
        return "  no steps measured yet"
    if profiled_steps and steps_run <= warmup_steps + profiled_steps:
        return (f"  all {steps_run} steps run were warm-up or profiled: lower warmup_steps "
                f"(now {warmup_steps}) or profile later to measure a run this short")
    return (f"  all {steps_run} steps run were warm-up (warmup_steps={warmup_steps}): lower "
            "warmup_steps to measure a run this short")


def _ranks_table(ranks: dict[str, dict[str, Any]]) -> list[str]:
    """The per-rank table of ``str(report)`` (whole-run ms/step per phase)."""
    rows = {k: v for k, v in ranks.items() if k.isdigit()}
    if not rows:
        return []
    lines = ["  per rank (ms/step, whole run):",
             "  rank " + "".join(f"{p:>10}" for p in (*PHASES, "step")) + f"{'sync wait':>11}"]
    for key in sorted(rows, key=int):
        entry = rows[key]
        if "breakdown" not in entry:
            lines.append(f"  {key:>4}  missing: never heard from")
            continue
        b = entry["breakdown"]
        cells = "".join(f"{b.get(p, 0.0) * 1e3:>10.3f}" for p in (*PHASES, "step"))
        note = " (missing)" if entry.get("missing") else ""
        lines.append(f"  {key:>4} {cells}{entry.get('comm_exposed_s', 0.0) * 1e3:>11.3f}{note}")
    straggler = ranks.get("straggler") or {}
    if straggler.get("slowest_rank") is not None:
        lines.append(
            f"  slowest: rank {straggler['slowest_rank']} in {straggler.get('slow_phase')} "
            f"(+{straggler.get('spread_s', 0.0) * 1e3:.2f} ms of work per step, "
            f"slowest in {straggler.get('slowest_count', 0)} of the last "
            f"{straggler.get('rounds', 0)} windows)"
        )
    return lines


def _finite_or_none(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _jsonable(value: Any) -> Any:
    """Convert nested evidence to JSON types (tuples to lists, non-finite floats to None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _finite_or_none(value)
    if hasattr(value, "item"):  # numpy / torch scalar
        return _jsonable(value.item())
    return str(value)
