"""Fail open: an error inside perfcallback switches that component off and never reaches training.

Every probe, hook, rule pass and sink call runs behind :meth:`FailOpen.guard`. The first error of a
component is logged once with its traceback, the component is marked disabled, and later calls to
it return immediately. What was switched off, and why, is listed in the Report.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("perfcallback")

F = TypeVar("F", bound=Callable[..., Any])


class FailOpen:
    """Tracks which components are switched off; one instance per monitor."""

    def __init__(self) -> None:
        self.disabled: dict[str, str] = {}

    def trip(self, component: str, exc: BaseException) -> None:
        """Switch ``component`` off after ``exc`` and log it once, with its traceback."""
        if component in self.disabled:
            return
        self.disabled[component] = f"{type(exc).__name__}: {exc}"
        logger.error(
            "perfcallback: internal error in %s; it is switched off and training goes on. "
            "Please report this with the traceback below.",
            component,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def is_on(self, component: str) -> bool:
        return component not in self.disabled

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
