"""EngineSession: what every adapter needs around the recorder, built in one place.

An adapter (``PerfMonitor`` for raw loops, the Lightning callback, the DeepSpeed and Hugging Face
integrations) only translates its framework's events into recorder calls. Everything else is here:

- one frozen, validated :class:`~perfcallback.options.SessionOptions` (misuse raises when the
  adapter is built);
- the outputs: logging and callback sinks, the TensorBoard sink (its own writer, or a framework's
  writer reused), the trace profiler, the report file and the end-of-run summary;
- rank gating: every rank measures; rank zero (or every rank with ``all_ranks=True``) logs,
  captures traces and writes files; TensorBoard is written by rank zero only;
- the one fail-open registry (:class:`~perfcallback.failopen.FailOpen`), shared by the recorder,
  the profiler, the sinks and the adapter's own framework hooks;
- the user-error policy for outputs: a logdir that cannot be written is reported once, in one line,
  and the file outputs are off; measuring and the report go on.

Design note: where the outputs go is the adapter's decision (a raw loop's ``logdir``, a
Lightning logger's directory), so :meth:`EngineSession.open_outputs` takes directories and an
optional writer; what to build there, and on which rank, is the session's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from perfcallback._optional import MissingExtraError
from perfcallback.context import RunContext
from perfcallback.distributed import RankExchange, default_store
from perfcallback.failopen import FailOpen
from perfcallback.options import SessionOptions
from perfcallback.profiling import ProfileOptions, TraceProfiler
from perfcallback.recorder import StepRecorder
from perfcallback.report import Report
from perfcallback.sinks import CallbackSink, LoggingSink, Sink
from perfcallback.sinks.crossrank import CrossRankSink
from perfcallback.sinks.tensorboard import TensorBoardSink
from perfcallback.telemetry import attach_telemetry

__all__ = [
    "EngineSession",
    "SessionOptions",
    "ensure_console_logging",
    "unwritable_reason",
    "write_json_atomic",
]

logger = logging.getLogger("perfcallback")

REPORT_FILE = "perf_report.json"


MissingDir = Literal["raise", "warn"]


class EngineSession:
    """One measured run: the recorder plus its outputs, rank gating and fail-open.

    Args:
        options: The validated options.
        rank: This process's rank (0 outside torch.distributed).
        world_size: Number of ranks.
        device_type: Where the model runs (``"cuda"``, ``"cpu"``, ...); ``None``: CUDA when
            available. CUDA-event timing follows it unless ``options.cuda`` says otherwise.
        extra_sinks: Sinks the adapter adds (e.g. a framework's loggers), after the options'.

    Example::

        >>> from perfcallback.session import EngineSession, SessionOptions
        >>> session = EngineSession(SessionOptions(warmup_steps=0, window_steps=2))
        >>> rec = session.recorder
        >>> for _ in range(4):
        ...     rec.begin_step()
        ...     rec.end_step()
        >>> session.close().steps
        4
    """

    def __init__(
        self,
        options: SessionOptions,
        *,
        rank: int = 0,
        world_size: int = 1,
        device_type: str | None = None,
        extra_sinks: Sequence[Sink] = (),
    ) -> None:
        self.options = options
        self.rank, self.world_size = rank, world_size
        self.speaks = options.all_ranks or rank == 0  # logs, traces and files
        sinks: list[Sink] = [*options.sinks, *extra_sinks]
        if options.log_recommendations and self.speaks:
            sinks.append(LoggingSink())
        if options.on_recommendation is not None:
            sinks.append(CallbackSink(options.on_recommendation))
        cuda = options.cuda
        if cuda is None:
            cuda = device_type == "cuda" if device_type else torch.cuda.is_available()
        context = RunContext(rank=rank, world_size=world_size)
        self.recorder = StepRecorder(
            warmup_steps=options.warmup_steps,
            window_steps=options.window_steps,
            buffer_steps=options.buffer_steps,
            fire_after=options.fire_after,
            clear_after=options.clear_after,
            sinks=sinks,
            context=context,
            thresholds=options.thresholds,
            disabled_rules=options.disabled_rules,
            cuda=cuda,
            clock=options.clock,
        )
        if device_type is not None:
            context.device_type = device_type
        self.recorder.pipeline.user_sinks.update(id(s) for s in options.sinks)
        attach_telemetry(self.recorder, nvml=options.nvml, nvml_interval_s=options.nvml_interval_s,
                         count_flops=options.count_flops, flops_per_step=options.flops_per_step)
        self.failopen: FailOpen = self.recorder.failopen
        self.cross_rank: CrossRankSink | None = None
        if world_size > 1:
            self.failopen.call("cross_rank", self._start_exchange)
        self.report_dir: Path | None = None
        self.tensorboard: TensorBoardSink | None = None
        self.profiler: TraceProfiler | None = None
        self._closed = False

    def _start_exchange(self) -> None:
        store = default_store()
        if store is None:
            logger.info("perfcallback: no torch.distributed store on rank %d; ranks are not "
                        "compared (each rank measures itself)", self.rank)
            return
        exchange = RankExchange(store, self.rank, self.world_size,
                                timeout_s=self.options.rank_timeout_s)
        sink = CrossRankSink(exchange, self.recorder)
        self.cross_rank = sink
        self.recorder.sinks.append(sink)
        if self.rank == 0:
            self.recorder.window_sources.append(sink.window_fields)

    @property
    def context(self) -> RunContext:
        return self.recorder.context

    # ----------------------------------------------------------------- outputs
    def open_outputs(
        self,
        *,
        report_dir: Path | None,
        tensorboard_dir: Path | None = None,
        writer: Any = None,
        scalars: bool = True,
        every: int = 1,
        step_of: Callable[[int], int] | None = None,
        trace_dir: Path | None = None,
        profiler_taken_by: str | None = None,
        missing_dir: MissingDir = "raise",
        stacklevel: int = 2,
    ) -> None:
        """Build the report file target, the TensorBoard sink and the trace profiler.

        Args:
            report_dir: Where ``perf_report.json`` goes (``None``: no file).
            tensorboard_dir: A directory for a TensorBoard writer the session owns.
            writer: A framework's ``SummaryWriter`` to reuse instead (flushed, never closed).
            scalars: Write the window figures too (``False`` when the framework's loggers
                already receive them).
            every: Write the figures every N windows.
            step_of: Maps the recorder's step index to the step axis written.
            trace_dir: Where profiler captures go (``None``: no capture).
            profiler_taken_by: The framework already runs a ``torch.profiler`` (named here):
                capture is off, with a message.
            missing_dir: ``"raise"``: an output asked for explicitly with nowhere to write is a
                ``ValueError`` (raised while the adapter is built); ``"warn"``: a warning (raised
                while the framework already runs, where an exception would stop training).
            stacklevel: For warnings, as seen from the caller of this method.

        Raises:
            ValueError: with ``missing_dir="raise"``, ``tensorboard=True`` or ``profile=...``
                without a directory.
        """
        dirs = {d for d in (report_dir, tensorboard_dir, trace_dir) if d is not None}
        if self.speaks:
            for d in sorted(dirs):
                problem = unwritable_reason(d)
                if problem is not None:  # the user's setting, not our bug: one line, no traceback
                    logger.warning("perfcallback: logdir not writable: %s (%s); perf output "
                                   "is off, measuring goes on", d, problem)
                    self.failopen.mark_off("logdir", f"not writable: {d} ({problem})")
                    report_dir = tensorboard_dir = trace_dir = None
                    writer = None
                    break
        if self.rank == 0:
            _warn_if_reused(report_dir, tensorboard_dir, trace_dir)
        self.report_dir = report_dir if self.speaks else None
        sink = self._tensorboard_sink(
            tensorboard_dir, writer, scalars, every, step_of, missing_dir, stacklevel + 1
        )
        if sink is not None:
            self.tensorboard = sink
            self.recorder.sinks.append(sink)
        profiler = self._trace_profiler(trace_dir, profiler_taken_by, missing_dir, stacklevel + 1)
        if profiler is not None:
            self.profiler = profiler
            self.recorder.attach_profiler(profiler)
            if sink is not None:
                profiler.on_trace_ready.append(sink.note_capture)  # the Text tab's traces table

    def _tensorboard_sink(
        self,
        directory: Path | None,
        writer: Any,
        scalars: bool,
        every: int,
        step_of: Callable[[int], int] | None,
        missing_dir: MissingDir,
        stacklevel: int,
    ) -> TensorBoardSink | None:
        wanted = self.options.tensorboard
        if wanted is False or self.rank != 0:  # TensorBoard is rank zero's
            return None
        options: dict[str, Any] = {"every": max(every, 1), "scalars": scalars, "step_of": step_of}
        if writer is not None:
            return TensorBoardSink(writer=writer, **options)
        if directory is None:
            if wanted:
                _missing(missing_dir, "tensorboard=True needs a logdir to write to; pass "
                         "logdir=...; TensorBoard output is off", stacklevel + 1)
            return None
        try:
            return TensorBoardSink(directory, **options)
        except MissingExtraError as exc:
            if wanted:
                raise
            warnings.warn(f"TensorBoard output is off: {exc}. Training and the other outputs "
                          "go on.", stacklevel=stacklevel + 1)
            return None

    def _trace_profiler(
        self,
        directory: Path | None,
        taken_by: str | None,
        missing_dir: MissingDir,
        stacklevel: int,
    ) -> TraceProfiler | None:
        profile = self.options.profile
        if profile is False or not self.speaks:
            return None
        if directory is None:
            if profile is not None:
                _missing(missing_dir, "profile=... needs a logdir to write traces to; pass "
                         "logdir=...; trace capture is off", stacklevel + 1)
            return None
        if taken_by is not None:  # torch allows one profiler at a time
            message = (f"perfcallback: {taken_by} already runs torch.profiler, and torch allows "
                       "one profiler at a time; perfcallback's trace capture is off")
            if profile is not None:
                warnings.warn(message, stacklevel=stacklevel + 1)
            else:
                logger.info(message)
            return None
        options = profile if isinstance(profile, ProfileOptions) else ProfileOptions()
        return TraceProfiler(directory, options, warmup_steps=self.options.warmup_steps,
                             failopen=self.failopen)

    # ----------------------------------------------------------------- results
    def report(self) -> Report:
        """Figures and findings for this rank's steps so far."""
        return self.recorder.report()

    def write_report(self) -> Path | None:
        """Write ``perf_report.json`` (``perf_report.rank<N>.json`` off rank zero); fail-open."""
        if self.report_dir is None:
            return None
        name = REPORT_FILE if self.rank == 0 else f"perf_report.rank{self.rank}.json"
        path = self.report_dir / name
        written = self.failopen.call("report_file", _write_report, path, self.report())
        return path if written else None

    def log_summary(self) -> None:
        """The report on the ``perfcallback`` logger (at the end of a framework's run)."""
        if not (self.speaks and self.options.log_recommendations):
            return
        ensure_console_logging()
        prefix = f"[rank {self.rank} of {self.world_size}] " if self.world_size > 1 else ""
        where = f"\n  written to {self.report_dir}" if self.report_dir is not None else ""
        logger.info("%s%s%s", prefix, self.report(), where)

    def finish(self, *, update_ran: bool, summary: bool = True) -> Report:
        """End a framework's run: close the open step if its optimizer update ran (else drop it),
        then :meth:`close`. For adapters whose step ends where the next fetch begins."""
        rec = self.recorder
        try:
            if update_ran:
                rec.end_step()
            if rec.in_step:
                rec.abort_step()
        finally:
            report = self.close(summary=summary)
        return report

    def close(self, *, summary: bool = False) -> Report:
        """End the run: release probes, flush outputs, write the report file. Idempotent.

        Returns:
            The final report.
        """
        if not self._closed:
            self._closed = True
            self.recorder.close()
            self.write_report()
            if summary:
                self.failopen.call("summary", self.log_summary)
        return self.report()


def _warn_if_reused(
    report_dir: Path | None, tensorboard_dir: Path | None, trace_dir: Path | None
) -> None:
    """Say once that a directory already holds an earlier run's output (nothing is deleted)."""
    found = []
    if report_dir is not None and (report_dir / REPORT_FILE).exists():
        found.append(REPORT_FILE)
    if tensorboard_dir is not None and any(tensorboard_dir.glob("events.out.tfevents.*")):
        found.append("TensorBoard event files")
    if trace_dir is not None and any((trace_dir / "profiler").glob("*/*.pt.trace.json.gz")):
        found.append("profiler traces")
    if found:
        where = report_dir or tensorboard_dir or trace_dir
        logger.warning(
            "perfcallback: %s already holds an earlier run (%s): TensorBoard will show both runs' "
            "figures as one and the report file is replaced. Pass a new logdir per run to keep "
            "them apart; nothing is deleted.", where, ", ".join(found))


def _missing(how: MissingDir, message: str, stacklevel: int) -> None:
    if how == "raise":
        raise ValueError(message)
    warnings.warn(f"perfcallback: {message}", stacklevel=stacklevel + 1)


def _write_report(path: Path, report: Report) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report.to_dict())
    return True


def unwritable_reason(directory: Path) -> str | None:
    """Why files cannot be created in ``directory`` (made if missing), or ``None`` if they can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".perfcallback-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file, so a crash never truncates it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_console_logging() -> None:
    """Show INFO lines in a terminal when nothing is configured (as Lightning does for its own)."""
    ours = logging.getLogger("perfcallback")
    if ours.handlers or logging.getLogger().hasHandlers():
        return
    ours.addHandler(logging.StreamHandler())
    ours.propagate = False
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
