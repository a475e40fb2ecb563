"""Where :class:`~perfcallback.integrations.lightning.PerfCallback` reaches into the Trainer.

The callback's public hooks see backward and batch boundaries; the other phases need wrappers
around Trainer calls, installed on the *instances* (never on classes) and removed at fit end:

- **data**: the training epoch loop calls ``_on_before_fetch``/``_on_after_fetch`` around
  ``next(iterator)`` inside ``_DataFetcher.__next__``. That is the exact blocking fetch (the same
  pair feeds the profiler's ``train_dataloader_next`` action), with prefetching fetchers and
  ``dataloader_iter`` training steps alike. Both names are private (present since Lightning 1.8):
  they are shadowed on the loop *instance*, because the loop re-binds them to the fetcher at every
  epoch start. If they are missing, data wait is not measured (one warning) and becomes "other".
- **forward**: ``trainer.strategy.training_step``, wrapped on the strategy instance. Every strategy
  routes ``training_step`` through it, in automatic and manual optimization.
- **optimizer**: ``trainer.strategy.optimizer_step``, wrapped on the strategy instance. It covers
  ``LightningOptimizer.step``, the closure machinery, gradient clipping and the AMP scaler. In
  automatic optimization Lightning runs ``training_step`` and backward *inside* it; the recorder's
  exclusive accounting subtracts those.
- **autocast**: ``lightning_module.training_step``, wrapped on the module instance, samples
  autocast once per window *inside* the precision plugin's context (``precision="bf16-mixed"``
  enters autocast within ``strategy.training_step``, after the forward phase has started).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from perfcallback.integrations._patch import InstancePatches, bracket
from perfcallback.recorder import StepRecorder
from perfcallback.stats import FORWARD, OPTIMIZER

PROBE = "lightning_probe"  # fail-open component name of the wrapped Trainer calls


def _sampling_autocast(fn: Callable[..., Any], recorder: StepRecorder,
                       sample: Callable[[], Any]) -> Callable[..., Any]:
    """``fn`` (the user's ``training_step``), sampling autocast first when a sample is due."""

    def training_step(*args: Any, **kwargs: Any) -> Any:
        if recorder.autocast_pending:
            sample()
        return fn(*args, **kwargs)

    return training_step


def _then(fn: Callable[[], Any], event: Callable[[], Any]) -> Callable[[], None]:
    def wrapper() -> None:
        fn()
        event()

    return wrapper


def _first(event: Callable[[], Any], fn: Callable[[], Any]) -> Callable[[], None]:
    def wrapper() -> None:
        event()
        fn()

    return wrapper


class TrainerProbes:
    """Shadows, on the instances, the Trainer calls that bracket data fetch, forward and optimizer.

    Each target is looked up on its instance at call time, so an instance attribute reaches every
    call; :meth:`remove` deletes ours again (only where ours is still in place).

    Args:
        recorder: Receives the phase and fetch events (each guarded: an error switches it off).
        trainer: The Trainer being fitted.
        fetch_begins: Called when the loop starts waiting for a batch (the callback closes the
            previous step there, then calls ``recorder.data_begin``).
    """

    def __init__(
        self, recorder: StepRecorder, trainer: Any, fetch_begins: Callable[[], None]
    ) -> None:
        self._patches = InstancePatches()
        guard = recorder.failopen.guard
        start, end = guard(PROBE, recorder.phase_start), guard(PROBE, recorder.phase_end)
        strategy = trainer.strategy
        # The LightningModule's optimizer_step hook is the outermost optimizer call of automatic
        # optimization (user overrides included); the strategy's also covers manual optimization.
        module = trainer.lightning_module
        for obj, name, phase in (
            (strategy, "training_step", FORWARD),
            (strategy, "optimizer_step", OPTIMIZER),
            (module, "optimizer_step", OPTIMIZER),
        ):
            self._patches.shadow(obj, name, bracket(getattr(obj, name), phase, start, end))
        user_step = getattr(module, "training_step", None)
        if user_step is not None:
            sample = guard(PROBE, recorder.sample_autocast)
            sampling = _sampling_autocast(user_step, recorder, sample)
            self._patches.shadow(module, "training_step", sampling)
        loop = trainer.fit_loop.epoch_loop
        if not (hasattr(loop, "_on_before_fetch") and hasattr(loop, "_on_after_fetch")):
            warnings.warn(
                "perfcallback: this Lightning version has no fetch hooks on its training loop; "
                "data wait is not measured and counts as 'other'",
                stacklevel=2,
            )
            return
        # The profiler's own start/stop stay outside the measured fetch.
        self._patches.shadow(
            loop,
            "_on_before_fetch",
            _then(loop._on_before_fetch, guard(PROBE, fetch_begins)),
        )
        self._patches.shadow(
            loop, "_on_after_fetch", _first(guard(PROBE, recorder.data_end), loop._on_after_fetch)
        )

    def remove(self) -> None:
        """Restore every shadowed call (unless replaced since). Idempotent."""
        self._patches.remove()
