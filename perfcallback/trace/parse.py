"""Decode one Kineto trace file into batches of events plus its metadata, in bounded memory.

Design notes:
- Parser choice, by measurement on a 56 MB Kineto trace (tracelens h100_owlv2, 132k events; see
  ``benchmarks/analyze_speed.py``): ``json.loads`` 0.98 s / 190 MB, ``orjson.loads`` 0.55-0.87 s,
  ``msgspec`` decoding into typed structs that keep only the fields the analysis reads 0.19-0.34 s
  / 59 MB. msgspec is therefore used when installed (the ``trace`` extra); otherwise orjson, then
  the stdlib ``json``, give the same results more slowly.
- Streaming: files larger than ``chunk_bytes`` once decompressed are cut at event boundaries
  (``}`` , ``{`` at the top level of the ``traceEvents`` array) and decoded one chunk at a time, so
  memory is bounded by the chunk, not the file. A candidate cut that falls inside a nested value
  cannot decode (the text before it has an unclosed bracket or string), so a decode failure means
  "try an earlier cut"; a cut that decodes is a real event boundary.
- Gzip is recognised by its magic bytes, not the file name; a ``.gz`` name on a file that is not
  gzip is reported as such.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from perfcallback.trace.errors import TraceError

try:  # optional accelerator: the `trace` extra
    import msgspec
except ImportError:  # pragma: no cover - exercised by the fallback test through _BACKENDS
    msgspec = None  # type: ignore[assignment, unused-ignore]
try:
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment, unused-ignore]  # typed only where installed

CHUNK_BYTES = 8 * 2**20  # decompressed bytes decoded at once; bounds memory on huge traces
_GZIP_MAGIC = b"\x1f\x8b"
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_BARE_ARRAY = re.compile(rb"\s*\[")
_TAIL_SCAN = 2**20  # look for cut candidates in the last MiB of a chunk
_CUT_TRIES = 4  # earlier cuts tried before reading more

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """Top-level fields of a trace besides its events."""

    distributed_info: dict[str, Any] | None
    device_properties: list[dict[str, Any]] | None
    schema_version: Any


# --- event types -------------------------------------------------------------------------------
# Only the fields the analysis reads are decoded; msgspec skips the rest without allocating.
if msgspec is not None:

    class _Args(msgspec.Struct, gc=False):
        stream: int | str | None = None
        correlation: int | None = None

    class Event(msgspec.Struct, gc=False):
        """One trace event, reduced to what the analysis reads."""

        ph: str = ""
        cat: str | None = None
        name: str = ""
        ts: float | None = None
        dur: float | None = None
        args: _Args | None = None

    class _Doc(msgspec.Struct, gc=False):
        traceEvents: list[Event] | None = None
        distributedInfo: dict[str, Any] | None = None
        deviceProperties: list[dict[str, Any]] | None = None
        schemaVersion: Any = None

    _EVENT_LIST = msgspec.json.Decoder(list[Event])
    _DOC = msgspec.json.Decoder(_Doc)
else:  # pragma: no cover

    class _PyArgs:
        __slots__ = ("correlation", "stream")

        def __init__(self, args: dict[str, Any]) -> None:
            self.stream = args.get("stream")
            self.correlation = args.get("correlation")

    class Event:  # type: ignore[no-redef]
        """One trace event, reduced to what the analysis reads (stdlib fallback)."""

        __slots__ = ("args", "cat", "dur", "name", "ph", "ts")

        def __init__(self, raw: dict[str, Any]) -> None:
            self.ph = raw.get("ph", "")
            cat, name = raw.get("cat"), raw.get("name", "")
            self.cat = cat if cat is None or isinstance(cat, str) else str(cat)
            self.name = name if isinstance(name, str) else str(name)
            self.ts = raw.get("ts")
            self.dur = raw.get("dur")
            args = raw.get("args")
            self.args = _PyArgs(args) if isinstance(args, dict) else None


def _loads(data: bytes) -> Any:
    return orjson.loads(data) if orjson is not None else json.loads(data)


def _py_events(raw: Any) -> list[Event]:
    if not isinstance(raw, list):
        raise ValueError("traceEvents is not a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"traceEvents[{i}] is not an event object")
        ts, dur = item.get("ts"), item.get("dur")
        for key, value in (("ts", ts), ("dur", dur)):
            if value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"traceEvents[{i}].{key} is not a number")
        out.append(Event(item))  # type: ignore[arg-type]  # the fallback Event takes a dict
    return out


def decode_events(data: bytes | bytearray | memoryview) -> list[Event]:
    """Decode a JSON array of events."""
    if msgspec is not None:
        return _EVENT_LIST.decode(data)
    return _py_events(_loads(bytes(data)))  # pragma: no cover


def decode_document(data: bytes | bytearray) -> tuple[list[Event] | None, dict[str, Any]]:
    """Decode a whole trace (object or bare array) into its events and top-level metadata."""
    if _BARE_ARRAY.match(data):
        return decode_events(data), {}
    if msgspec is not None:
        doc = _DOC.decode(data)
        meta = {"distributedInfo": doc.distributedInfo, "deviceProperties": doc.deviceProperties,
                "schemaVersion": doc.schemaVersion}
        return doc.traceEvents, meta
    raw = _loads(bytes(data))  # pragma: no cover
    if not isinstance(raw, dict):  # pragma: no cover
        raise ValueError("top level is neither an object nor an array")
    events = raw.get("traceEvents")  # pragma: no cover
    return (None if events is None else _py_events(events)), raw  # pragma: no cover


def _describe(exc: Exception) -> str:
    """Map a decoder error to the user's words: truncated, invalid JSON, or not a Kineto trace."""
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if any(word in lowered for word in ("truncated", "end of data", "unterminated", "eof")):
        return "truncated JSON: the file ends in the middle of the data"
    if (msgspec is not None and isinstance(exc, msgspec.ValidationError)) or "traceEvents" in text:
        return f"JSON, but not a Kineto trace ({text})"
    return f"invalid JSON ({text})"


class _Reader:
    """Decompressed bytes of a trace file, with the compressed position for progress."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        head = self._raw.read(2)
        self._raw.seek(0)
        self.gzipped = head == _GZIP_MAGIC
        if path.suffix == ".gz" and not self.gzipped:
            self.close()
            raise TraceError(path, f"not a gzip file (it starts with {head!r}, "
                                   f"not {_GZIP_MAGIC!r})")
        self._stream: Any = gzip.GzipFile(fileobj=self._raw) if self.gzipped else self._raw

    def read(self, n: int) -> bytes:
        try:
            data: bytes = self._stream.read(n)
            return data
        except EOFError as exc:
            raise TraceError(self.path, "truncated gzip file: it ends before the compressed "
                                        "data does") from exc
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise TraceError(self.path, f"corrupt gzip data ({exc})") from exc

    def position(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()


def iter_trace(
    path: str | Path, *, chunk_bytes: int = CHUNK_BYTES, progress: ProgressFn | None = None
) -> Iterator[list[Event] | Metadata]:
    """Yield the events of ``path`` in batches, then one :class:`Metadata` last.

    Args:
        path: A ``.json`` or ``.json.gz`` Kineto trace (an object with ``traceEvents``, or the
            2021 schema's bare array of events).
        chunk_bytes: Decompressed bytes decoded at once; larger files are streamed.
        progress: Called with ``(compressed bytes read, file size)`` after each chunk.

    Raises:
        TraceError: The file is missing, not gzip although named so, truncated, not JSON, or
            JSON without trace events.
    """
    path = Path(path)
    try:
        reader = _Reader(path)
    except OSError as exc:
        raise TraceError(path, f"cannot read it ({exc.strerror or exc})") from exc
    try:
        yield from _stream(reader, chunk_bytes, progress)
    finally:
        reader.close()


def _stream(
    reader: _Reader, chunk_bytes: int, progress: ProgressFn | None
) -> Iterator[list[Event] | Metadata]:
    first = reader.read(chunk_bytes)
    head = first.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise TraceError(reader.path, "empty file")
    if head[:1] not in (b"{", b"["):
        raise TraceError(reader.path, f"not JSON (it starts with {head[:16]!r})")
    if len(first) < chunk_bytes:  # the whole file fits in one chunk: decode it at once
        del first
        if progress is not None:
            progress(reader.position(), reader.size)
        events, meta = _decode_whole(reader.path, head)
        del head
        yield events
        del events  # NOTE: drop each batch before the next decode, or two batches live at once
        yield meta
        return
    buf = bytearray(head)
    del first, head
    bare = buf[:1] == b"["
    header_meta: dict[str, Any] = {}
    if bare:
        pos = 1
    else:
        match = _EVENTS_KEY.search(buf)
        if match is None:  # no event array near the start: decode whole to explain why
            buf += _read_rest(reader)
            events, meta = _decode_whole(reader.path, buf)
            yield events
            yield meta
            return
        header = bytes(buf[: match.start()]) + b'"traceEvents":[]}'
        header_meta = _decode_raw(reader.path, header)[1]
        pos = match.end()  # buf[pos - 1] is the array's "["
    while True:
        if progress is not None:
            progress(reader.position(), reader.size)
        found = _decode_chunk(buf, pos)
        decoded = found is not None
        if found is not None:
            events, next_event = found
            del found
            yield events
            del events
            del buf[: next_event - 1]  # keep one byte before the next event for the "["
            pos = 1
        more = reader.read(chunk_bytes)
        if not more:
            break
        buf += more
        del more
        if not decoded and len(buf) > 4 * chunk_bytes:  # nothing decodes: let the tail explain
            buf += _read_rest(reader)
            break
    if progress is not None:
        progress(reader.position(), reader.size)
    del buf[:pos]
    buf[0:0] = b"[" if bare else b'{"traceEvents":['
    events, tail_meta = _decode_raw(reader.path, buf)
    del buf
    yield events
    del events
    yield _metadata({**header_meta, **{k: v for k, v in tail_meta.items() if v is not None}})


def _read_rest(reader: _Reader) -> bytes:
    parts = []
    while part := reader.read(CHUNK_BYTES):
        parts.append(part)
    return b"".join(parts)


def _decode_chunk(buf: bytearray, pos: int) -> tuple[list[Event], int] | None:
    """Decode the events in ``buf[pos:]`` up to the last event boundary that decodes.

    The byte before ``pos`` and the one after the cut are overwritten in place with ``[`` and
    ``]`` (and restored), so a chunk is decoded without copying it.
    """
    scan_from = max(pos, len(buf) - _TAIL_SCAN)
    cuts = [m.start() for m in _BOUNDARY.finditer(buf, scan_from)]
    before = buf[pos - 1]
    buf[pos - 1] = 0x5B  # "["
    try:
        for cut in reversed(cuts[-_CUT_TRIES:]):
            after = buf[cut + 1]  # whitespace or the "," between two events
            buf[cut + 1] = 0x5D  # "]"
            try:
                with memoryview(buf)[pos - 1 : cut + 2] as view:
                    events = decode_events(view)
            except ValueError:  # msgspec.DecodeError and json errors are ValueErrors
                continue
            finally:
                buf[cut + 1] = after
            return events, buf.index(b"{", cut + 1)
    finally:
        buf[pos - 1] = before
    return None


def _decode_whole(path: Path, data: bytes | bytearray) -> tuple[list[Event], Metadata]:
    events, meta = _decode_raw(path, data)
    return events, _metadata(meta)


def _decode_raw(path: Path, data: bytes | bytearray) -> tuple[list[Event], dict[str, Any]]:
    try:
        events, meta = decode_document(data)
    except ValueError as exc:
        raise TraceError(path, _describe(exc)) from exc
    if events is None:
        raise TraceError(path, "JSON, but not a Kineto trace: no 'traceEvents' list")
    return events, meta


def _metadata(meta: dict[str, Any]) -> Metadata:
    dist = meta.get("distributedInfo")
    props = meta.get("deviceProperties")
    return Metadata(
        distributed_info=dist if isinstance(dist, dict) else None,
        device_properties=props if isinstance(props, list) else None,
        schema_version=meta.get("schemaVersion"),
    )
