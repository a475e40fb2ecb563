"""The ``perfcallback`` TensorBoard plugin's backend, over real event files and real traces.

Runs are written by a real ``PerfMonitor`` on CPU (and, for the per-rank view the engine does not
write yet, by ``SummaryWriter`` with the documented tags); the plugin reads them through
TensorBoard's own data provider and answers through its WSGI routes, as in a real TensorBoard.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from perfcallback import PerfMonitor
from perfcallback.dashboard import runview
from perfcallback.report import PHASES
from perfcallback.trace import analyze_path

from _helpers import make_loader, read_events, tiny_model

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

TRACES = Path(__file__).parent / "data" / "traces"


def _train(logdir: Path, *, sleep_s: float, steps: int = 40) -> PerfMonitor:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(n=8 * steps, batch_size=8, sleep_s=sleep_s)
    with PerfMonitor(model=model, optimizer=opt, logdir=logdir, window_steps=5,
                     log_recommendations=False) as perf:
        for x, y in perf.wrap_loader(loader):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    return perf


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stall``: a PerfMonitor run whose loader sleeps (a dataloader finding); ``gpu``: a run
    folder holding real GPU traces from tests/data as two captures; ``empty``: an event file only."""
    root = tmp_path_factory.mktemp("dash")
    _train(root / "stall", sleep_s=0.002)
    for name, scenario in (("a-full", "overlap_full"), ("b-late", "two_ranks_late_allreduce")):
        capture = root / "gpu" / "profiler" / name
        capture.mkdir(parents=True)
        for f in (TRACES / scenario).iterdir():
            shutil.copy(f, capture / f.name.replace(".json", ".pt.trace.json"))
    from torch.utils.tensorboard import SummaryWriter

    for run in ("gpu", "empty"):
        with SummaryWriter(root / run) as w:
            w.add_scalar("perf/step_ms", 1.0, 1)
    return root


@pytest.fixture(scope="module")
def client(logdir: Path) -> Client:
    """The plugin's routes over TensorBoard's multiplexer data provider for ``logdir``."""
    from perfcallback.dashboard.plugin import PerfDashboardPlugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(mux, str(logdir))
    plugin = PerfDashboardPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))
    apps = plugin.get_plugin_apps()

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        return apps[environ["PATH_INFO"]](environ, start_response)

    return Client(dispatch)


def get(client: Client, path: str, **params: str) -> tuple[int, Any]:
    response = client.get(path, query_string=params)
    return response.status_code, json.loads(response.get_data())


def test_runs_lists_perf_runs_and_their_captures(client: Client) -> None:
    status, body = get(client, "/runs")
    assert status == 200
    runs = {r["run"]: r["captures"] for r in body["runs"]}
    assert set(runs) == {"stall", "gpu", "empty"}
    assert runs["gpu"] == ["a-full", "b-late"]
    assert runs["stall"], "the monitor's scheduled capture is listed"


def test_run_breakdown_matches_the_event_file(client: Client, logdir: Path) -> None:
    status, view = get(client, "/run", run="stall")
    assert status == 200 and view["messages"] == []
    acc = read_events(logdir / "stall")
    step_ms = {e.step: e.value for e in acc.Scalars("perf/step_ms")}
    bd = view["breakdown"]
    assert bd["steps"] == sorted(step_ms) and len(bd["steps"]) >= 3
    assert set(bd["phases"]) == set(PHASES)
    for i, step in enumerate(bd["steps"]):  # the stack adds up to the step time, window by window
        total = sum(bd["phases"][p][i] for p in PHASES)
        assert total == pytest.approx(step_ms[step], rel=1e-3)
    assert set(view["groups"]) >= {"throughput", "memory", "gc"}
    assert [s for s, _ in view["groups"]["throughput"]["steps_per_s"]] == bd["steps"]
    assert view["ranks"] is None  # a single-process run has no per-rank view


def test_run_findings_history_and_evidence(client: Client, logdir: Path) -> None:
    _, view = get(client, "/run", run="stall")
    assert view["severity"]["dataloader"], "the dataloader severity track"
    assert max(v for _, v in view["severity"]["dataloader"]) >= 2
    fired = [e for e in view["history"] if any(f["rule"] == "dataloader.stall"
                                               for f in e["findings"])]
    assert fired and "num_workers" in fired[0]["findings"][0]["message"]
    report = json.loads((logdir / "stall" / "perf_report.json").read_text())
    rules = {r["rule"]: r for r in view["findings"]}
    assert rules["dataloader.stall"]["evidence"] == next(
        r for r in report["recommendations"] if r["rule"] == "dataloader.stall")["evidence"]
    assert view["report"]["steps"] == report["steps"]


def test_trace_route_gives_the_cli_figures(client: Client, logdir: Path) -> None:
    status, body = get(client, "/trace", run="gpu", capture="a-full")
    assert status == 200 and body["error"] is None
    rank0 = body["analysis"]["ranks"]["0"]
    assert rank0["comm_comp_overlap_pct"] == pytest.approx(100.0)  # the scenario's known answer
    expected = analyze_path(logdir / "gpu" / "profiler" / "a-full", skip_bad=True,
                            require_gpu=False).to_dict()
    assert body["analysis"]["ranks"] == expected["ranks"]
    _, two = get(client, "/trace", run="gpu", capture="b-late")
    assert set(two["analysis"]["ranks"]) == {"0", "1"}
    assert two["analysis"]["cross_rank"]["slowest_rank"] is not None


def test_trace_route_has_the_operator_table(client: Client, logdir: Path) -> None:
    """The monitor's own capture of a real (CPU) training run: its operators, as the CLI gives."""
    _, runs = get(client, "/runs")
    capture = next(r["captures"][0] for r in runs["runs"] if r["run"] == "stall")
    status, body = get(client, "/trace", run="stall", capture=capture)
    assert status == 200 and body["error"] is None
    ops = body["analysis"]["ranks"]["0"]["operators"]
    expected = analyze_path(logdir / "stall" / "profiler" / capture, skip_bad=True,
                            require_gpu=False).to_dict()["ranks"]["0"]["operators"]
    assert ops == expected
    names = {o["name"] for o in ops}
    assert "aten::addmm" in names or "aten::linear" in names  # tiny_model's Linear layers
    assert all(0 <= o["host_self_us"] <= o["host_total_us"] and o["calls"] >= 1 for o in ops)
    assert all(o["device_self_us"] == 0 for o in ops)  # a CPU run launches no kernels


def test_diff_route_is_perfcallback_diff(client: Client, logdir: Path) -> None:
    from perfcallback.cli import main

    status, body = get(client, "/diff", a="gpu", ac="a-full", b="gpu", bc="b-late")
    assert status == 200 and body["error"] is None
    keys = [m["key"] for m in body["diff"]["metrics"]]
    assert "comm_comp_overlap_pct" in keys and body["diff"]["kernels"]
    capsys_out = _cli_json(main, ["diff", str(logdir / "gpu/profiler/a-full"),
                                  str(logdir / "gpu/profiler/b-late"), "--json"])
    assert body["diff"]["metrics"] == capsys_out["metrics"]


def _cli_json(main: Any, argv: list[str]) -> Any:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_download_serves_exactly_the_listed_trace(client: Client, logdir: Path) -> None:
    name = "rank-0.pt.trace.json.gz"
    response = client.get("/download", query_string={"run": "gpu", "capture": "a-full",
                                                     "file": name})
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    raw = response.get_data()
    response.close()  # the file is streamed, not read into memory: close it
    assert raw == (logdir / "gpu" / "profiler" / "a-full" / name).read_bytes()
    assert "traceEvents" in json.loads(gzip.decompress(raw))


@pytest.mark.parametrize("params", [
    {"run": "../..", "capture": "a-full", "file": "rank-0.pt.trace.json.gz"},
    {"run": "/etc", "capture": "a-full", "file": "rank-0.pt.trace.json.gz"},
    {"run": "gpu", "capture": "../../stall", "file": "perf_report.json"},
    {"run": "gpu", "capture": "a-full", "file": "../b-late/rank-0.pt.trace.json.gz"},
    {"run": "gpu", "capture": "a-full"},
])
def test_download_refuses_anything_else(client: Client, params: dict[str, str]) -> None:
    status, body = get(client, "/download", **params)
    assert status == 400 and body["error"]


def test_missing_and_broken_inputs_give_messages(client: Client, logdir: Path) -> None:
    status, view = get(client, "/run", run="empty")
    assert status == 200
    assert any("perf_report.json" in m for m in view["messages"])
    assert view["findings"] == [] and view["history"] == []
    (logdir / "empty" / "perf_report.json").write_text("{not json")
    _, view = get(client, "/run", run="empty")
    assert any("could not be read" in m for m in view["messages"])
    bad = logdir / "empty" / "profiler" / "corrupt"
    bad.mkdir(parents=True)
    (bad / "x.pt.trace.json.gz").write_bytes(b"\x1f\x8b this is not gzip")
    status, body = get(client, "/trace", run="empty", capture="corrupt")
    assert status == 200 and body["analysis"] is None
    assert "x.pt.trace.json.gz" in body["error"]
    status, body = get(client, "/trace", run="empty", capture="nope")
    assert status == 400 and "nope" in body["error"]
    status, body = get(client, "/run")
    assert status == 400 and "run" in body["error"]


def test_per_rank_view_from_scalars_and_report(tmp_path: Path) -> None:
    """The tags and report entry the engine's per-rank support writes (docs/tensorboard.md)."""
    from torch.utils.tensorboard import SummaryWriter

    step_ms = {0: 10.0, 1: 14.0}
    with SummaryWriter(tmp_path) as w:
        for step in (5, 10):
            for rank, ms in step_ms.items():
                w.add_scalar(f"perf/ranks/{rank}/step_ms", ms + step, step)
                for phase in PHASES:
                    w.add_scalar(f"perf/ranks/{rank}/phase/{phase}_ms", (ms + step) / 5, step)
                w.add_scalar(f"perf/ranks/{rank}/comm_exposed_ms", rank * 2.0, step)
            w.add_scalar("perf/ranks/step_spread_pct", 40.0, step)
            w.add_scalar("perf/ranks/slowest_rank", 1.0, step)
    acc = read_events(tmp_path)
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    report = {"ranks": {"0": {"breakdown": {"step": 0.010, "data": 0.001}, "comm_exposed_s": 0.0},
                        "1": {"breakdown": {"step": 0.014, "data": 0.005}, "comm_exposed_s": 0.002}}}
    ranks = runview.run_view(scalars, [], report)["ranks"]
    assert ranks["slow"] == 1
    assert ranks["scalars"]["1"]["breakdown"]["step_ms"] == [(5, 19.0), (10, 24.0)]
    assert ranks["scalars"]["0"]["comm_exposed_ms"] == [(5, 0.0), (10, 0.0)]
    assert ranks["report"]["1"]["breakdown"]["data"] == 0.005
    # Without the scalar naming it, the report's slowest mean step decides.
    only_report = runview.ranks({}, report)
    assert only_report is not None and only_report["slow"] == 1


def test_table_parsing_round_trips_the_sink() -> None:
    from perfcallback.report import Recommendation
    from perfcallback.sinks.tensorboard import recommendations_markdown

    recs = [Recommendation(rule="gc.pauses", category="gc", severity="info",
                           message="Call gc.freeze() | after setup \\ now.", est_gain=0.03),
            Recommendation(rule="dataloader.stall", category="dataloader", severity="critical",
                           message="Set DataLoader(num_workers=4).")]
    rows = runview.parse_table(recommendations_markdown(recs))
    assert [(r["rule"], r["severity"], r["message"]) for r in rows] == [
        ("dataloader.stall", "critical", "Set DataLoader(num_workers=4)."),
        ("gc.pauses", "info", "Call gc.freeze() | after setup \\ now.")]
    assert runview.parse_table(recommendations_markdown([])) == []


def test_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="tensorboard_plugins") if e.name == "perfcallback"]
    cls = ep.load()
    assert cls.plugin_name == "perfcallback"
    assert issubclass(cls, base_plugin.TBPlugin)


def test_import_without_tensorboard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import perfcallback.dashboard as dashboard
    from perfcallback._optional import MissingExtraError

    monkeypatch.delitem(sys.modules, "perfcallback.dashboard.plugin", raising=False)
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"perfcallback\[tensorboard\]"):
        _ = dashboard.PerfDashboardPlugin


def test_static_assets_reference_nothing_outside() -> None:
    """Offline first: no URL in the shipped assets but the SVG namespace (an identifier, never
    fetched), no CSS import or remote font."""
    import re
    from importlib import resources

    static = resources.files("perfcallback.dashboard") / "static"
    names = sorted(p.name for p in static.iterdir())
    assert {"index.js", "charts.js", "style.css"} <= set(names)
    for name in names:
        text = (static / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "url(" not in text and "@font-face" not in text
