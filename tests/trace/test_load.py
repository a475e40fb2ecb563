"""Reading traces: file formats, streaming, rank assignment, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from perfcallback.trace import TraceError, load_rank_trace, load_trace_set
from perfcallback.trace.parse import Metadata, iter_trace

DATA = Path(__file__).resolve().parents[1] / "data" / "traces"
OVERLAP = DATA / "overlap_none" / "rank-0.json"


def _events(path: Path, chunk_bytes: int) -> tuple[list[tuple], Metadata]:
    events: list[tuple] = []
    meta = None
    for item in iter_trace(path, chunk_bytes=chunk_bytes):
        if isinstance(item, Metadata):
            meta = item
        else:
            events += [(e.ph, e.cat, e.name, e.ts, e.dur) for e in item]
    assert meta is not None
    return events, meta


def test_streamed_chunks_decode_the_same_events_as_the_whole_file() -> None:
    whole, meta = _events(OVERLAP, chunk_bytes=1 << 20)
    streamed, meta2 = _events(OVERLAP, chunk_bytes=512)
    assert streamed == whole and len(whole) == 21
    assert meta2 == meta and meta.device_properties == [{"id": 0, "name": "Synthetic GPU"}]


def test_streaming_survives_brace_comma_brace_inside_values(tmp_path: Path) -> None:
    doc = json.loads(OVERLAP.read_text())
    for e in doc["traceEvents"]:  # nested objects and strings that look like event boundaries
        e.setdefault("args", {})["nested"] = [{"a": 1}, {"b": "}, {"}]
    doc["distributedInfo"] = {"rank": 5, "world_size": 8}  # metadata after the events
    path = tmp_path / "rank-5.json"
    path.write_text(json.dumps(doc, indent=1))
    whole, _ = _events(path, chunk_bytes=1 << 22)
    streamed, meta = _events(path, chunk_bytes=300)
    assert streamed == whole
    assert meta.distributed_info == {"rank": 5, "world_size": 8}
    assert load_rank_trace(path, chunk_bytes=300).rank == 5


def test_bare_array_and_old_schema_load() -> None:
    rt = load_rank_trace(DATA / "bare_array" / "trace.json")
    assert rt.rank == -1 and rt.has_gpu and len(rt.steps) == 1  # rank resolved by the set
    assert load_trace_set(DATA / "bare_array").ranks.keys() == {0}


def test_gzip_is_detected_by_content(tmp_path: Path) -> None:
    plain = tmp_path / "rank-0.json"
    plain.write_bytes(gzip.compress(OVERLAP.read_bytes()))  # gzip under a .json name
    assert load_rank_trace(plain).has_gpu


def test_ranks_from_distributed_info_and_file_names(tmp_path: Path) -> None:
    assert load_trace_set(DATA / "two_ranks_late_allreduce").ranks.keys() == {0, 1}
    for rank in (2, 3):
        shutil.copy(OVERLAP, tmp_path / f"worker_rank{rank}.json")
    assert load_trace_set(tmp_path).ranks.keys() == {2, 3}


def test_log_folder_picks_the_newest_capture(tmp_path: Path) -> None:
    for name in ("capture-1", "capture-2"):
        (tmp_path / "profiler" / name).mkdir(parents=True)
        shutil.copy(OVERLAP, tmp_path / "profiler" / name / "host_1.1.pt.trace.json")
    loaded = load_trace_set(tmp_path)
    assert "capture-2" in next(iter(loaded.ranks.values())).path or loaded.notes
    assert any("2 trace folders" in n for n in loaded.notes)


def _bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


BAD_INPUTS = {
    "truncated gzip": ("rank-0.json.gz", gzip.compress(OVERLAP.read_bytes())[:300],
                       "truncated gzip"),
    "not gzip": ("rank-0.json.gz", b'{"traceEvents": []}', "not a gzip file"),
    "truncated json": ("rank-0.json", OVERLAP.read_bytes()[:700], "truncated JSON"),
    "corrupt json": ("rank-0.json", b'{"traceEvents": [{"ph": "X",, }]}', "invalid JSON"),
    "not kineto": ("rank-0.json", b'{"hello": "world"}', "not a Kineto trace"),
    "wrong types": ("rank-0.json", b'{"traceEvents": [{"ts": "soon"}]}', "not a Kineto trace"),
    "no events": ("rank-0.json", b'{"traceEvents": []}', "not a Kineto trace"),
    "not json": ("rank-0.json", b"PK\x03\x04 zip archive", "not JSON"),
    "empty": ("rank-0.json", b"", "empty file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_file_is_one_clear_error_naming_the_file(tmp_path: Path, case: str) -> None:
    name, content, problem = BAD_INPUTS[case]
    path = _bad(tmp_path, name, content)
    with pytest.raises(TraceError) as info:
        load_trace_set(path)
    assert info.value.path == str(path)
    assert problem in info.value.problem and "\n" not in str(info.value)


def test_streamed_truncated_file_is_reported_too(tmp_path: Path) -> None:
    path = _bad(tmp_path, "rank-0.json", OVERLAP.read_bytes()[:-40])
    with pytest.raises(TraceError, match="truncated JSON"):
        load_rank_trace(path, chunk_bytes=512)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such file"):
        load_trace_set(tmp_path / "nope")
    with pytest.raises(TraceError, match="no trace files"):
        load_trace_set(tmp_path)


def test_trace_without_gpu_events_is_bad_unless_allowed() -> None:
    with pytest.raises(TraceError, match="no GPU events"):
        load_trace_set(DATA / "cpu_only")
    assert not load_trace_set(DATA / "cpu_only", require_gpu=False).ranks[0].has_gpu


def test_mixed_runs_are_refused(tmp_path: Path) -> None:
    src = DATA / "two_ranks_late_allreduce"
    shutil.copy(src / "rank-0.json.gz", tmp_path / "a.json.gz")
    shutil.copy(src / "rank-0.json.gz", tmp_path / "b.json.gz")
    with pytest.raises(TraceError, match=r"mixed runs.*rank 0 appears in a\.json\.gz and b"):
        load_trace_set(tmp_path)
    doc = json.loads(gzip.decompress((src / "rank-1.json.gz").read_bytes()))
    doc["distributedInfo"]["world_size"] = 8
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(TraceError, match=r"mixed runs in one folder: a\.json\.gz is rank 0 of 2"):
        load_trace_set(tmp_path)


def test_ranks_that_cannot_be_told_apart(tmp_path: Path) -> None:
    shutil.copy(OVERLAP, tmp_path / "a.json")
    shutil.copy(OVERLAP, tmp_path / "b.json")
    with pytest.raises(TraceError, match="cannot tell the ranks apart"):
        load_trace_set(tmp_path)


def test_skip_bad_keeps_the_good_file(tmp_path: Path) -> None:
    shutil.copy(DATA / "two_ranks_late_allreduce" / "rank-0.json.gz", tmp_path)
    _bad(tmp_path, "rank-1.json.gz", b"not gzip at all")
    with pytest.raises(TraceError, match=r"rank-1\.json\.gz: not a gzip file"):
        load_trace_set(tmp_path)
    loaded = load_trace_set(tmp_path, skip_bad=True)
    assert loaded.ranks.keys() == {0}
    assert len(loaded.skipped) == 1 and "rank-1.json.gz: not a gzip file" in loaded.skipped[0]
    _bad(tmp_path, "rank-0.json.gz", b"")
    with pytest.raises(TraceError, match="no usable trace file"):
        load_trace_set(tmp_path, skip_bad=True)


@pytest.mark.slow  # a fresh interpreter importing torch: ~3 s
def test_stdlib_fallback_gives_the_same_figures() -> None:
    """Without msgspec (the optional ``trace`` extra) the stdlib/orjson path is used."""
    code = (
        "import sys, json; sys.modules['msgspec'] = None\n"
        "from perfcallback.trace import analyze_path\n"
        f"a = analyze_path({str(DATA / 'two_ranks_late_allreduce')!r})\n"
        "print(json.dumps({r: x.summary() for r, x in a.ranks.items()}, sort_keys=True))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from perfcallback.trace import analyze_path

    fast = analyze_path(DATA / "two_ranks_late_allreduce")
    expected = json.dumps({r: x.summary() for r, x in fast.ranks.items()}, sort_keys=True)
    assert json.loads(out.stdout) == json.loads(expected)
