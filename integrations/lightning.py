"""PerfCallback: the Lightning adapter over :class:`~perfcallback.recorder.StepRecorder`.

The callback translates Trainer events into recorder calls and measures nothing itself, so a
Lightning run and a raw loop under ``PerfMonitor`` are measured the same way.

- **Phases**: data (the blocking batch fetch inside Lightning's loop), forward
  (``training_step``), backward (``on_before_backward``/``on_after_backward``, so it ends where
  the backward call returns; under DDP the gradient-sync wait inside it is timed apart by a
  :class:`~perfcallback.hooks.GradSyncProbe` on the loss), optimizer (the
  strategy's ``optimizer_step``: closure machinery, clipping, scaler; ``zero_grad`` outside it is
  marked from ``on_before_zero_grad`` to the next backward), other. The wrappers that reach into
  the Trainer live in :mod:`perfcallback.integrations._lightning_seams`.
- **Step** = one optimizer step: it opens with the fetch of its first batch and runs until the
  next step's fetch begins (or validation, or the epoch's end), after a batch where
  ``trainer.global_step`` advanced. ``accumulate_grad_batches`` and several optimizers per batch
  give one step per update, and Lightning's own work after ``on_train_batch_end`` (logging,
  progress bar, checkpoints) is part of the step ("other"), so ``steps_per_s`` matches the
  progress bar's rate.
- **Validation** during fit (not the sanity check) is timed apart and never counts as step time.
- **DeepSpeedStrategy**: Lightning routes backward through ``engine.backward`` (inside
  ``on_before_backward``/``on_after_backward``) and the update through ``engine.step`` (inside
  the strategy's ``optimizer_step``), so DeepSpeed's reduction and ZeRO's step land in backward
  and optimizer as they do under ``PerfMonitor``; the engine's config is quoted by the rules.
- **Outputs** (loggers, the TensorBoard run and its step axis, profiler traces, the report file)
  are wired in :mod:`perfcallback.integrations._lightning_outputs`.

One class serves ``lightning`` and ``pytorch_lightning``: it derives from the ``Callback`` of every
installed package, so either ``Trainer``'s ``isinstance`` check accepts it.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from perfcallback._optional import require
from perfcallback.context import (
    ddp_facts,
    ddp_runtime_figures,
    is_compiled,
    loader_facts,
    optimizer_facts,
    param_dtype,
)
from perfcallback.hooks import GradSyncProbe, times_grad_sync
from perfcallback.integrations._lightning_outputs import StepAxis, logger_sinks, output_targets
from perfcallback.integrations._lightning_seams import TrainerProbes
from perfcallback.monitor import batch_size_of, is_deepspeed_engine
from perfcallback.profiling import ProfileOptions
from perfcallback.recorder import StepRecorder
from perfcallback.report import Recommendation, Report
from perfcallback.session import EngineSession, SessionOptions, ensure_console_logging
from perfcallback.sinks import Sink
from perfcallback.stats import BACKWARD, OPTIMIZER

logger = logging.getLogger("perfcallback")

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")
_HOOKS = "lightning_callback"  # fail-open component name of the callback hooks
F = TypeVar("F", bound=Callable[..., Any])


def _callback_bases() -> tuple[type, ...]:
    """``Callback`` of each installed Lightning package; raises naming the extra if none is."""
    bases = []
    for name in _PACKAGES:
        try:
            bases.append(importlib.import_module(name).Callback)
        except ImportError:
            continue
    if not bases:
        require(_PACKAGES[0], extra="lightning")  # raises MissingExtraError with the install hint
    return tuple(bases)


_BASES = _callback_bases()


def _hook(fn: F) -> F:
    """A callback hook that runs only while fitting, behind the session's fail-open: an error in
    it switches the callback off (see :meth:`PerfCallback._switch_off`)."""

    @functools.wraps(fn)
    def hook(self: PerfCallback, *args: Any, **kwargs: Any) -> None:
        if self._live and self._session is not None:
            self._session.failopen.call(_HOOKS, fn, self, *args, **kwargs)

    return hook  # type: ignore[return-value]


class PerfCallback(*_BASES):  # type: ignore[misc]
    """Measure where each training step's time goes during ``Trainer.fit``.

    Window scalars (``perf/...``) go to every logger through ``log_metrics``. A TensorBoardLogger's
    run also gets the ``perf/recommendations/<category>`` tracks, the Text tab and the profiler
    traces (``<log_dir>/profiler/``); its writer is reused and never closed. Points sit at the step
    where Lightning logs the window's last batch, in line with the loss curve.

    Args:
        logdir: Directory for ``perf_report.json``; ``None`` uses the Trainer's ``log_dir`` (the
            first logger's directory, e.g. ``lightning_logs/version_0``). Without a logger or
            under ``fast_dev_run``, no file is written unless ``logdir`` is given. Without a
            TensorBoardLogger, TensorBoard output and traces go to ``logdir`` too.
        warmup_steps: Leading steps left out of the figures (again after a checkpoint resume).
        window_steps: Steps per window; rules run and scalars are logged once per window.
            ``None``: at least 25 steps and 0.25 s, at most 250 (25 under DDP).
        log_every_n_windows: Send window scalars to the Trainer's loggers every N windows;
            ``0`` disables it.
        on_recommendation: Called with each new or updated :class:`Recommendation`.
        disabled_rules: Rule ids or categories to silence.
        thresholds: Overrides of rule thresholds by name.
        log_recommendations: Log findings as they appear, and a summary at fit end.
        all_ranks: Under DDP, also log and write files on ranks other than zero
            (``perf_report.rank<N>.json``). Every rank always measures itself.
        sinks: Extra sinks.
        tensorboard: Recommendation tracks and the Text tab in the TensorBoardLogger's run, or a
            TensorBoard run in ``logdir`` when no TensorBoardLogger is attached. ``None``: when
            either exists, with a warning naming the ``tensorboard`` extra if it is missing;
            ``True`` makes a missing extra an error; ``False``: none (loggers still get scalars).
        profile: ``torch.profiler`` trace capture (``True``, ``False`` or a
            :class:`~perfcallback.profiling.ProfileOptions`) into the TensorBoard run's
            directory. ``None``: the default options (one early capture, plus captures triggered
            by a slowdown) when there is a TensorBoard run. Profiled steps are left out of the
            figures. Rank zero only, unless ``all_ranks``.
        recorder_kwargs: Passed to :class:`~perfcallback.recorder.StepRecorder`.

    Example::

        >>> import lightning.pytorch as L
        >>> from perfcallback import PerfCallback
        >>> perf = PerfCallback(warmup_steps=2)
        >>> trainer = L.Trainer(max_steps=20, callbacks=[perf])  # doctest: +SKIP
        >>> trainer.fit(model)                                     # doctest: +SKIP
        >>> print(perf.report())                                   # doctest: +SKIP
    """

    def __init__(
        self,
        logdir: str | Path | None = None,
        *,
        warmup_steps: int = 5,
        window_steps: int | None = None,
        log_every_n_windows: int = 1,
        on_recommendation: Callable[[Recommendation], object] | None = None,
        disabled_rules: Sequence[str] = (),
        thresholds: Mapping[str, float] | None = None,
        log_recommendations: bool = True,
        all_ranks: bool = False,
        sinks: Sequence[Sink] = (),
        tensorboard: bool | None = None,
        profile: bool | ProfileOptions | None = None,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(log_every_n_windows, int) or log_every_n_windows < 0:
            raise ValueError(
                f"log_every_n_windows must be an int >= 0, got {log_every_n_windows!r}"
            )
        self._options = SessionOptions.from_kwargs(  # validated now, not at fit start
            logdir=logdir,
            warmup_steps=warmup_steps,
            window_steps=window_steps,
            on_recommendation=on_recommendation,
            disabled_rules=disabled_rules,
            thresholds=thresholds or {},
            log_recommendations=log_recommendations,
            sinks=sinks,
            tensorboard=tensorboard,
            profile=profile,
            all_ranks=all_ranks,
            **recorder_kwargs,
        )
        self.logdir = self._options.logdir
        self.log_every_n_windows = log_every_n_windows
        self._session: EngineSession | None = None
        self._probes: TrainerProbes | None = None
        self._axis = StepAxis()  # recorder step index -> the step Lightning logs its batch at
        self._pending_state: dict[str, Any] | None = None
        self._live = False  # hooks act only between fit start and fit end
        self._step_opened_at = 0  # trainer.global_step when the current step opened
        self._step_done = False  # its optimizer update ran; it ends where the next fetch begins
        self._zero_grad_open = False
        self._finished = False
        self._on_loss_grad: Callable[[Any], None] | None = None

    # ----------------------------------------------------------------- set-up and tear-down
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":  # before any checkpoint restore, which calls load_state_dict
            self._session, self._finished = self._build_session(trainer), False
            self._step_done = self._zero_grad_open = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Every rank gets here; trainer.log_dir and the TensorBoard run's directory are
        # broadcasts, so they are read now, on all of them.
        session = self._active_session()
        session.failopen.call("outputs", self._open_outputs, trainer, session)
        session.failopen.call(_HOOKS, self._attach, trainer)

    @_hook
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._describe_run(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(trainer)  # no leaked wrappers, gc probe or open files, even on a crash

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._finish(trainer)

    # ----------------------------------------------------------------- training hooks
    @_hook
    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._close_step()  # no fetch came first: dataloader_iter training steps
        rec = self._active()
        if not rec.in_step:
            self._step_opened_at = trainer.global_step
            self._axis.mark(rec.steps_seen + 1, trainer)
            rec.begin_step()
        rec.add_samples(batch_size_of(batch))

    @_hook
    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if not self._zero_grad_open:
            self._zero_grad_open = True
            self._active().phase_start(OPTIMIZER)

    @_hook
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._close_zero_grad()
        self._active().phase_start(BACKWARD)
        if self._on_loss_grad is not None and getattr(loss, "requires_grad", False):
            loss.register_hook(self._on_loss_grad)  # times DDP's gradient-sync wait

    @_hook
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self._active().phase_end(BACKWARD)

    @_hook
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._close_zero_grad()  # backward was skipped (training_step returned None)

    @_hook
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._close_zero_grad()
        if trainer.global_step != self._step_opened_at:  # an optimizer step ran
            self._step_done = True

    @_hook
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._close_step()
        rec = self._active()
        if rec.in_step:  # the epoch ended without an optimizer step: not a step
            rec.abort_step()
        rec.discard_fetch()  # a fetch that found the loader exhausted

    @_hook
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._close_step()
            self._active().begin_validation()

    @_hook
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._active().end_validation()

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The recorder's counters, totals and windows (plain Python types), for checkpoints.

        A step whose update already ran is closed first, so the saved step count matches
        ``trainer.global_step`` (the checkpoint's own writing is then not part of that step).
        """
        if self._session is None:
            return {}
        if self._live:
            self._close_step()
        return self._session.recorder.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume counters and windows from a checkpoint; a bad state is reported, not raised."""
        if self._session is None:
            self._pending_state = dict(state_dict)
        elif state_dict:
            rec = self._session.recorder
            self._session.failopen.call("checkpoint_state", rec.load_state_dict, state_dict)

    # ----------------------------------------------------------------- results
    def report(self) -> Report:
        """Figures and findings for this rank's steps so far (during or after ``fit``).

        Raises:
            RuntimeError: ``Trainer.fit`` has not started yet.
        """
        return self._active_session().report()

    def validation_summary(self) -> dict[str, float]:
        """Validation during fit on this rank: ``runs``, ``total_s``, ``mean_s`` (not step time)."""
        return self._active().validation_summary()

    # ----------------------------------------------------------------- internals
    def _active_session(self) -> EngineSession:
        if self._session is None:
            raise RuntimeError(
                "PerfCallback has no measurements yet: pass it to Trainer(callbacks=[...]) and "
                "call trainer.fit() first (with strategy='ddp_spawn', fit runs in worker "
                "processes: read perf_report.json from the logger's directory instead)"
            )
        return self._session

    def _active(self) -> StepRecorder:
        return self._active_session().recorder

    def _fetch_begins(self) -> None:
        self._close_step()
        self._active().data_begin()

    def _open_outputs(self, trainer: Any, session: EngineSession) -> None:
        where = output_targets(trainer, self.logdir, self._options.profile)
        session.open_outputs(
            report_dir=where.report_dir,
            tensorboard_dir=where.tensorboard_dir,
            writer=where.writer,
            scalars=where.scalars and self.log_every_n_windows > 0,
            every=self.log_every_n_windows,
            step_of=self._axis,
            trace_dir=where.trace_dir,
            profiler_taken_by=where.profiler_taken_by,
            missing_dir="warn",  # fit has started: a missing directory must not stop it
            stacklevel=4,
        )

    def _attach(self, trainer: Any) -> None:
        rec = self._active()
        self._probes = TrainerProbes(rec, trainer, self._fetch_begins)
        rec.install_gc_probe()
        if times_grad_sync(rec):
            sync = GradSyncProbe(rec, rec.failopen.guard)
            self._on_loss_grad = rec.failopen.guard("backward_hook", lambda grad: sync.start())
        self._live = True

    def _close_step(self) -> None:
        """End the step whose update ran, once Lightning's per-batch work after it is done too."""
        if self._step_done:
            self._step_done = False
            self._active().end_step()

    def _close_zero_grad(self) -> None:
        if self._zero_grad_open:
            self._zero_grad_open = False
            self._active().phase_end(OPTIMIZER)

    def _build_session(self, trainer: Any) -> EngineSession:
        if self._options.log_recommendations:
            ensure_console_logging()
        sinks = logger_sinks(trainer, self._active, self._axis, self.log_every_n_windows)
        session = EngineSession(
            self._options,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            device_type=trainer.strategy.root_device.type,
            extra_sinks=sinks,
        )
        session.failopen.on_trip(_HOOKS, self._switch_off)
        root = trainer.strategy.root_device  # a torch.device: reading it makes no CUDA call
        if root.type == "cuda":
            session.recorder.device = root  # events, allocator stats and NVML on this device
        if self._pending_state:
            session.failopen.call("checkpoint_state", session.recorder.load_state_dict,
                                  self._pending_state)
        self._pending_state = None
        return session

    def _describe_run(self, trainer: Any) -> None:
        ctx = self._active().context
        loader = trainer.train_dataloader
        ctx.loader = loader_facts(loader) if loader is not None else None
        if trainer.optimizers:
            ctx.optimizer = optimizer_facts(trainer.optimizers[0])
        engine = trainer.strategy.model
        if is_deepspeed_engine(engine):  # DeepSpeedStrategy: rules quote the engine's config
            from perfcallback.integrations.deepspeed import config_facts, torch_optimizer

            ctx.extra["deepspeed"] = config_facts(engine)
            inner = torch_optimizer(engine.optimizer)  # the torch optimizer inside ZeRO's wrapper
            ctx.optimizer = optimizer_facts(inner) if inner is not None else ctx.optimizer
        module = trainer.lightning_module
        ctx.param_dtype = param_dtype(module)
        # Lightning unwraps torch.compile(model) and keeps the compile settings on the module.
        compiled_by_lightning = getattr(module, "_compiler_ctx", None) is not None
        ctx.compile_in_use = is_compiled(module) or compiled_by_lightning
        wrapped = getattr(trainer.strategy, "model", None)
        ddp = ddp_facts(wrapped)
        if ddp is not None:
            ctx.extra["ddp"] = ddp
            self._active().comm_sources.append(lambda: ddp_runtime_figures(wrapped))

    def _switch_off(self) -> None:
        """Fail-open cleanup of the callback's hooks: stop acting and unwrap the Trainer."""
        self._live = False
        if self._probes is not None:
            self._probes.remove()

    def _finish(self, trainer: Any) -> None:
        """Release everything and write the report, once per fit; safe to call repeatedly."""
        session = self._session
        self._live = False
        if self._probes is not None:
            self._probes.remove()
            self._probes = None
        if session is None or self._finished:
            return
        self._finished = True
        update_ran, self._step_done = self._step_done, False
        session.finish(update_ran=update_ran)
