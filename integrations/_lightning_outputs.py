"""Where :class:`~perfcallback.integrations.lightning.PerfCallback`'s results go: the Trainer's
loggers, its TensorBoard run (scalars, recommendations, profiler traces) and the report file.

Design notes:

- **Step axis.** Everything perfcallback writes to the Trainer's loggers, TensorBoard included, is
  placed at the step where Lightning logs the same batch: a window's point sits at the step of its
  last optimizer step's batch, where that batch's ``self.log("loss", ...)`` lands. Lightning logs a
  training batch (and the validation run after it) at the number of optimizer-stepping batches
  *before* it: ``fit_loop.epoch_loop._batches_that_stepped``, read during the batch, which is what
  Lightning's own LearningRateMonitor and DeviceStatsMonitor pass to ``log_metrics``; it equals
  ``trainer.global_step`` as the batch sees it whenever there is one optimizer. The recorder
  numbers steps from 1, so in a fresh run its step ``k`` is plotted at ``k - 1``. The offset is
  re-read at every step, so it holds after a resume, under gradient accumulation, with several
  optimizers (``global_step`` counts each of them), and when the checkpoint has no perfcallback
  state. Trace files keep the recorder's numbering (``ProfilerStep#k``, ``step000000k-...``).
- **No tag written twice.** Window figures go to every logger through ``log_metrics``
  (:class:`LoggerSink`), a TensorBoardLogger included, so each logger applies its own prefix and
  step handling. The :class:`~perfcallback.sinks.tensorboard.TensorBoardSink` on the
  TensorBoardLogger's writer adds only what a generic logger cannot carry: the
  ``perf/recommendations/<category>`` tracks and the Text tab (findings table, captured traces).
  Only when no TensorBoardLogger is attached and ``logdir`` is given does the sink own a writer
  and write the figures itself: a separate run that no logger writes to.
- **Ranks.** Lightning's loggers exist on rank zero only, so TensorBoard output comes from rank
  zero. Traces are captured on rank zero, or on every rank with ``all_ranks=True`` (into shared
  capture directories: the PyTorch Profiler tab's distributed view).
"""

from __future__ import annotations

import importlib
import logging
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from perfcallback._optional import require
from perfcallback.monitor import write_json_atomic
from perfcallback.profiling import ProfileOptions, TraceProfiler, profiler_for
from perfcallback.recorder import StepRecorder
from perfcallback.sinks import LoggingSink, Sink
from perfcallback.sinks.tensorboard import (
    TensorBoardSink,
    tensorboard_sink_or_warn,
    window_scalars,
)
from perfcallback.stats import WindowStats

logger = logging.getLogger("perfcallback")

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


class StepAxis:
    """Maps the recorder's step index to the step Lightning logs that step's batch at."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset = -1  # a fresh run: the k-th step's batch is logged at k - 1

    def mark(self, index: int, trainer: Any) -> None:
        """Step ``index`` (1-based) just began, during its first batch."""
        self._offset = lightning_log_step(trainer) - index

    def __call__(self, index: int) -> int:
        return index + self._offset


def lightning_log_step(trainer: Any) -> int:
    """The step Lightning's loggers use for the batch now running (``trainer.global_step`` where
    the loop's counter is missing)."""
    value = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    return value if isinstance(value, int) else int(trainer.global_step)


class LoggerSink(Sink):
    """Sends window scalars to the Trainer's loggers (``logger.log_metrics``) every N windows.

    Tags are those of :func:`perfcallback.sinks.tensorboard.window_scalars` (``perf/step_ms``,
    ``perf/phase/data_ms``, ...), written at the step Lightning logs the window's last batch at.

    Args:
        trainer: The Trainer whose ``loggers`` receive the scalars (held by weak reference).
        step_of: Maps the recorder's step index to the logged step (a :class:`StepAxis`).
        every_n_windows: Log one window in N, starting with the first.
        extra: Returns more scalars to log with each window (e.g. validation figures).
    """

    def __init__(
        self,
        trainer: Any,
        *,
        step_of: Callable[[int], int],
        every_n_windows: int = 1,
        extra: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        if not isinstance(every_n_windows, int) or every_n_windows < 1:
            raise ValueError(f"every_n_windows must be an int >= 1, got {every_n_windows!r}")
        self._trainer = weakref.ref(trainer)
        self._step_of, self._every, self._extra, self._windows = step_of, every_n_windows, extra, 0

    def on_window(self, stats: WindowStats) -> None:
        self._windows += 1
        trainer = self._trainer()
        # The same windows as TensorBoardSink(every=N): the 1st, the (N+1)th, ...
        if trainer is None or (self._windows - 1) % self._every:
            return
        metrics = dict(window_scalars(stats))  # the same tags as the TensorBoard sink
        if self._extra is not None:
            metrics.update(self._extra())
        step = self._step_of(stats.last_step)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)


def trainer_sinks(
    trainer: Any,
    recorder: Callable[[], StepRecorder],
    step_of: Callable[[int], int],
    every: int,
    log_recommendations: bool,
) -> list[Sink]:
    """Window scalars for the loggers every ``every`` windows (rank zero; ``0``: none), and
    findings on the ``perfcallback`` logger; ``recorder`` returns the recorder once built."""
    sinks: list[Sink] = []
    if every and trainer.is_global_zero:

        def validation_scalars() -> dict[str, float]:
            val = recorder().validation_summary()
            return {
                "perf/validation/runs": val["runs"],
                "perf/validation/mean_ms": val["mean_s"] * 1e3,
            }

        sinks.append(
            LoggerSink(trainer, step_of=step_of, every_n_windows=every, extra=validation_scalars)
        )
    if log_recommendations:
        ensure_console_logging()
        sinks.append(LoggingSink())
    return sinks


def check_output_options(tensorboard: bool | None, profile: bool | ProfileOptions | None) -> None:
    """Validate ``PerfCallback(tensorboard=..., profile=...)`` when the callback is built.

    Raises:
        TypeError: either has the wrong type.
        MissingExtraError: ``tensorboard=True`` and the ``tensorboard`` extra is missing.
    """
    if tensorboard is not None and not isinstance(tensorboard, bool):
        raise TypeError(f"tensorboard must be a bool or None, got {tensorboard!r}")
    if tensorboard:  # asked for: a missing extra fails now, with the install hint
        require("torch.utils.tensorboard", extra="tensorboard")
    if profile is not None and not isinstance(profile, (bool, ProfileOptions)):
        raise TypeError(f"profile must be a bool or ProfileOptions, got {type(profile).__name__}")


class OutputOptions(Protocol):
    """The ``PerfCallback`` arguments that decide its TensorBoard output and trace capture."""

    logdir: Path | None
    tensorboard: bool | None
    profile: bool | ProfileOptions | None
    all_ranks: bool
    log_every_n_windows: int


def attach_tensorboard(
    recorder: StepRecorder,
    trainer: Any,
    options: OutputOptions,
    *,
    report_dir: Path | None,
    step_of: Callable[[int], int],
) -> None:
    """Add the TensorBoard sink and the trace profiler that ``options`` and the loggers call for.

    Collective under DDP (a broadcast of the run's directory): every rank must call it.
    """
    tb_logger = tensorboard_logger(trainer)
    run_dir, profile = options.logdir, options.profile
    if tb_logger is not None:  # rank zero's directory: other ranks may number versions apart
        run_dir = Path(trainer.strategy.broadcast(str(tb_logger.log_dir)))
    every = options.log_every_n_windows
    sink = _tensorboard_sink(trainer, tb_logger, run_dir, options.tensorboard, every, step_of)
    if sink is not None:
        recorder.sinks.append(sink)
    # By default traces go with the TensorBoard run; asked for explicitly, the logger's directory
    # (e.g. a CSVLogger's) will do.
    where = run_dir if run_dir is not None or profile is None else report_dir
    profiler = _trace_profiler(trainer, recorder, profile, where, options.all_ranks)
    if profiler is not None:
        recorder.attach_profiler(profiler)
        if sink is not None:
            profiler.on_trace_ready.append(sink.note_capture)  # "perf/profiler_traces" table


def tensorboard_logger(trainer: Any) -> Any:
    """The first TensorBoardLogger among the Trainer's loggers, or ``None``."""
    classes = []
    for name in _PACKAGES:
        try:
            classes.append(importlib.import_module(f"{name}.loggers").TensorBoardLogger)
        except (ImportError, AttributeError):
            continue
    return next((lg for lg in trainer.loggers if isinstance(lg, tuple(classes))), None)


def _tensorboard_sink(
    trainer: Any,
    tb_logger: Any,
    run_dir: Path | None,
    wanted: bool | None,
    every: int,
    step_of: Callable[[int], int],
) -> TensorBoardSink | None:
    if wanted is False or not trainer.is_global_zero:
        return None
    n = max(every, 1)  # every=0 (no figures) still writes the tracks and the Text tab
    if tb_logger is not None:
        # Never closed by us (Lightning closes it in finalize); flushed at fit end.
        return TensorBoardSink(writer=tb_logger.experiment, every=n, scalars=False, step_of=step_of)
    if run_dir is None:
        if wanted:
            warnings.warn(
                "perfcallback: tensorboard=True, but the Trainer has no TensorBoardLogger and no "
                "PerfCallback(logdir=...) was given; TensorBoard output is off",
                stacklevel=2,
            )
        return None
    options: dict[str, Any] = {"every": n, "scalars": every > 0, "step_of": step_of}
    if wanted:  # the extra was checked in PerfCallback.__init__
        return TensorBoardSink(run_dir, **options)
    return tensorboard_sink_or_warn(run_dir, **options)


def _trace_profiler(
    trainer: Any,
    recorder: StepRecorder,
    profile: bool | ProfileOptions | None,
    where: Path | None,
    all_ranks: bool,
) -> TraceProfiler | None:
    if profile is False or not (trainer.is_global_zero or all_ranks):
        return None
    if where is None:
        if profile is not None:
            warnings.warn(
                "perfcallback: profile=... needs a directory for its traces: attach a logger or "
                "pass PerfCallback(logdir=...); trace capture is off",
                stacklevel=2,
            )
        return None
    if type(trainer.profiler).__name__ == "PyTorchProfiler":  # one torch profiler at a time
        message = (
            "perfcallback: the Trainer runs Lightning's PyTorchProfiler, and torch allows one "
            "profiler at a time; perfcallback's trace capture is off"
        )
        if profile is not None:
            warnings.warn(message, stacklevel=2)
        else:
            logger.info(message)
        return None
    return profiler_for(
        where, profile, warmup_steps=recorder.warmup_steps, failopen=recorder.failopen
    )


def resolve_report_dir(trainer: Any, logdir: Path | None) -> Path | None:
    """``logdir``, else the Trainer's log directory; ``None`` without a logger.

    Collective under DDP when loggers are attached (``trainer.log_dir`` broadcasts).
    """
    if logdir is not None:
        return logdir
    # No logger (or fast_dev_run, which swaps loggers for a dummy): no directory to default
    # to, and writing into the working directory unasked would surprise.
    if trainer.fast_dev_run or not trainer.loggers:
        return None
    log_dir = trainer.log_dir
    return Path(log_dir) if log_dir else None


def write_report(recorder: StepRecorder, report_dir: Path | None, trainer: Any) -> None:
    """``perf_report.json`` (``perf_report.rank<N>.json`` off rank zero) with the validation."""
    if report_dir is None:
        return
    rank = trainer.global_rank
    name = "perf_report.json" if trainer.is_global_zero else f"perf_report.rank{rank}.json"
    report_dir.mkdir(parents=True, exist_ok=True)
    data = recorder.report().to_dict()
    write_json_atomic(report_dir / name, data)


def log_summary(recorder: StepRecorder, report_dir: Path | None) -> None:
    """The report (validation time included) on the ``perfcallback`` logger, at fit end."""
    ctx = recorder.context
    logger.info(
        "%s%s%s",
        f"[rank {ctx.rank} of {ctx.world_size}] " if ctx.world_size > 1 else "",
        recorder.report(),
        f"\n  written to {report_dir}" if report_dir is not None else "",
    )


def ensure_console_logging() -> None:
    """Show INFO lines in a terminal when nothing is configured (as Lightning does for its own)."""
    ours = logging.getLogger("perfcallback")
    if ours.handlers or logging.getLogger().hasHandlers():
        return
    ours.addHandler(logging.StreamHandler())
    ours.propagate = False
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
