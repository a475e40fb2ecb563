"""perfcallback: where each training step's time goes, and what to change to make it faster.

Public API: :class:`PerfMonitor` (raw PyTorch loops), :class:`PerfCallback` (Lightning),
:class:`Report`, :class:`Recommendation`.

Every public class is imported on first use (PEP 562 ``__getattr__``), so importing a submodule
such as ``perfcallback.cli`` or ``perfcallback.trace`` does not import torch: ``perfcallback
analyze`` starts in milliseconds instead of the ~1.6 s torch takes to import. ``from perfcallback
import PerfMonitor`` works as before and imports torch then.

Without Lightning installed, ``from perfcallback import PerfCallback`` raises an ``ImportError``
naming the ``lightning`` extra; so does ``hasattr(perfcallback, "PerfCallback")``, because
``hasattr`` only swallows ``AttributeError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from perfcallback._version import __version__

if TYPE_CHECKING:
    from perfcallback.integrations.lightning import PerfCallback
    from perfcallback.monitor import PerfMonitor
    from perfcallback.report import Recommendation, Report

__all__ = ["PerfCallback", "PerfMonitor", "Recommendation", "Report", "__version__"]

# public name -> module that defines it; imported by __getattr__ on first access
_LAZY: dict[str, str] = {
    "PerfCallback": "perfcallback.integrations.lightning",  # imports Lightning
    "PerfMonitor": "perfcallback.monitor",  # imports torch
    "Recommendation": "perfcallback.report",
    "Report": "perfcallback.report",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
