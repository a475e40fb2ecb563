"""Where figures and findings go. :class:`Sink` is the null object: every method does nothing.

Sinks receive a window summary every N steps and recommendation events as they happen; they never
run per step. The recorder calls each sink behind a fail-open guard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from perfcallback.report import Recommendation
from perfcallback.stats import WindowStats

logger = logging.getLogger("perfcallback")

_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


class Sink:
    """Base class and null sink: override what you need.

    ``failopen_name``, when set, is the name the sink is switched off under after an error
    (default ``sink[<position>]:<class>``); a name starting ``user:`` marks the user's own code.
    """

    failopen_name: str | None = None

    def on_window(self, stats: WindowStats) -> None:
        """A window of steps was summarised."""

    def on_recommendation(self, event: str, rec: Recommendation) -> None:
        """A finding became active (``"new"``), changed (``"updated"``) or ended."""

    def close(self) -> None:
        """The run ended; flush and release resources."""


class LoggingSink(Sink):
    """Emits findings on the ``perfcallback`` logger at the matching level, one line each."""

    def on_recommendation(self, event: str, rec: Recommendation) -> None:
        if event == "resolved":
            logger.info("perfcallback resolved: %s", rec.rule)
        else:
            logger.log(_LEVEL[rec.severity], "perfcallback %s", rec.one_line())


class CallbackSink(Sink):
    """Calls a user function ``fn(rec)`` for every new or updated finding."""

    failopen_name = "user:on_recommendation callback"

    def __init__(self, fn: Callable[[Recommendation], object]) -> None:
        self._fn = fn

    def on_recommendation(self, event: str, rec: Recommendation) -> None:
        if event != "resolved":
            self._fn(rec)
