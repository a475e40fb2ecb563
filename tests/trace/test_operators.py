"""The operator table on real traces, against a direct computation from the raw events.

The reference below reads the JSON itself (no perfcallback code) and finds each operator's parent
and each launch's operator by brute force (every enclosing operator, the innermost wins), so it
shares no algorithm with perfcallback.trace.operators' sweep.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from perfcallback.cli import main
from perfcallback.trace import analyze_path, analyze_rank, load_rank_trace
from perfcallback.trace.steps import select_window

VENDORED = Path(__file__).resolve().parents[1] / "data" / "shared"
# Traces with fewer than two ProfilerStep# names: the window is the whole trace, nothing is cut.
_NO_STEPS = ["hta/critical_path_alexnet", "hta/critical_path_simple_add",
             "tracelens/h100_bert_small"]
_SLACK = 1e-3
_GPU = {"kernel", "gpu_memcpy", "gpu_memset", "Kernel", "Memcpy", "Memset"}


def _events(folder: Path) -> list[dict[str, Any]]:
    (path,) = folder.glob("*.json*")  # one trace per folder
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as fh:
        doc = json.load(fh)
    return doc["traceEvents"] if isinstance(doc, dict) else doc  # type: ignore[no-any-return]


def _innermost(ops: list[dict[str, Any]], ts: float, end: float, me: int = -1) -> int:
    """Index of the shortest operator in ``ops`` holding ``[ts, end]`` (``me`` excluded)."""
    best = -1
    for k, o in enumerate(ops):
        if k == me or not (o["ts"] <= ts and end <= o["ts"] + o["dur"] + _SLACK):
            continue
        if me >= 0 and (o["ts"], -o["dur"]) == (ops[me]["ts"], -ops[me]["dur"]) and k > me:
            continue  # two identical spans: the earlier event is the parent
        if best < 0 or (o["ts"], -o["dur"], k) > (ops[best]["ts"], -ops[best]["dur"], best):
            best = k
    return best


def _reference(events: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"
           and "ProfilerStep#" not in e["name"]]
    by_thread: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for o in ops:
        by_thread[o.get("tid")].append(o)
    launches: dict[int, dict[str, Any]] = {}
    for e in events:
        corr = (e.get("args") or {}).get("correlation")
        if (e.get("ph") == "X" and e.get("cat") not in _GPU and corr is not None
                and corr not in launches):
            launches[corr] = e
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for group in by_thread.values():
        child = [0.0] * len(group)
        own_dev = [0.0] * len(group)
        parent = [_innermost(group, o["ts"], o["ts"] + o["dur"], k) for k, o in enumerate(group)]
        for k, p in enumerate(parent):
            if p >= 0:
                child[p] += group[k]["dur"]
        for e in events:
            if e.get("cat") in _GPU and (e.get("args") or {}).get("stream") not in (None, -1):
                launch = launches.get(e["args"].get("correlation"))
                if launch is not None and launch.get("tid") == group[0].get("tid"):
                    owner = _innermost(group, launch["ts"], launch["ts"])
                    if owner >= 0 and launch["ts"] < group[owner]["ts"] + group[owner]["dur"]:
                        own_dev[owner] += e["dur"]
        for k, o in enumerate(group):
            total_dev, p = own_dev[k], parent[k]
            while p >= 0:  # this op's device time also counts in each ancestor's total
                rows[group[p]["name"]]["device_total_us"] += own_dev[k]
                p = parent[p]
            row = rows[o["name"]]
            row["calls"] += 1
            row["host_total_us"] += o["dur"]
            row["host_self_us"] += max(0.0, o["dur"] - child[k])
            row["device_self_us"] += own_dev[k]
            row["device_total_us"] += total_dev
    return rows


@pytest.mark.parametrize("name", _NO_STEPS)
def test_operator_table_matches_the_raw_events(name: str) -> None:
    folder = VENDORED / name
    (path,) = folder.glob("*.json*")
    assert not select_window(load_rank_trace(path)).filtered  # as the reference assumes
    ra = analyze_path(folder).ranks[0]
    reference = _reference(_events(folder))
    assert ra.operators, "a trace with cpu_op events has an operator table"
    for op in ra.operators:
        ref = reference[op.name]
        assert op.calls == ref["calls"], op.name
        for key in ("host_total_us", "host_self_us", "device_total_us", "device_self_us"):
            assert getattr(op, key) == pytest.approx(ref[key], rel=1e-9, abs=1e-6), (op.name, key)
    # the table is the top of the ranking: nothing left out beats its last row
    last = ra.operators[-1]
    ranked = sorted(reference.values(), key=lambda r: (-r["device_self_us"], -r["host_self_us"]))
    assert (last.device_self_us, last.host_self_us) >= (
        ranked[len(ra.operators) - 1]["device_self_us"],
        ranked[len(ra.operators) - 1]["host_self_us"])


def test_device_time_of_operators_adds_up_to_the_launched_kernels() -> None:
    """NCCL trace with steps: each attributed GPU microsecond is in exactly one device self
    time, so the top operators' device self time never exceeds the GPU time of the window."""
    ra = analyze_path(VENDORED / "hta/nccl_parser_config").ranks[0]
    assert ra.operators and ra.steps
    gpu_us = sum(k.total_us for k in ra.kernel_types)
    self_us = sum(o.device_self_us for o in ra.operators)
    assert 0.5 * gpu_us < self_us <= gpu_us * (1 + 1e-9)
    assert all(o.device_total_us >= o.device_self_us - 1e-6 for o in ra.operators)
    assert all(0 <= o.host_self_us <= o.host_total_us + 1e-6 for o in ra.operators)
    keys = [(o.device_self_us, o.host_self_us) for o in ra.operators]
    assert keys == sorted(keys, reverse=True)
    # the live engine skips the table (it reads only the window figures); nothing else changes
    (path,) = (VENDORED / "hta/nccl_parser_config").glob("*.json*")
    bare = analyze_rank(load_rank_trace(path), operators=False)
    assert bare.operators == () and bare.summary() == ra.summary()


def test_analyze_json_and_ops_table(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(VENDORED / "hta/critical_path_alexnet")
    assert main(["analyze", path, "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["ranks"]["0"]["operators"]
    assert ops and set(ops[0]) == {"name", "calls", "host_total_us", "host_self_us",
                                   "device_total_us", "device_self_us"}
    assert main(["analyze", path]) == 0
    assert "Top operators" not in capsys.readouterr().out  # the default output stays short
    proc = subprocess.run([sys.executable, "-m", "perfcallback", "analyze", path, "--ops"],
                          capture_output=True, text=True, check=True)
    assert "Top operators" in proc.stdout
    assert ops[0]["name"] in proc.stdout


def test_without_the_operator_table_every_other_figure_is_the_same() -> None:
    """``analyze`` without ``--ops``/``--json`` skips the table (and its columns), nothing else."""
    folder = VENDORED / "hta/nccl_parser_config"
    full = analyze_path(folder).to_dict()
    lean = analyze_path(folder, operators=False).to_dict()
    assert full["ranks"]["0"].pop("operators") and lean["ranks"]["0"].pop("operators") == []
    assert lean == full
    rt = load_rank_trace(next(folder.iterdir()), operators=False)
    assert len(rt.op_ts) == 0 and len(rt.launch_ts) > 0
