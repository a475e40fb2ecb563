"""PerfTrainerCallback: the Hugging Face ``Trainer`` adapter over the engine session.

Like the Lightning adapter, it translates Trainer events into recorder calls and measures
nothing itself; options, outputs, rank gating and fail-open come from
:class:`~perfcallback.session.EngineSession`.

- **data** is timed at the Trainer's real fetch: ``Trainer.get_batch_samples(epoch_iterator, ...)``
  pulls the batches of one optimizer update; its iterator is wrapped so each ``next()`` is timed
  (not the gap between steps, which would also hold logging and checkpoints). If this
  Transformers version has no ``get_batch_samples``, one warning says data wait is not measured.
- **forward** = ``Trainer.compute_loss`` (the model's forward and its loss), **backward** =
  ``accelerator.backward(loss)`` (loss scaling, autograd, DDP's reduction), **optimizer** =
  ``on_pre_optimizer_step`` to ``on_optimizer_step`` (gradient clipping, scheduler and
  ``zero_grad`` are "other"). Under DeepSpeed, Accelerate's ``backward`` also runs
  ``engine.step()``, so the update is counted as backward there.
- **One step = one optimizer update**: with ``gradient_accumulation_steps=N`` a step holds N
  micro-batches. It opens with its first fetch and closes when the next update's fetch begins, so
  the Trainer's per-step logging and checkpointing are "other" and ``steps_per_s`` matches the
  Trainer's ``train_steps_per_second``. ``Trainer.evaluate`` is timed apart (validation).
- **Outputs**: scalars, recommendations and traces go next to the Trainer's TensorBoard run (the
  ``TensorBoardCallback``'s directory) when ``report_to`` includes ``"tensorboard"``;
  ``perf_report.json`` goes to ``logdir`` or the TensorBoard directory or ``args.output_dir``.
- **Ranks** come from ``args.process_index``/``args.world_size`` (torchrun, Accelerate).

``TrainerCallback`` events do not receive the Trainer, and the fetch, ``compute_loss`` and
``evaluate`` calls are the Trainer's own: at ``on_train_begin`` the callback finds the Trainer
that called it (its caller's frame) and wraps those calls on that *instance*, never the class;
they are removed at ``on_train_end``.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from perfcallback._optional import require
from perfcallback.context import loader_facts, optimizer_facts, param_dtype
from perfcallback.integrations._patch import InstancePatches, bracket
from perfcallback.monitor import batch_size_of
from perfcallback.recorder import StepRecorder
from perfcallback.report import Report
from perfcallback.session import EngineSession, SessionOptions, ensure_console_logging
from perfcallback.stats import BACKWARD, FORWARD, OPTIMIZER

transformers = require("transformers", extra="transformers")

__all__ = ["PerfTrainerCallback"]

_HOOKS = "transformers_callback"  # fail-open component name of the hooks and the wrappers
F = TypeVar("F", bound=Callable[..., Any])


def _hook(fn: F) -> F:
    """A callback event that acts only during ``train``, behind the session's fail-open."""

    @functools.wraps(fn)
    def hook(self: PerfTrainerCallback, *args: Any, **kwargs: Any) -> None:
        if self._live and self._session is not None:
            self._session.failopen.call(_HOOKS, fn, self, *args, **kwargs)

    return hook  # type: ignore[return-value]


class _TimedIterator:
    """The epoch iterator handed to ``get_batch_samples``: each ``next()`` is a timed fetch."""

    __slots__ = ("_abort", "_begin", "_end", "_it")

    def __init__(self, it: Iterator[Any], rec: StepRecorder, guard: Callable[..., Any]) -> None:
        self._it = it
        self._begin, self._end = guard(_HOOKS, rec.data_begin), guard(_HOOKS, rec.data_end)
        self._abort = guard(_HOOKS, rec.abort_fetch)

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        self._begin()
        try:
            item = next(self._it)
        except StopIteration:
            self._abort()
            raise
        self._end(batch_size_of(item))
        return item


class PerfTrainerCallback(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Measure where each optimizer update's time goes during ``Trainer.train``.

    Args:
        logdir: Directory for ``perf_report.json`` (and TensorBoard output when the Trainer
            writes none); ``None``: the Trainer's TensorBoard directory, else ``args.output_dir``.
        options: Any :class:`~perfcallback.session.SessionOptions` field (``warmup_steps``,
            ``window_steps``, ``disabled_rules``, ``thresholds``, ``tensorboard``, ``profile``,
            ``all_ranks``, ...), validated here.

    Example::

        >>> from transformers import Trainer
        >>> from perfcallback.integrations.transformers import PerfTrainerCallback
        >>> perf = PerfTrainerCallback(warmup_steps=2)
        >>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[perf])  # doctest: +SKIP
        >>> trainer.train()                                                      # doctest: +SKIP
        >>> print(perf.report())                                                 # doctest: +SKIP
    """

    def __init__(self, logdir: str | Path | None = None, **options: Any) -> None:
        super().__init__()
        self._options = SessionOptions.from_kwargs(logdir=logdir, **options)
        self._session: EngineSession | None = None
        self._patches = InstancePatches()
        self._live = False
        self._step_done = False  # the update ran; the step closes where the next fetch begins
        self._axis_offset = 0  # recorder step k is logged at Trainer global_step k + offset
        self._finished = True  # no session open

    # ----------------------------------------------------------------- set-up and tear-down
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish()  # a previous train() that raised never reached on_train_end
        if self._options.log_recommendations:
            ensure_console_logging()
        session = EngineSession(self._options, rank=args.process_index,
                                world_size=args.world_size, device_type=args.device.type)
        session.failopen.on_trip(_HOOKS, self._switch_off)
        self._session, self._step_done, self._finished = session, False, False
        trainer = _calling_trainer()
        session.failopen.call("outputs", self._open_outputs, trainer, args, session)
        session.failopen.call(_HOOKS, self._attach, trainer, kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish()

    # ----------------------------------------------------------------- training events
    @_hook
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close_step()  # no fetch came first (a subclass that bypasses get_batch_samples)
        rec = self._rec()
        if not rec.in_step:
            self._axis_offset = state.global_step - rec.steps_seen
            rec.begin_step()

    @_hook
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._rec().phase_start(OPTIMIZER)

    @_hook
    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._rec().phase_end(OPTIMIZER)

    @_hook
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_done = True

    @_hook
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close_step()
        rec = self._rec()
        if rec.in_step:  # the epoch ended without an optimizer update: not a step
            rec.abort_step()
        rec.discard_fetch()  # the fetch that found the epoch exhausted

    # ----------------------------------------------------------------- results
    def report(self) -> Report:
        """Figures and findings for this rank's steps so far (during or after ``train``).

        Raises:
            RuntimeError: ``Trainer.train`` has not started yet.
        """
        if self._session is None:
            raise RuntimeError("PerfTrainerCallback has no measurements yet: pass it to "
                               "Trainer(callbacks=[...]) and call trainer.train() first")
        return self._session.report()

    # ----------------------------------------------------------------- internals
    def _rec(self) -> StepRecorder:
        assert self._session is not None  # _hook runs only with a session
        return self._session.recorder

    def _close_step(self) -> None:
        if self._step_done:
            self._step_done = False
            self._rec().end_step()

    def _open_outputs(self, trainer: Any, args: Any, session: EngineSession) -> None:
        tb_dir = self._options.logdir or _tensorboard_dir(trainer, args)
        session.open_outputs(
            report_dir=self._options.logdir or tb_dir or Path(args.output_dir),
            tensorboard_dir=tb_dir,
            step_of=lambda index: index + self._axis_offset,
            trace_dir=tb_dir,
            missing_dir="warn",  # train() has started: a missing directory must not stop it
            stacklevel=4,
        )

    def _attach(self, trainer: Any, kwargs: dict[str, Any]) -> None:
        rec = self._rec()
        self._describe_run(kwargs)
        rec.install_gc_probe()
        self._live = True
        if trainer is None:
            warnings.warn("perfcallback: PerfTrainerCallback could not find the Trainer that "
                          "called it; data, forward and backward are not measured (they count "
                          "as 'other')", stacklevel=4)
            return
        guard = self._rec().failopen.guard
        start, end = guard(_HOOKS, rec.phase_start), guard(_HOOKS, rec.phase_end)
        patches = self._patches
        patches.shadow(trainer, "compute_loss", bracket(trainer.compute_loss, FORWARD, start, end))
        accelerator = trainer.accelerator
        patches.shadow(accelerator, "backward", bracket(accelerator.backward, BACKWARD, start, end))
        patches.shadow(trainer, "evaluate", self._timed_evaluate(trainer.evaluate, guard))
        if not callable(getattr(trainer, "get_batch_samples", None)):
            warnings.warn("perfcallback: this Transformers version has no "
                          "Trainer.get_batch_samples; data wait is not measured and counts as "
                          "'other'", stacklevel=4)
            return
        fetch = trainer.get_batch_samples
        close_step = guard(_HOOKS, self._close_step)

        def get_batch_samples(epoch_iterator: Iterator[Any], *a: Any, **kw: Any) -> Any:
            close_step()  # the previous update's step ends where this fetch begins
            return fetch(_TimedIterator(epoch_iterator, rec, guard), *a, **kw)

        patches.shadow(trainer, "get_batch_samples", get_batch_samples)

    def _timed_evaluate(self, evaluate: Callable[..., Any], guard: Any) -> Callable[..., Any]:
        rec = self._rec()
        begin, end = guard(_HOOKS, self._begin_evaluation), guard(_HOOKS, rec.end_validation)

        def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
            begin()
            try:
                return evaluate(*args, **kwargs)
            finally:
                end()

        return timed_evaluate

    def _begin_evaluation(self) -> None:
        self._close_step()  # evaluation runs after an update's step_end: that step is over
        self._rec().begin_validation()

    def _describe_run(self, kwargs: dict[str, Any]) -> None:
        ctx = self._rec().context
        loader = kwargs.get("train_dataloader")
        ctx.loader = loader_facts(loader) if loader is not None else None
        optimizer = kwargs.get("optimizer")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
        if optimizer is not None:
            ctx.optimizer = optimizer_facts(optimizer)
        if kwargs.get("model") is not None:
            ctx.param_dtype = param_dtype(kwargs["model"])

    def _switch_off(self) -> None:
        """Fail-open cleanup: stop acting and unwrap the Trainer."""
        self._live = False
        self._patches.remove()

    def _finish(self) -> None:
        """Unwrap, close the last step and the session (report file, summary). Idempotent."""
        self._switch_off()
        session = self._session
        if session is None or self._finished:
            return
        self._finished = True
        update_ran, self._step_done = self._step_done, False
        session.finish(update_ran=update_ran)


def _calling_trainer() -> Any:
    """The ``Trainer`` whose training loop is calling this event (a few frames up), or ``None``."""
    frame = sys._getframe(1)
    for _ in range(16):  # event <- CallbackHandler.call_event <- on_train_begin <- the loop
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None


def _tensorboard_dir(trainer: Any, args: Any) -> Path | None:
    """The Trainer's TensorBoard directory if ``report_to`` includes tensorboard, else ``None``."""
    if "tensorboard" not in (args.report_to or []):
        return None
    callbacks = trainer.callback_handler.callbacks if trainer is not None else []
    for callback in callbacks:  # TensorBoardCallback resolved its directory in its own
        directory = getattr(callback, "logging_dir", None)  # on_train_begin, which ran first
        if type(callback).__name__ == "TensorBoardCallback" and directory:
            return Path(directory)
    directory = getattr(args, "logging_dir", None)  # Transformers 4.x keeps it on the args
    return Path(directory) if directory else None
