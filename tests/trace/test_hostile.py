"""Hostile input: every class of bad trace gives exit status 2 and one line on stderr, on both
decoders (msgspec and the stdlib), in bounded memory; garbage is refused or left out with a note,
never printed as figures; nothing from the trace reaches the terminal unescaped."""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfcallback.cli import main
from perfcallback.trace import TraceError, load_rank_trace, parse
from perfcallback.trace.parse import MIB, Metadata, TraceLimits, iter_trace

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"
# C0/C1 controls other than the newline: none may reach the terminal
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


@pytest.fixture(params=["msgspec", "json"])
def decoder(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with msgspec's decoder and with the stdlib one (the core install)."""
    previous = parse.set_decoder(request.param)
    yield request.param
    parse.set_decoder(previous)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys: pytest.CaptureFixture[str], path: Path | str, *argv: str) -> str:
    code, out, err = _cli(capsys, "analyze", str(path), *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, err)
    assert len(lines) == 1 and lines[0].startswith("perfcallback: error: "), err
    assert not _CONTROL.search(err)
    return lines[0]


def _event(**kw: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": "kernel", "name": "k", "ts": 1000.0, "dur": 5.0,
            "args": {"stream": 7, "correlation": 1}, **kw}


def _doc(*events: dict[str, Any]) -> bytes:
    return json.dumps({"traceEvents": list(events)}).encode()


_DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE: dict[str, tuple[bytes, str]] = {  # content, words of the one-line error
    "100k-deep array in an event": (
        b'{"traceEvents": [{"ph": "X", "args": {"x": ' + _DEEP + b"}}]}", "nested too deeply"),
    "100k-deep bare array": (_DEEP, ""),  # msgspec: "expected an object"; json: too deep
    "NaN": (b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": NaN, "dur": 1}]}', "JSON"),
    "Infinity": (b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": -Infinity, "dur": 1}]}',
                 "JSON"),
    "1e999": (b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1e999, "dur": 1}]}',
              "out of range"),
    "correlation beyond 64 bits": (
        b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 1, '
        b'"args": {"stream": 7, "correlation": 123456789012345678901234567890}}]}', "range"),
    "stream at 2**64 - 1": (
        b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 1, '
        b'"args": {"stream": 18446744073709551615}}]}', "out of range"),
    "ts with 400 digits": (
        b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1' + b"0" * 400
        + b', "dur": 1, "args": {"stream": 7}}]}', "range"),
    "ts with 5000 digits": (
        b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1' + b"0" * 5000 + b', "dur": 1}]}',
        ""),
    "ProfilerStep# with 5000 digits": (
        _doc(_event(), _event(cat="user_annotation", name="ProfilerStep#" + "9" * 5000,
                              ts=0.0, dur=5000.0, args={})), "5000 digits"),
    "only negative durations": (_doc(_event(dur=-5.0)), "negative duration"),
    "only absurd timestamps": (_doc(_event(ts=1e300)), "time beyond"),
    "wrong type in args": (_doc(_event(args={"correlation": "one"})), "not a Kineto trace"),
    "args is a list": (_doc(_event(args=[1, 2])), "not a Kineto trace"),
    "name is an object": (_doc(_event(name={"a": 1})), "not a Kineto trace"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, decoder: str, case: str
) -> None:
    content, words = HOSTILE[case]
    path = tmp_path / "rank-0.json"
    path.write_bytes(content)
    assert words in _refused(capsys, path)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "fifo", "fifo-in-folder"])
def test_devices_and_fifos_are_refused_without_blocking(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    if target.startswith("fifo"):
        os.mkfifo(tmp_path / "rank-0.json")  # opening it for reading would block forever
        target = str(tmp_path if target == "fifo-in-folder" else tmp_path / "rank-0.json")
    line = _refused(capsys, target)
    assert "not a regular file" in line or "no trace files" in line


def test_unreadable_folder_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root reads any folder: make the listing fail as it would for a user
        def denied(self: Path) -> Iterator[Path]:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "iterdir", denied)
    else:
        locked.chmod(0)
    try:
        assert "cannot read it (Permission denied)" in _refused(capsys, locked)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_negative_durations_are_left_out_with_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, decoder: str
) -> None:
    doc = json.loads((DATA / "overlap_none" / "rank-0.json").read_text())
    doc["traceEvents"] += [_event(ts=1_050_000.0, dur=-40_000.0, name="negative"),
                           _event(ts=1e300, name="far future")]
    path = tmp_path / "rank-0.json"
    path.write_text(json.dumps(doc))
    code, out, _ = _cli(capsys, "analyze", str(path), "--json")
    rank = json.loads(out)["ranks"]["0"]
    clean_code, clean_out, _ = _cli(capsys, "analyze", str(DATA / "overlap_none"), "--json")
    clean = json.loads(clean_out)["ranks"]["0"]
    assert code == clean_code == 0
    for key in ("idle_pct", "compute_pct", "span_us", "step_mean_us"):
        assert rank[key] == clean[key]  # the garbage changed no figure
    assert all(k["name"] not in ("negative", "far future") for k in rank["top_kernels"])
    note = next(n for n in rank["notes"] if "implausible" in n)
    assert "negative duration (1 event)" in note and "time beyond" in note


def test_control_sequences_in_names_are_escaped(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    doc = json.loads((DATA / "overlap_none" / "rank-0.json").read_text())
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel":
            e["name"] = "\x1b]0;pwned\x07\x1b[2J\u202ekernel\x9b31m"
    doc["deviceProperties"][0]["name"] = "GPU\x1b[5m"
    path = tmp_path / "rank-0.json"
    path.write_text(json.dumps(doc))
    for argv in (["analyze", str(path)], ["diff", str(DATA / "overlap_none"), str(path)]):
        code, out, err = _cli(capsys, *argv)
        assert code == 0 and not _CONTROL.search(out + err)
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202ekernel\\x9b31m" in out


def test_gzip_bomb_stops_at_the_size_limit(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    path = tmp_path / "rank-0.json.gz"
    with gzip.open(path, "wb") as fh:  # 64 MiB of one event's name: ~64 KB compressed
        fh.write(b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "')
        fh.write(b"A" * 64 * MIB)
        fh.write(b'", "ts": 1, "dur": 1}]}')
    assert "more than 16 MiB of JSON" in _refused(capsys, path, "--max-trace-mb", "16")
    # under the size limit, the event-size limit stops it without reading the file whole
    read: list[int] = []
    with pytest.raises(TraceError, match="no event boundary in 32 MiB"):
        load_rank_trace(path, chunk_bytes=MIB, progress=lambda _n, done, _s: read.append(done))


def test_a_bad_event_early_fails_without_reading_the_rest(tmp_path: Path, decoder: str) -> None:
    good = _event()
    events = [json.dumps(good)] * 20 + ['{"ph": "X", "ts": 12 34}'] + [json.dumps(good)] * 40_000
    path = tmp_path / "rank-0.json"
    path.write_text('{"traceEvents": [' + ",\n".join(events) + "]}")
    chunks = 0

    def count(_done: int, _size: int) -> None:
        nonlocal chunks
        chunks += 1

    with pytest.raises(TraceError, match="invalid JSON"):
        for _ in iter_trace(path, chunk_bytes=64 * 1024, progress=count):
            pass
    assert path.stat().st_size > 40 * 64 * 1024 and chunks <= 2  # the first chunk told


def test_event_count_limit(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.json"
    path.write_bytes(_doc(*[_event(ts=float(i)) for i in range(50)]))
    assert len(load_rank_trace(path, limits=TraceLimits(max_events=50)).gpu_ts) == 50
    with pytest.raises(TraceError, match="more than 49 GPU events"):
        load_rank_trace(path, limits=TraceLimits(max_events=49))


def test_both_decoders_give_the_same_events(decoder: str) -> None:
    events: list[tuple[Any, ...]] = []
    for item in iter_trace(DATA / "two_ranks_late_allreduce" / "rank-1.json.gz", chunk_bytes=4096):
        if not isinstance(item, Metadata):
            events += [(e.ph, e.cat, e.name, e.ts, e.dur, e.args and e.args.correlation)
                       for e in item]
    parse.set_decoder("msgspec")
    expected = [(e.ph, e.cat, e.name, e.ts, e.dur, e.args and e.args.correlation)
                for item in iter_trace(DATA / "two_ranks_late_allreduce" / "rank-1.json.gz")
                if not isinstance(item, Metadata) for e in item]
    assert events == expected and len(events) > 10


# --- fuzzing ------------------------------------------------------------------------------------
_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**53, 2**63, 2**64, 1e300, -0.0]), st.text(max_size=3), st.none())
_names = st.one_of(st.text(max_size=30), st.sampled_from([
    "ProfilerStep#3", "ProfilerStep#" + "7" * 30, "cudaLaunchKernel",
    "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", "ncclDevKernel_AllReduce",
    "\x1b[31mred\x1b[0m", "Memcpy HtoD (Pageable -> Device)", "cudaStreamSynchronize"]))
_json = st.recursive(st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=5)),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
_events = st.fixed_dictionaries(
    {"ph": st.sampled_from(["X", "f", "i", "M"]),
     "cat": st.sampled_from(["kernel", "cuda_runtime", "cpu_op", "user_annotation", "gpu_memcpy",
                             "gpu_memset", "cuda_sync", "Trace", "python_function", "Kernel"]),
     "name": _names, "ts": _numbers, "dur": _numbers},
    optional={"args": st.one_of(st.fixed_dictionaries({}, optional={
        "stream": _numbers, "correlation": _numbers, "extra": _json}), _json)})
_docs = st.fixed_dictionaries({"traceEvents": st.lists(_events, max_size=25)}, optional={
    "distributedInfo": _json, "deviceProperties": _json, "schemaVersion": _json})


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=_docs, cut=st.one_of(st.none(), st.integers(0, 4000)),
       flip=st.one_of(st.none(), st.tuples(st.integers(0, 4000), st.integers(0, 255))))
def test_fuzz_exit_0_or_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, decoder: str,
    doc: dict[str, Any], cut: int | None, flip: tuple[int, int] | None,
) -> None:
    data = bytearray(json.dumps(doc, allow_nan=True).encode())  # NaN/Infinity literals too
    if flip is not None and data:
        data[flip[0] % len(data)] = flip[1]
    if cut is not None:
        del data[cut:]
    path = tmp_path / "rank-0.json"
    path.write_bytes(bytes(data))
    code, out, err = _cli(capsys, "analyze", str(path), "--allow-cpu-only")
    assert code in (0, 2), err  # 3 would be a bug caught by the last-resort guard
    assert not _CONTROL.search(out + err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perfcallback: error: ") and out == ""
