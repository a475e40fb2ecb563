"""Fail open: an error inside perfcallback switches that component off and never reaches training.

This is the one fail-open mechanism of the engine: every probe, hook, rule pass, sink call, the
profiler and the adapters' framework hooks run behind :meth:`FailOpen.guard` or
:meth:`FailOpen.call`. The first error of a component is logged once, the component is marked
disabled, later calls to it return immediately, and cleanups registered with
:meth:`FailOpen.on_trip` run (a profiler stops its capture, an adapter removes its wrappers).
What was switched off, and why, is listed in the Report.

Not every error is ours, so the message says whose it is:

- a bug in perfcallback: logged with its traceback and "please report this";
- the user's own code (``on_recommendation`` callbacks, components named ``user:...``): the
  traceback of their code, and no request to report it;
- the machine refusing an output (an ``OSError`` such as a full disk or a read-only logdir): one
  line naming the file and the reason; that output is off, measuring goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("perfcallback")

F = TypeVar("F", bound=Callable[..., Any])
USER_PREFIX = "user:"  # components that run the user's code


class FailOpen:
    """Tracks which components are switched off; one instance per engine session."""

    def __init__(self) -> None:
        self.disabled: dict[str, str] = {}
        self._cleanups: dict[str, list[Callable[[], object]]] = {}

    def trip(self, component: str, exc: BaseException) -> None:
        """Switch ``component`` off after ``exc``, log it once and run its cleanups."""
        if component in self.disabled:
            return
        self.disabled[component] = f"{type(exc).__name__}: {exc}"
        _log_trip(component, exc)
        for cleanup in self._cleanups.pop(component, ()):
            try:
                cleanup()
            except Exception:  # already failing; the first error is the one that matters
                logger.debug("perfcallback: cleanup of %s failed", component, exc_info=True)

    def mark_off(self, component: str, reason: str) -> None:
        """Record ``component`` as off for a reason already told to the user (no log here)."""
        self.disabled.setdefault(component, reason)
        self._cleanups.pop(component, None)

    def on_trip(self, component: str, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` once when ``component`` is switched off."""
        self._cleanups.setdefault(component, []).append(cleanup)

    def is_on(self, component: str) -> bool:
        return component not in self.disabled

    def call(self, component: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or ``None`` when ``component`` is off or ``fn`` raises."""
        if component in self.disabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # fail open: never let our error reach the training loop
            self.trip(component, exc)
            return None

    def guard(self, component: str, fn: F) -> F:
        """Wrap ``fn`` so that an exception trips ``component`` instead of propagating."""

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if component in self.disabled:
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # fail open: never let our error reach the training loop
                self.trip(component, exc)
                return None

        return guarded  # type: ignore[return-value]


def _log_trip(component: str, exc: BaseException) -> None:
    if component.startswith(USER_PREFIX):
        logger.error(
            "perfcallback: your %s raised %s: %s; perfcallback stops calling it and training "
            "goes on.", component.removeprefix(USER_PREFIX), type(exc).__name__, exc,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    elif isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        logger.warning(
            "perfcallback: %s failed: %s%s; it is switched off, training and measuring go on.",
            component, exc.strerror or exc, where,
        )
    else:
        logger.error(
            "perfcallback: internal error in %s; it is switched off and training goes on. "
            "Please report this with the traceback below.",
            component,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
