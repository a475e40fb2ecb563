"""PerfMonitor: the context manager a raw PyTorch training loop uses.

It translates a raw loop's events into engine calls: it installs the phase hooks on enter and
removes them on exit, and times batch fetches through :meth:`PerfMonitor.wrap_loader`. Options,
outputs (``perf_report.json``, TensorBoard, traces), rank gating and fail-open are the engine
session's (:mod:`perfcallback.session`).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from perfcallback.context import (
    ddp_facts,
    ddp_runtime_figures,
    is_compiled,
    loader_facts,
    optimizer_facts,
    param_dtype,
)
from perfcallback.distributed import rank_and_world
from perfcallback.hooks import PhaseHooks
from perfcallback.profiling import ProfileOptions
from perfcallback.report import Recommendation, Report
from perfcallback.session import EngineSession, SessionOptions
from perfcallback.sinks import Sink

if TYPE_CHECKING:
    from perfcallback.integrations.deepspeed import DeepSpeedProbe

T = TypeVar("T")
_RECORDER = "recorder"  # fail-open component name of the loop's calls into the recorder


def batch_size_of(batch: Any) -> int:
    """Leading dimension of the first tensor in ``batch`` (tensor, sequence, mapping), else 0.

    Called for every batch: the usual ``(x, y)`` tuple and plain tensor are told by their exact
    type first, because ``isinstance(x, torch.Tensor)`` runs a Python ``__instancecheck__``.
    """
    for _ in range(3):  # look at most three levels deep: cheap, and covers (x, y) and {"x": ...}
        kind = type(batch)
        if kind is tuple and batch:
            batch = batch[0]
            continue
        if kind is torch.Tensor or isinstance(batch, torch.Tensor):
            return int(batch.shape[0]) if batch.dim() else 0
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, Mapping) and batch:
            batch = next(iter(batch.values()))
        else:
            return 0
    return 0


def is_deepspeed_engine(model: object) -> bool:
    """``model`` is a DeepSpeed engine (checked by class name, without importing DeepSpeed)."""
    return model is not None and any(
        cls.__name__ == "DeepSpeedEngine" and cls.__module__.startswith("deepspeed.")
        for cls in type(model).__mro__
    )


def _from_deepspeed(obj: object) -> bool:
    return type(obj).__module__.startswith("deepspeed.")


def model_device(model: torch.nn.Module | None) -> torch.device | None:
    """Device of ``model``'s first parameter (or buffer); ``None`` without either."""
    if model is None:
        return None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


class _StepContext:
    """``with perf.step():`` (reusable; one instance per monitor, so no allocation per step).

    The hot path: entering and leaving call the recorder directly, behind an inline fail-open
    check rather than a :meth:`FailOpen.guard` wrapper, because every Python call made between
    two training steps costs about a microsecond there (the step evicts it from the caches).
    """

    __slots__ = ("_disabled", "_monitor", "_rec", "_trip")

    def __init__(self, monitor: PerfMonitor) -> None:
        self._monitor = monitor
        self._rec = monitor.recorder
        self._disabled = monitor.recorder.failopen.disabled  # read only: a dict shared with it
        self._trip = monitor.recorder.failopen.trip

    def __enter__(self) -> None:
        monitor = self._monitor
        if not monitor._entered or monitor._exited:
            raise RuntimeError(
                "perf.step() must be used inside `with PerfMonitor(...) as perf:`; "
                "enter the monitor first"
            )
        if monitor._stepping:
            raise RuntimeError(
                "perf.step() blocks cannot be nested: one `with perf.step():` per optimizer step"
            )
        monitor._stepping = True
        if monitor._held:
            monitor._held = False
        elif _RECORDER not in self._disabled:
            try:
                self._rec.begin_step()
            except Exception as exc:  # fail open: never let our error reach the training loop
                self._trip(_RECORDER, exc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        monitor = self._monitor
        monitor._stepping = False
        if exc_type is not None:
            monitor._abort_step()
        elif monitor._deepspeed is not None and not monitor._deepspeed.update_done():
            monitor._held = True  # a DeepSpeed micro-batch: the step ends with its optimizer update
        elif _RECORDER not in self._disabled:
            try:
                self._rec.end_step()
            except Exception as error:  # fail open
                self._trip(_RECORDER, error)


class PerfMonitor:
    """Measure where each training step's time goes, in a plain PyTorch loop.

    Args:
        model: The root module; when given, forward and backward are timed through hooks. A
            DeepSpeed engine (from ``deepspeed.initialize``) is timed through its own calls
            (:mod:`perfcallback.integrations.deepspeed`): ``engine.backward`` and
            ``engine.step`` with DeepSpeed's reduction and ZeRO's update, its config quoted.
        optimizer: When given, ``optimizer.step()`` is timed through step hooks. With a DeepSpeed
            engine it is optional, may be DeepSpeed's own optimizer, and only informs the rules.
        logdir: Directory for ``perf_report.json`` and TensorBoard output; ``None`` writes none.
        warmup_steps: Leading steps left out of the figures.
        window_steps: Steps per window; rules and sinks run once per window. ``None``: at least
            25 steps and 0.25 s, at most 250 (so a fast loop does not pay for ~80 windows a
            second); 25 under torch.distributed, where ranks compare windows by number.
        on_recommendation: Called with each new or updated :class:`Recommendation`.
        disabled_rules: Rule ids (``"gc.pauses"``) or categories (``"gc"``) to silence.
        thresholds: Overrides of rule thresholds by name.
        log_recommendations: Emit findings on the ``perfcallback`` logger as they appear.
        sinks: Extra sinks.
        tensorboard: Write ``perf/...`` scalars and the recommendations table to ``logdir``
            (:class:`~perfcallback.sinks.tensorboard.TensorBoardSink`). ``None``: when a logdir is
            given, with a warning naming the ``tensorboard`` extra if it is missing.
        profile: ``torch.profiler`` trace capture into ``logdir`` (``True``, ``False`` or a
            :class:`~perfcallback.profiling.ProfileOptions`). ``None``: the default options (one
            early capture, plus captures triggered by a slowdown) when a logdir is given. Profiled
            steps are left out of the figures.
        all_ranks: Under torch.distributed, also log findings, capture traces and write a report
            file (``perf_report.rank<N>.json``) on ranks other than zero. Every rank always
            measures itself, and ``report()`` works on every rank. Create the monitor after
            ``init_process_group`` so it knows its rank.
        recorder_kwargs: Passed through to :class:`StepRecorder` (``buffer_steps``, ``clock``, ...).

    Example::

        >>> import torch
        >>> from perfcallback import PerfMonitor
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> data = [torch.randn(8, 4) for _ in range(10)]
        >>> with PerfMonitor(model=model, optimizer=opt, warmup_steps=2) as perf:
        ...     for x in perf.wrap_loader(data):
        ...         with perf.step():
        ...             model(x).sum().backward()
        ...             opt.step()
        ...             opt.zero_grad()
        >>> perf.report().steps
        8
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        logdir: str | os.PathLike[str] | None = None,
        *,
        warmup_steps: int = 5,
        window_steps: int | None = None,
        on_recommendation: Callable[[Recommendation], object] | None = None,
        disabled_rules: Sequence[str] = (),
        thresholds: Mapping[str, float] | None = None,
        log_recommendations: bool = True,
        sinks: Sequence[Sink] = (),
        tensorboard: bool | None = None,
        profile: bool | ProfileOptions | None = None,
        all_ranks: bool = False,
        **recorder_kwargs: Any,
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        deepspeed = is_deepspeed_engine(model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and not (
            deepspeed and _from_deepspeed(optimizer)
        ):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        options = SessionOptions.from_kwargs(
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
        if type(optimizer).__module__.startswith("accelerate."):
            # Accelerate's AcceleratedOptimizer never runs Optimizer.__init__ (no step hooks of
            # its own): hook the torch optimizer it steps.
            optimizer = getattr(optimizer, "optimizer", optimizer)
        self._model, self._optimizer = model, optimizer
        self.logdir = options.logdir
        self.rank, world_size = rank_and_world()
        device = model_device(model)  # no CUDA call: a parameter's device attribute
        self.session = EngineSession(options, rank=self.rank, world_size=world_size,
                                     device_type=device.type if device is not None else None)
        self.recorder = self.session.recorder
        if device is not None and device.type == "cuda":
            self.recorder.device = device  # events, allocator stats and NVML on this device
        context = self.recorder.context
        self._deepspeed: DeepSpeedProbe | None = None
        if deepspeed:  # imported only for a DeepSpeed engine: the core never imports DeepSpeed
            from perfcallback.integrations import deepspeed as ds

            self._optimizer = None  # engine.step() is timed as a whole, not the inner step
            optimizer = ds.torch_optimizer(optimizer or model.optimizer)  # type: ignore[union-attr]
            context.extra["deepspeed"] = ds.config_facts(model)
        if optimizer is not None:
            context.optimizer = optimizer_facts(optimizer)
        if model is not None:  # facts the precision and recompilation rules quote
            context.param_dtype = param_dtype(model)
            context.compile_in_use = is_compiled(model)
            ddp = ddp_facts(model)
            if ddp is not None:
                context.extra["ddp"] = ddp
                self.recorder.comm_sources.append(functools.partial(ddp_runtime_figures, model))
        # stacklevel 2 from open_outputs: the warning points at the user's PerfMonitor(...) line
        self.session.open_outputs(
            report_dir=self.logdir,
            tensorboard_dir=self.logdir,
            trace_dir=self.logdir,
            stacklevel=2,
        )
        self._hooks: PhaseHooks | None = None
        self._entered = False
        self._exited = False
        self._stepping = False  # the monitor's own view: valid even if the recorder is off
        self._held = False  # the step stays open across step blocks until the update (DeepSpeed)
        # The loop's other calls into the recorder, behind the fail-open guard: an internal error
        # switches measuring off ("recorder" in Report.disabled) and training goes on. The calls
        # made every step (_StepContext, _timed_iter) check it inline instead.
        guard = self.session.failopen.guard
        rec = self.recorder
        self._abort_step = guard(_RECORDER, rec.abort_step)
        self._abort_fetch = guard(_RECORDER, rec.abort_fetch)
        self._step_ctx = _StepContext(self)

    # ----------------------------------------------------------------- context manager
    def __enter__(self) -> PerfMonitor:
        if self._entered:
            raise RuntimeError("PerfMonitor is not re-entrant: create a new PerfMonitor per run")
        self._entered = True
        self._hooks = PhaseHooks(self.recorder, self._model, self._optimizer)
        if "deepspeed" in self.recorder.context.extra:
            from perfcallback.integrations.deepspeed import DeepSpeedProbe

            self._deepspeed = DeepSpeedProbe(self.recorder, self._model)
        self.recorder.install_gc_probe()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.recorder.in_step:
                self.recorder.abort_step()
            if self._hooks is not None:
                self._hooks.remove()
            if self._deepspeed is not None:
                self._deepspeed.remove()
        finally:
            self._exited = True
            self.session.close()
        # never suppress the user's exception: return None

    # ----------------------------------------------------------------- loop API
    def wrap_loader(self, loader: Iterable[T]) -> Iterator[T]:
        """Yield the items of ``loader`` unchanged, timing how long each one takes to arrive.

        Raises:
            TypeError: ``loader`` is not iterable.
        """
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"wrap_loader() needs an iterable, got {type(loader).__name__}")
        facts = loader_facts(loader)
        if facts is not None:
            self.recorder.context.loader = facts
        return self._timed_iter(iter(loader))

    def _timed_iter(self, it: Iterator[T]) -> Iterator[T]:
        rec, abort_fetch = self.recorder, self._abort_fetch
        disabled, trip = rec.failopen.disabled, rec.failopen.trip  # inline guard: _StepContext
        while True:
            if _RECORDER not in disabled:
                try:
                    rec.data_begin()
                except Exception as exc:  # fail open
                    trip(_RECORDER, exc)
            try:
                item = next(it)
            except StopIteration:
                abort_fetch()
                return
            if _RECORDER not in disabled:
                try:
                    rec.data_end(batch_size_of(item))
                except Exception as exc:  # fail open
                    trip(_RECORDER, exc)
            yield item

    def step(self) -> _StepContext:
        """Context manager around one training iteration (one optimizer step).

        With a DeepSpeed engine, one block per micro-batch is fine: blocks whose
        ``engine.step()`` does not reach the gradient-accumulation boundary are joined with the
        next, so a step is one optimizer update either way.

        Raises:
            RuntimeError: used outside the ``with PerfMonitor(...)`` block, or nested.
        """
        return self._step_ctx

    # ----------------------------------------------------------------- results
    def report(self) -> Report:
        """Figures and findings for the steps measured so far (inside or after the with-block)."""
        return self.session.report()
