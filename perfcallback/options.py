"""SessionOptions: every user-facing option of an adapter that the engine acts on, validated once.

Frozen, so an adapter can hand the same object to every session it builds (one per ``fit``), and
validated in ``__post_init__``, so misuse raises where the adapter is built, not mid-training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from perfcallback._optional import require
from perfcallback._record import field, fields, record
from perfcallback.clock import Clock, host_clock
from perfcallback.profiling import ProfileOptions
from perfcallback.report import Recommendation
from perfcallback.rules import check_disabled
from perfcallback.rules.thresholds import validate_overrides
from perfcallback.sinks import Sink


@record
class SessionOptions:
    """Every user-facing option of an adapter that the engine acts on, validated once.

    Args:
        logdir: Directory for the report file, TensorBoard output and traces (an adapter may
            choose another when this is ``None``, e.g. a Lightning logger's directory).
        warmup_steps: Leading steps left out of the figures.
        window_steps: Steps per window; rules and sinks run once per window. ``None``: at least
            25 steps and 0.25 s, at most 250 (25 under torch.distributed).
        buffer_steps: Capacity of the ring buffer of step records (bounds memory).
        fire_after: Consecutive windows a rule must hold before its finding is emitted.
        clear_after: Consecutive windows a rule must be absent before its finding is resolved.
        on_recommendation: Called with each new or updated :class:`Recommendation`.
        disabled_rules: Rule ids or categories never evaluated.
        thresholds: Rule threshold overrides by name (docs/rules.md).
        log_recommendations: Emit findings on the ``perfcallback`` logger as they appear.
        sinks: Extra sinks.
        tensorboard: TensorBoard output: ``True`` (a missing extra is an error), ``False``, or
            ``None`` (when there is somewhere to write, with a warning if the extra is missing).
        profile: ``torch.profiler`` capture: ``True``, ``False``, a :class:`ProfileOptions`, or
            ``None`` (the default options when there is somewhere to write).
        all_ranks: Under torch.distributed, also log, capture and write files off rank zero.
        cuda: Time the device side with CUDA events; ``None``: when the run is on CUDA.
        clock: Host clock in seconds; injectable for exact tests.
        nvml: Sample GPU telemetry with NVML on a background thread; ``None``: on CUDA runs.
        nvml_interval_s: Seconds between NVML samples (0.1 to 1).
        count_flops: Count the model FLOPs of one (unmeasured) step with FlopCounterMode, for
            ``flops_per_step``, TFLOP/s and MFU.
        flops_per_step: The model FLOPs of one optimizer step on this rank, if known: nothing is
            counted.
        rank_timeout_s: Under torch.distributed, a rank not heard from for this long is reported
            missing (see :mod:`perfcallback.distributed`).

    Raises:
        ValueError: a number is out of range, or a rule name or threshold is unknown.
        TypeError: an argument has the wrong type.
        MissingExtraError: ``tensorboard=True`` and the ``tensorboard`` extra is not installed.
    """

    logdir: Path | None = None
    warmup_steps: int = 5
    window_steps: int | None = None
    buffer_steps: int = 1024
    fire_after: int = 2
    clear_after: int = 2
    on_recommendation: Callable[[Recommendation], object] | None = None
    disabled_rules: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    log_recommendations: bool = True
    sinks: tuple[Sink, ...] = ()
    tensorboard: bool | None = None
    profile: bool | ProfileOptions | None = None
    all_ranks: bool = False
    cuda: bool | None = None
    clock: Clock = host_clock
    rank_timeout_s: float = 60.0
    nvml: bool | None = None
    nvml_interval_s: float = 0.2
    count_flops: bool = True
    flops_per_step: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.logdir is not None:
            if not isinstance(self.logdir, (str, os.PathLike)):
                raise TypeError(f"logdir must be a path or None, got {self.logdir!r}")
            set_(self, "logdir", Path(self.logdir))
        for name, low in (("warmup_steps", 0), ("window_steps", 1), ("buffer_steps", 1),
                          ("fire_after", 1), ("clear_after", 1)):
            value = getattr(self, name)
            if value is None and name == "window_steps":
                continue  # automatic windows
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if self.window_steps is not None and self.buffer_steps < self.window_steps:
            raise ValueError(
                f"buffer_steps ({self.buffer_steps}) must be >= window_steps ({self.window_steps})"
            )
        if self.on_recommendation is not None and not callable(self.on_recommendation):
            raise TypeError("on_recommendation must be callable")
        if isinstance(self.disabled_rules, str):
            raise TypeError(
                f"disabled_rules must be a sequence of names, got the string "
                f"{self.disabled_rules!r}; write disabled_rules=[{self.disabled_rules!r}]"
            )
        set_(self, "disabled_rules", tuple(self.disabled_rules))
        check_disabled(self.disabled_rules)
        set_(self, "thresholds", dict(self.thresholds or {}))
        validate_overrides(self.thresholds)
        set_(self, "sinks", tuple(self.sinks))
        for sink in self.sinks:
            if not isinstance(sink, Sink):
                raise TypeError(f"sinks must be perfcallback Sink objects, got {sink!r}")
        for name in ("tensorboard", "cuda"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool or None, got {value!r}")
        if self.tensorboard:  # asked for: a missing extra fails now, with the install hint
            require("torch.utils.tensorboard", extra="tensorboard")
        if self.profile is not None and not isinstance(self.profile, (bool, ProfileOptions)):
            raise TypeError(
                f"profile must be a bool or ProfileOptions, got {type(self.profile).__name__}"
            )
        if isinstance(self.rank_timeout_s, bool) or not (
            isinstance(self.rank_timeout_s, (int, float)) and self.rank_timeout_s > 0
        ):
            raise ValueError(f"rank_timeout_s must be a number > 0, got {self.rank_timeout_s!r}")
        _check_telemetry_options(self)
        if not callable(self.clock):
            raise TypeError(f"clock must be a callable returning seconds, got {self.clock!r}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SessionOptions:
        """Build from keyword arguments; an unknown name raises ``TypeError`` listing the known."""
        known = set(fields(cls))
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown perfcallback option(s) {', '.join(map(repr, unknown))}; "
                f"known options are {', '.join(sorted(known))}"
            )
        return cls(**kwargs)


def _check_telemetry_options(options: SessionOptions) -> None:
    """Validate the telemetry options (NVML, FLOP count)."""
    for name in ("nvml", "count_flops"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool{' or None' if name == 'nvml' else ''}, "
                            f"got {value!r}")
    interval = options.nvml_interval_s
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            0.1 <= interval <= 1.0):
        raise ValueError(f"nvml_interval_s must be a number in [0.1, 1], got {interval!r}")
    flops = options.flops_per_step
    if flops is not None and (isinstance(flops, bool) or not isinstance(flops, (int, float))
                              or not flops > 0):
        raise ValueError(f"flops_per_step must be a number > 0 or None, got {flops!r}")
