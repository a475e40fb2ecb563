"""perfcallback: where each training step's time goes, and what to change to make it faster.

Public API: :class:`PerfMonitor` (raw PyTorch loops), :class:`PerfCallback` (Lightning; imported on
first use, so ``import perfcallback`` needs only torch), :class:`Report`, :class:`Recommendation`.

Without Lightning installed, ``from perfcallback import PerfCallback`` raises an ``ImportError``
naming the ``lightning`` extra; so does ``hasattr(perfcallback, "PerfCallback")``, because
``hasattr`` only swallows ``AttributeError``.
"""

from __future__ import annotations

from perfcallback._version import __version__
from perfcallback.monitor import PerfMonitor
from perfcallback.report import Recommendation, Report

__all__ = ["PerfCallback", "PerfMonitor", "Recommendation", "Report", "__version__"]


def __getattr__(name: str) -> object:
    if name == "PerfCallback":  # imports Lightning, so only on first use
        from perfcallback.integrations.lightning import PerfCallback

        return PerfCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
