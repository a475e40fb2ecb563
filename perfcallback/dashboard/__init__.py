"""The ``perfcallback`` TensorBoard plugin: a maintained, offline performance view of a run.

TensorBoard loads :class:`~perfcallback.dashboard.plugin.PerfDashboardPlugin` through the
``tensorboard_plugins`` entry point (``pip install 'perfcallback[tensorboard]'``). The backend is
split so that most of it needs no TensorBoard: ``files`` (the run's folder, report and captures),
``runview`` (scalars and tables into pane data), ``traces`` (captures through
:mod:`perfcallback.trace`); only ``plugin`` imports TensorBoard. The frontend is plain
JavaScript and SVG in ``static/``: nothing is fetched from outside the TensorBoard server.

Importing this package imports no TensorBoard; ``PerfDashboardPlugin`` is resolved on first use
and raises :class:`perfcallback._optional.MissingExtraError` naming the extra when TensorBoard is
missing.
"""

from __future__ import annotations

__all__ = ["PerfDashboardPlugin"]


def __getattr__(name: str) -> object:
    if name == "PerfDashboardPlugin":  # imports TensorBoard, so only on first use
        from perfcallback.dashboard.plugin import PerfDashboardPlugin

        return PerfDashboardPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
