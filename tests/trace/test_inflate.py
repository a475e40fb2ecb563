"""Gzip traces inflate on a background thread: same events as the plain file, same errors, and
no thread left behind, whatever the file holds."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import pytest

from perfcallback.trace import TraceError, load_rank_trace
from perfcallback.trace import parse as trace_parse
from perfcallback.trace.parse import Metadata, iter_trace

NCCL = Path(__file__).resolve().parents[1] / "data" / "shared" / "hta" / "nccl_parser_config" / \
    "nccl_data.json.gz"


@pytest.fixture(params=["threaded", "inline"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the inflater on its thread for any size, and never on a thread."""
    threshold = 0 if request.param == "threaded" else 2**62
    monkeypatch.setattr(trace_parse, "_THREAD_MIN_BYTES", threshold)
    return str(request.param)


def _gunzip_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "perfcallback-gunzip"]


def _events(path: Path, chunk_bytes: int = trace_parse.CHUNK_BYTES) -> list[tuple]:
    out: list[tuple] = []
    for batch in iter_trace(path, chunk_bytes=chunk_bytes):
        if not isinstance(batch, Metadata):
            out += [(e.ph, e.cat, e.name, e.ts, e.dur, e.tid) for e in batch]
    return out


def test_a_real_trace_reads_the_same_as_its_plain_json(tmp_path: Path, mode: str) -> None:
    plain = tmp_path / "rank-0.json"
    plain.write_bytes(gzip.decompress(NCCL.read_bytes()))
    for chunk in (trace_parse.CHUNK_BYTES, 3 * 2**20 + 17):  # one chunk per block boundary too
        assert _events(NCCL, chunk) == _events(plain, chunk)
    assert len(_events(NCCL)) > 40_000
    assert not _gunzip_threads()


def test_members_and_zero_padding_read_as_one_stream(tmp_path: Path, mode: str) -> None:
    text = NCCL.read_bytes()
    plain = gzip.decompress(text)
    cut = len(plain) // 3
    path = tmp_path / "rank-0.json.gz"
    path.write_bytes(gzip.compress(plain[:cut]) + b"\0" * 9 + gzip.compress(plain[cut:]) + b"\0")
    assert gzip.decompress(path.read_bytes()) == plain  # what gzip itself reads
    plain_path = tmp_path / "plain.json"
    plain_path.write_bytes(plain)
    assert _events(path) == _events(plain_path)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[: len(b) // 2], "truncated gzip file"),
    (lambda b: b[:-3], "truncated gzip file"),  # inside the trailer
    (lambda b: b + b"garbage!", "corrupt gzip data"),
    (lambda b: b[:4000] + bytes(x ^ 0x5A for x in b[4000:4400]) + b[4400:], "corrupt gzip data"),
])
def test_damaged_files_fail_with_the_reason_and_leave_no_thread(
        tmp_path: Path, mode: str, damage: object, message: str) -> None:
    path = tmp_path / "rank-0.json.gz"
    path.write_bytes(damage(NCCL.read_bytes()))  # type: ignore[operator]
    with pytest.raises(TraceError, match=message):
        load_rank_trace(path)
    assert not _gunzip_threads()


def test_stopping_early_stops_the_thread(tmp_path: Path, mode: str) -> None:
    batches = iter_trace(NCCL, chunk_bytes=2**20)
    first = next(batches)
    assert isinstance(first, list) and first
    batches.close()  # the caller gives up after one batch (a bad event, a limit)
    assert not _gunzip_threads()


def test_the_size_limit_holds_on_the_thread(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "rank-0.json.gz"
    with gzip.open(path, "wb") as fh:  # 48 MiB of one event's name
        fh.write(b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "')
        fh.write(b"A" * 48 * 2**20)
        fh.write(b'", "ts": 1, "dur": 1}]}')
    with pytest.raises(TraceError, match="more than 8 MiB of JSON"):
        load_rank_trace(path, limits=trace_parse.TraceLimits(max_bytes=8 * 2**20))
    assert not _gunzip_threads()
