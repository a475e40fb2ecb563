"""Where :class:`~perfcallback.integrations.lightning.PerfCallback`'s results go: the Trainer's
loggers, its TensorBoard run (scalars, recommendations, profiler traces) and the report file.

This module only finds the Lightning-specific targets (the loggers, the TensorBoardLogger's
writer and directory, the step axis); the engine session
(:meth:`perfcallback.session.EngineSession.open_outputs`) builds the outputs there.

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
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfcallback.profiling import ProfileOptions
from perfcallback.recorder import StepRecorder
from perfcallback.sinks import Sink
from perfcallback.sinks.tensorboard import window_scalars
from perfcallback.stats import WindowStats

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


def logger_sinks(
    trainer: Any, recorder: Callable[[], StepRecorder], step_of: Callable[[int], int], every: int
) -> list[Sink]:
    """Window scalars for the Trainer's loggers every ``every`` windows (rank zero; ``0``: none);
    ``recorder`` returns the recorder once built (for the validation figures)."""
    if not every or not trainer.is_global_zero:
        return []

    def validation_scalars() -> dict[str, float]:
        val = recorder().validation_summary()
        return {"perf/validation/runs": val["runs"], "perf/validation/mean_ms": val["mean_s"] * 1e3}

    return [LoggerSink(trainer, step_of=step_of, every_n_windows=every, extra=validation_scalars)]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputTargets:
    """Where the engine session should write, as the Trainer's loggers decide it."""

    report_dir: Path | None
    tensorboard_dir: Path | None = None  # a writer the session owns (no TensorBoardLogger)
    writer: Any = None  # the TensorBoardLogger's writer, reused (rank zero)
    scalars: bool = True  # False: the loggers already receive the figures
    trace_dir: Path | None = None
    profiler_taken_by: str | None = None


def output_targets(
    trainer: Any, logdir: Path | None, profile: bool | ProfileOptions | None
) -> OutputTargets:
    """The Trainer's output directories for ``PerfCallback(logdir=..., profile=...)``.

    Collective under DDP (``trainer.log_dir`` and the run's directory are broadcasts): every rank
    must call it.
    """
    report_dir = resolve_report_dir(trainer, logdir)
    tb_logger = tensorboard_logger(trainer)
    run_dir, writer = logdir, None
    if tb_logger is not None:  # rank zero's directory: other ranks may number versions apart
        run_dir = Path(trainer.strategy.broadcast(str(tb_logger.log_dir)))
        # Never closed by us (Lightning closes it in finalize); flushed at fit end.
        writer = tb_logger.experiment if trainer.is_global_zero else None
    # By default traces go with the TensorBoard run; asked for explicitly, the logger's directory
    # (e.g. a CSVLogger's) will do.
    trace_dir = run_dir if run_dir is not None or profile is None else report_dir
    taken_by = None
    if type(trainer.profiler).__name__ == "PyTorchProfiler":
        taken_by = "the Trainer's PyTorchProfiler"
    return OutputTargets(
        report_dir=report_dir,
        tensorboard_dir=None if tb_logger is not None else run_dir,
        writer=writer,
        scalars=tb_logger is None,
        trace_dir=trace_dir,
        profiler_taken_by=taken_by,
    )


def tensorboard_logger(trainer: Any) -> Any:
    """The first TensorBoardLogger among the Trainer's loggers, or ``None``."""
    classes = []
    for name in _PACKAGES:
        try:
            classes.append(importlib.import_module(f"{name}.loggers").TensorBoardLogger)
        except Exception:  # missing, or installed but broken: no TensorBoardLogger to find
            continue
    return next((lg for lg in trainer.loggers if isinstance(lg, tuple(classes))), None)


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
