"""The ``perfcallback`` TensorBoard plugin: routes, data reading and static assets.

TensorBoard finds it through the ``tensorboard_plugins`` entry point and loads it as a dynamic
plugin: its tab is an iframe that imports ``/data/plugin/perfcallback/index.js``; that module
fetches the JSON routes below (relative URLs, same origin) and draws with SVG. Every asset is
in ``static/`` of this package, so the tab works on a machine with no internet access.

Routes (under ``/data/plugin/perfcallback``):
    /index.js, /charts.js, /style.css   the frontend
    /runs                               runs with perfcallback data, and their captures
    /run?run=R                          breakdown, groups, findings history, ranks, report
    /trace?run=R&capture=C              ``perfcallback analyze --json`` figures of one capture
    /diff?a=R&ac=C&b=R&bc=C             ``perfcallback diff --json`` of capture B against A
    /download?run=R&capture=C&file=F    a raw trace file (for Perfetto)

Design notes:
- Event data is read through TensorBoard's data provider (the same reader every other tab uses,
  including the Rust data server), never by opening event files ourselves.
- Bad parameters answer 400 and problems with the run's data answer 200 with an ``error`` for
  the pane; an unexpected failure is logged with its traceback and answers a JSON 500 message.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from importlib import resources
from typing import Any

from perfcallback._optional import require
from perfcallback.dashboard import files, runview, traces

base_plugin = require("tensorboard.plugins.base_plugin", extra="tensorboard")
plugin_util = require("tensorboard.plugin_util", extra="tensorboard")
werkzeug_wrappers = require("werkzeug.wrappers", extra="tensorboard")
werkzeug_utils = require("werkzeug.utils", extra="tensorboard")

logger = logging.getLogger(__name__)

PLUGIN_NAME = "perfcallback"
_STATIC = {"index.js": "text/javascript", "charts.js": "text/javascript",
           "style.css": "text/css"}
_SCALARS_PLUGIN = "scalars"  # how TensorBoard files torch's add_scalar data
_TEXT_PLUGIN = "text"
_DOWNSAMPLE = 10_000  # points per tag; a window is 25 steps, so ~250k steps before thinning
Handler = Callable[[Any], Any]


class _BadRequest(ValueError):
    """A missing or invalid request parameter (answered with 400)."""


def _json_response(request: Any, payload: Any, code: int = 200) -> Any:
    body = json.dumps(payload, default=_jsonable, allow_nan=False)
    return werkzeug_wrappers.Response(body, status=code, content_type="application/json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _route(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap a handler: JSON errors instead of tracebacks, 400 for what the caller got wrong."""

    @functools.wraps(fn)
    def handler(self: Any, request: Any) -> Any:
        try:
            return fn(self, request)
        except (_BadRequest, files.UnsafePathError) as exc:
            return _json_response(request, {"error": str(exc)}, 400)
        except Exception as exc:  # a pane must show a message, not a server traceback
            logger.exception("perfcallback dashboard: %s failed", request.path)
            return _json_response(request, {"error": f"internal error: {exc!r}"}, 500)

    return werkzeug_wrappers.Request.application(handler)  # type: ignore[no-any-return]


def _arg(request: Any, name: str) -> str:
    value = request.args.get(name)
    if not value:
        raise _BadRequest(f"missing query parameter {name!r}")
    return str(value)


_TBPlugin: Any = base_plugin.TBPlugin


class PerfDashboardPlugin(_TBPlugin):  # type: ignore[misc]
    """Performance pane for runs written by perfcallback (see the module docstring).

    Args:
        context: TensorBoard's ``TBContext`` (its ``logdir`` and ``data_provider`` are used).
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._logdir: str = context.logdir or ""
        self._provider = context.data_provider
        self._traces = traces.TraceCache()
        self._active = False  # once True, stays True (runs do not lose their data)

    def get_plugin_apps(self) -> dict[str, Handler]:
        apps: dict[str, Handler] = {f"/{name}": self._static for name in _STATIC}
        apps.update({"/runs": self._runs, "/run": self._run, "/trace": self._trace,
                     "/diff": self._diff, "/download": self._download})
        return apps

    def frontend_metadata(self) -> Any:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Perf")

    def is_active(self) -> bool:
        if not self._active and self._provider is not None:
            from tensorboard import context as tb_context

            self._active = bool(self._perf_runs(tb_context.RequestContext(), ""))
        return self._active

    # ----------------------------------------------------------------- data
    def _scalars(self, ctx: Any, eid: str, run: str | None = None) -> dict[str, Any]:
        filt = None
        if run is not None:
            provider = require("tensorboard.data.provider", extra="tensorboard")
            filt = provider.RunTagFilter(runs=[run])
        return self._provider.read_scalars(  # type: ignore[no-any-return]
            ctx, experiment_id=eid, plugin_name=_SCALARS_PLUGIN, downsample=_DOWNSAMPLE,
            run_tag_filter=filt)

    def _texts(self, ctx: Any, eid: str, run: str) -> list[tuple[int, str]]:
        provider = require("tensorboard.data.provider", extra="tensorboard")
        filt = provider.RunTagFilter(runs=[run], tags=list(runview.TEXT_TAGS))
        data = self._provider.read_tensors(ctx, experiment_id=eid, plugin_name=_TEXT_PLUGIN,
                                           downsample=_DOWNSAMPLE, run_tag_filter=filt)
        out = []
        for datum in (d for tag in runview.TEXT_TAGS for d in data.get(run, {}).get(tag, [])):
            value = datum.numpy.item() if datum.numpy.size == 1 else b""
            out.append((datum.step, value.decode("utf-8", "replace")
                        if isinstance(value, bytes) else str(value)))
        return out

    def _perf_runs(self, ctx: Any, eid: str) -> list[str]:
        listing = self._provider.list_scalars(ctx, experiment_id=eid,
                                              plugin_name=_SCALARS_PLUGIN)
        runs = {run for run, tags in listing.items()
                if any(t.startswith(runview.PREFIX) for t in tags)}
        for run in self._provider.list_runs(ctx, experiment_id=eid):
            name = run.run_name
            if name not in runs and self._logdir and self._has_files(name):
                runs.add(name)
        return sorted(runs)

    def _has_files(self, run: str) -> bool:
        try:
            folder = files.run_dir(self._logdir, run)
        except files.UnsafePathError:
            return False
        return (folder / files.REPORT_FILE).is_file() or bool(files.list_captures(folder))

    def _folder(self, run: str) -> Any:
        return files.run_dir(self._logdir, run)

    # ----------------------------------------------------------------- routes
    @_route
    def _static(self, request: Any) -> Any:
        name = request.path.rsplit("/", 1)[-1]
        body = (resources.files("perfcallback.dashboard") / "static" / name).read_bytes()
        return werkzeug_wrappers.Response(body, content_type=_STATIC[name])

    @_route
    def _runs(self, request: Any) -> Any:
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        out = []
        for run in self._perf_runs(ctx, eid):
            try:
                captures = [c.name for c in files.list_captures(self._folder(run))]
            except files.UnsafePathError:
                captures = []
            out.append({"run": run, "captures": captures})
        return _json_response(request, {"runs": out, "logdir": self._logdir})

    @_route
    def _run(self, request: Any) -> Any:
        run = _arg(request, "run")
        ctx, eid = plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)
        series = {tag: [(d.step, d.value) for d in data]
                  for tag, data in self._scalars(ctx, eid, run).get(run, {}).items()}
        report, report_error = (None, None)
        captures: list[dict[str, Any]] = []
        if self._logdir:
            folder = self._folder(run)
            report, report_error = files.read_report(folder)
            captures = [c.to_dict() for c in files.list_captures(folder)]
        view = runview.run_view(series, self._texts(ctx, eid, run), report)
        messages = [report_error] if report_error else []
        if not view["breakdown"]["steps"]:
            messages.append("no perf/phase/... scalars in this run yet (they are written once "
                            "per window of steps)")
        return _json_response(request, {"run": run, **view, "captures": captures,
                                         "messages": messages})

    @_route
    def _trace(self, request: Any) -> Any:
        folder = self._folder(_arg(request, "run"))
        capture = files.find_capture(folder, _arg(request, "capture"))
        return _json_response(request, traces.capture_view(self._traces, capture))

    @_route
    def _diff(self, request: Any) -> Any:
        a = files.find_capture(self._folder(_arg(request, "a")), _arg(request, "ac"))
        b = files.find_capture(self._folder(_arg(request, "b")), _arg(request, "bc"))
        return _json_response(request, traces.diff_view(self._traces, a, b))

    @_route
    def _download(self, request: Any) -> Any:
        folder = self._folder(_arg(request, "run"))
        path = files.trace_file(folder, _arg(request, "capture"), _arg(request, "file"))
        mimetype = "application/gzip" if path.name.endswith(".gz") else "application/json"
        return werkzeug_utils.send_file(path, request.environ, mimetype=mimetype,
                                        as_attachment=True, download_name=path.name)
