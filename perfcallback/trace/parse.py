"""Decode one Kineto trace file into batches of events plus its metadata, in bounded memory.

Design notes:
- Parser choice, by measurement on a 56 MB Kineto trace (tracelens h100_owlv2, 132k events; see
  ``benchmarks/analyze_speed.py``): ``json.loads`` 0.98 s / 190 MB, ``orjson.loads`` 0.55-0.87 s,
  ``msgspec`` decoding into typed structs that keep only the fields the analysis reads 0.19-0.34 s
  / 59 MB. msgspec is therefore used when installed (the ``trace`` extra); otherwise orjson, then
  the stdlib ``json``, give the same results more slowly. Below 1.5 MiB of JSON (768 KiB in the
  CLI, which imports msgspec leaner: :func:`lean_msgspec_import`) the stdlib is used anyway:
  importing msgspec (~15 ms) costs more than it saves there, and most traces a user analyses by
  hand are small, so it is imported only when a trace needs it.
- Streaming: files larger than ``chunk_bytes`` once decompressed are cut at event boundaries
  (``}`` , ``{`` at the top level of the ``traceEvents`` array) and decoded one chunk at a time, so
  memory is bounded by the chunk, not the file. A candidate cut that falls inside a nested value
  cannot decode (the text before it has an unclosed bracket or string), so a decode failure means
  "try an earlier cut"; a cut that decodes is a real event boundary.
- Gzip files inflate on a background thread (:class:`_Inflater`): zlib releases the GIL, so the
  next chunk inflates while this one is decoded. Their trailer's size field tells, before any
  reading, whether msgspec will be needed, so it is imported while the first chunk inflates.
- Gzip is recognised by its magic bytes, not the file name; a ``.gz`` name on a file that is not
  gzip is reported as such.
- Bounded whatever the input (docs/reliability.md): a file may decompress to at most
  ``TraceLimits.max_bytes`` (a gzip bomb stops there), one event may span at most
  ``TraceLimits.max_event_bytes`` (text that never reaches an event boundary is refused, not read
  whole), and a decode error that is not caused by the cut itself (a wrong type, a syntax error
  before the cut, nesting too deep) is reported at once, without reading the rest of the file.
- Both decoders accept exactly the same input: the stdlib path refuses ``NaN``/``Infinity`` and
  numbers that overflow a float (``1e999``), as msgspec does, and turns ``RecursionError`` on
  deeply nested arrays into an ordinary decode error. :func:`set_decoder` picks the decoder, so
  tests can run both in one process.
"""

from __future__ import annotations

import json
import math
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from perfcallback._record import record
from perfcallback.trace.errors import TraceError

CHUNK_BYTES = 2 * 2**20  # decompressed bytes decoded at once; bounds memory on huge traces
MIB = 2**20
_GZIP_MAGIC = b"\x1f\x8b"
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_BARE_ARRAY = re.compile(rb"\s*\[")
_TAIL_SCAN = 2**20  # look for cut candidates in the last MiB of a chunk
_CUT_TRIES = 4  # earlier cuts tried before reading more
_IN_BLOCK = 128 * 1024  # compressed bytes handed to zlib at once
_OUT_BLOCK = 2**20  # decompressed bytes zlib returns at most per call
_QUEUED_BLOCKS = 4  # decompressed blocks waiting for the decoder (bounds memory)
_THREAD_MIN_BYTES = 64 * 1024  # gzip files from this size inflate on a thread

ProgressFn = Callable[[int, int], None]


@record
class TraceLimits:
    """Caps that bound the memory of reading one trace file, whatever it holds.

    Attributes:
        max_bytes: Decompressed bytes per file. The default fits real traces of several hundred
            MB (the largest public Kineto traces we know are ~300 MB) with room to spare; the CLI
            sets it with ``--max-trace-mb``. ``0`` means no limit.
        max_event_bytes: Longest stretch of text without an event boundary that decodes.
        max_events: GPU activities, host launch calls and CPU operators kept per file (the
            columns that grow with the trace; see docs/reliability.md for what they cost).
        max_name_chars: Characters of distinct event names kept per file (names are interned).
    """

    max_bytes: int = 2048 * MIB
    max_event_bytes: int = 32 * MIB
    max_events: int = 4_000_000
    max_name_chars: int = 128 * MIB


DEFAULT_LIMITS = TraceLimits()


@record
class Metadata:
    """Top-level fields of a trace besides its events."""

    distributed_info: dict[str, Any] | None
    device_properties: list[dict[str, Any]] | None
    schema_version: Any


# --- event types -------------------------------------------------------------------------------
class _PyArgs:
    __slots__ = ("correlation", "stream")

    def __init__(self, stream: int | str | None, correlation: int | None) -> None:
        self.stream = stream
        self.correlation = correlation


class Event:
    """One trace event, reduced to what the analysis reads (the stdlib decoder's; msgspec's
    struct in :mod:`perfcallback.trace._msgspec_events` has the same fields)."""

    __slots__ = ("args", "cat", "dur", "name", "ph", "tid", "ts")

    def __init__(self, ph: str, cat: str | None, name: str, ts: float | None, dur: float | None,
                 tid: int | str | None, args: _PyArgs | None) -> None:
        self.ph, self.cat, self.name, self.ts, self.dur = ph, cat, name, ts, dur
        self.tid, self.args = tid, args


# Which decoder runs: "auto" (below), "msgspec" (the `trace` extra), "orjson" or "json" (stdlib).
# "auto" decodes text shorter than _small_bytes() with the stdlib, whose extra work there costs
# less than importing msgspec (~15 ms, with the inspect and typing_extensions it brings; loading
# 312 KB of JSON: 19 ms with the stdlib, 29 ms with msgspec; break-even near 1.6 MB), and longer
# text with msgspec, else orjson, else the stdlib. The lean import (lean_msgspec_import) costs
# ~8 ms, which moves the break-even to ~0.7 MB (a 1.1 MB trace: 25.5 ms against 22.5 ms in the
# whole CLI run). See set_decoder.
_decoder = "auto"
_SMALL_BYTES = 3 * 2**19  # 1.5 MiB
_SMALL_BYTES_LEAN = 3 * 2**18  # 768 KiB
_UNSET: Any = object()
_fast: Any = _UNSET  # perfcallback.trace._msgspec_events once imported; None: no msgspec
_orjson: Any = _UNSET


_lean_import = False  # see lean_msgspec_import


def lean_msgspec_import() -> None:
    """Import msgspec, when a trace needs it, without :mod:`typing_extensions`: for a process
    that owns its imports (the CLI), never for a library in someone else's process.

    msgspec tries ``typing_extensions`` first and falls back on :mod:`typing`, which has all it
    uses from Python 3.11 on. Importing ``typing_extensions`` (and the :mod:`inspect` it brings)
    is ~7 ms of msgspec's ~15, a tenth of ``perfcallback analyze`` on a 2 MB trace. The import is
    refused by a ``None`` in :data:`sys.modules` for the length of msgspec's import, which would
    also refuse another thread's import of it then: hence only on request.
    """
    global _lean_import
    _lean_import = sys.version_info >= (3, 11)


def _msgspec_events() -> Any:
    """The msgspec decoders module, imported on first use; ``None`` without msgspec."""
    global _fast
    if _fast is _UNSET:
        lean = _lean_import and "typing_extensions" not in sys.modules and \
            "msgspec" not in sys.modules
        try:
            _fast = _import_msgspec_events(lean=lean)
        except ImportError:
            _fast = None
    return _fast


def _import_msgspec_events(*, lean: bool) -> Any:
    if lean:
        sys.modules["typing_extensions"] = None  # type: ignore[assignment]
        try:
            from perfcallback.trace import _msgspec_events

            return _msgspec_events
        except ImportError:  # a msgspec that needs typing_extensions after all: import it as usual
            for name in [n for n in sys.modules if n.split(".")[0] == "msgspec"
                         or n == "perfcallback.trace._msgspec_events"]:
                del sys.modules[name]
        finally:
            if "typing_extensions" in sys.modules and sys.modules["typing_extensions"] is None:
                del sys.modules["typing_extensions"]
    from perfcallback.trace import _msgspec_events

    return _msgspec_events


def _orjson_module() -> Any:
    global _orjson
    if _orjson is _UNSET:
        try:
            import orjson
        except ImportError:
            _orjson = None
        else:
            _orjson = orjson
    return _orjson


def _available() -> dict[str, bool]:
    return {"auto": True, "json": True, "msgspec": _msgspec_events() is not None,
            "orjson": _orjson_module() is not None}


def set_decoder(name: str) -> str:
    """Choose the JSON decoder (``"auto"``, ``"msgspec"``, ``"orjson"`` or ``"json"``); returns
    the previous one.

    All give the same events and refuse the same input; tests use this to run the stdlib path in
    the same process as the msgspec one.

    Raises:
        ValueError: ``name`` is unknown or its package is not installed.
    """
    global _decoder
    available = _available()
    if not available.get(name):
        raise ValueError(f"decoder {name!r} is not available (have: "
                         f"{', '.join(k for k, v in available.items() if v)})")
    previous, _decoder = _decoder, name
    return previous


def _choose(size: int) -> str:
    """The decoder for ``size`` bytes of JSON."""
    if _decoder != "auto":
        return _decoder
    if size < _small_bytes() and _fast is _UNSET:  # once imported, msgspec is faster at any size
        return "json"
    if _msgspec_events() is not None:
        return "msgspec"
    return "orjson" if _orjson_module() is not None else "json"


def _small_bytes() -> int:
    """Below this much JSON, importing msgspec costs more than it saves."""
    return _SMALL_BYTES_LEAN if _lean_import else _SMALL_BYTES


def _is_validation_error(exc: Exception) -> bool:
    fast = _fast  # no msgspec error can exist before msgspec was imported
    return fast not in (None, _UNSET) and isinstance(exc, fast.ValidationError)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _loads(data: bytes, decoder: str) -> Any:
    if decoder == "orjson":
        return _orjson_module().loads(data)
    # parse_constant/parse_float: refuse NaN, Infinity and 1e999 as msgspec and orjson do
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)


def _field(item: dict[str, Any], key: str, types: tuple[type, ...], i: int, default: Any) -> Any:
    value = item.get(key, default)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise ValueError(f"traceEvents[{i}].{key} has the wrong type ({type(value).__name__})")
    return value


def _py_events(raw: Any) -> list[Event]:
    """The stdlib decoder's events, type-checked as strictly as msgspec's schema.

    One test of all the field types per event; only an event that fails it goes through the
    field-by-field check that names the wrong field.
    """
    if not isinstance(raw, list):
        raise ValueError("traceEvents is not a list")
    out: list[Any] = []
    append, str_, dict_ = out.append, str, dict
    for i, item in enumerate(raw):
        if type(item) is not dict_:
            raise ValueError(f"traceEvents[{i}] is not an event object")
        get = item.get
        ph, cat, name, ts, dur, tid, args = (get("ph", ""), get("cat"), get("name", ""),
                                             get("ts"), get("dur"), get("tid"), get("args"))
        if (type(ph) is str_ and type(name) is str_ and type(cat) in _OPT_STR
                and type(ts) in _OPT_NUM and type(dur) in _OPT_NUM and type(tid) in _OPT_ID):
            if args is None:
                append(Event(ph, cat, name, ts, dur, tid, None))
                continue
            if type(args) is dict_:
                stream, corr = args.get("stream"), args.get("correlation")
                if type(stream) in _OPT_ID and type(corr) in _OPT_INT:
                    append(Event(ph, cat, name, ts, dur, tid, _PyArgs(stream, corr)))
                    continue
        append(_checked_event(item, i))
    return out


_OPT_STR = (str, type(None))
_OPT_NUM = (int, float, type(None))
_OPT_ID = (int, str, type(None))
_OPT_INT = (int, type(None))


def _checked_event(item: dict[str, Any], i: int) -> Event:
    """One event checked field by field: the error names the field of the wrong type."""
    args = item.get("args")
    py_args = None
    if isinstance(args, dict):
        py_args = _PyArgs(_field(args, "stream", (int, str), i, None),
                          _field(args, "correlation", (int,), i, None))
    elif args is not None:
        raise ValueError(f"traceEvents[{i}].args is not an object")
    return Event(
        _field(item, "ph", (str,), i, "") or "", _field(item, "cat", (str,), i, None),
        _field(item, "name", (str,), i, "") or "", _field(item, "ts", (int, float), i, None),
        _field(item, "dur", (int, float), i, None), _field(item, "tid", (int, str), i, None),
        py_args)


def decode_events(data: bytes | bytearray | memoryview) -> list[Event]:
    """Decode a JSON array of events.

    Raises:
        ValueError: Not JSON, not an array of events, or nested too deep to decode.
    """
    decoder = _choose(len(data))
    try:
        if decoder == "msgspec":
            return _msgspec_events().EVENT_LIST.decode(data)  # type: ignore[no-any-return]
        return _py_events(_loads(bytes(data), decoder))
    except RecursionError:
        raise _TooDeep() from None


def decode_document(data: bytes | bytearray) -> tuple[list[Event] | None, dict[str, Any]]:
    """Decode a whole trace (object or bare array) into its events and top-level metadata."""
    if _BARE_ARRAY.match(data):
        return decode_events(data), {}
    decoder = _choose(len(data))
    try:
        if decoder == "msgspec":
            doc = _msgspec_events().DOC.decode(data)
            meta = {"distributedInfo": doc.distributedInfo,
                    "deviceProperties": doc.deviceProperties, "schemaVersion": doc.schemaVersion}
            return doc.traceEvents, meta
        raw = _loads(bytes(data), decoder)
    except RecursionError:
        raise _TooDeep() from None
    if not isinstance(raw, dict):
        raise ValueError("top level is neither an object nor an array")
    events = raw.get("traceEvents")
    return (None if events is None else _py_events(events)), raw


class _TooDeep(ValueError):
    def __init__(self) -> None:
        super().__init__("nested too deeply to decode")


_BYTE_AT = re.compile(r"\(byte (\d+)\)")
_END_WORDS = ("truncated", "end of data", "unterminated", "eof")


def _error_before(exc: ValueError, end: int) -> bool:
    """The decode error lies before byte ``end`` of the text, so a later cut cannot cure it.

    A cut that falls inside a nested value or a string makes the text end early: the decoders
    then report truncation, or an error at the very end. A wrong type, nesting too deep, or a
    syntax error earlier in the text is the file's own fault.
    """
    if _is_validation_error(exc):
        return True
    text = str(exc).lower()
    if any(word in text for word in _END_WORDS):
        return False
    if isinstance(exc, json.JSONDecodeError):
        return exc.pos < end
    match = _BYTE_AT.search(text)
    if match is not None:
        return int(match.group(1)) < end
    return not isinstance(exc, json.JSONDecodeError)  # _py_events' type errors, digit limits


def _describe(exc: Exception) -> str:
    """Map a decoder error to the user's words: truncated, invalid JSON, or not a Kineto trace."""
    text = " ".join(str(exc).split())
    lowered = text.lower()
    at_end = isinstance(exc, json.JSONDecodeError) and exc.pos >= len(exc.doc.rstrip())
    if at_end or any(word in lowered for word in ("truncated", "end of data", "unterminated",
                                                  "eof")):
        return "truncated JSON: the file ends in the middle of the data"
    if _is_validation_error(exc) or "traceEvents" in text:
        return f"JSON, but not a Kineto trace ({text})"
    if isinstance(exc, _TooDeep):
        return "invalid trace: JSON nested too deeply to decode"
    return f"invalid JSON ({text})"


class _Reader:
    """Decompressed bytes of a trace file, with the compressed position for progress.

    Refuses what is not a regular file before opening it (``open`` on a FIFO blocks forever, and
    ``/dev/zero`` never ends), and stops once ``max_bytes`` have been decompressed. ``json_size``
    is the size of the JSON text, as far as it is known before reading it (a gzip file's trailer
    says it), so the decoder can be chosen, and msgspec imported, while the file inflates.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise TraceError(path, "not a regular file (a device, FIFO or socket)")
        self.size = self.json_size = info.st_size
        self.max_bytes = max_bytes
        self.read_bytes = 0
        self._inflater: _Inflater | None = None
        self._held = b""  # inflated beyond what read() returned
        self._raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        head = self._raw.read(2)
        self.gzipped = head == _GZIP_MAGIC
        if path.suffix == ".gz" and not self.gzipped:
            self.close()
            raise TraceError(path, f"not a gzip file (it starts with {head!r}, "
                                   f"not {_GZIP_MAGIC!r})")
        if self.gzipped and self.size >= 8:  # ISIZE: last member's length mod 2**32, a hint
            self._raw.seek(-4, 2)
            self.json_size = int.from_bytes(self._raw.read(4), "little")
        self._raw.seek(0)
        if self.gzipped:
            self._inflater = _Inflater(self._raw, threaded=self.size >= _THREAD_MIN_BYTES)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the file."""
        if self._inflater is None:
            try:
                data = self._raw.read(n)
            except OSError as exc:
                raise TraceError(self.path, f"cannot read it ({exc.strerror or exc})") from exc
            self._count(len(data))
        else:
            parts, have = [self._held], len(self._held)
            while have < n:
                block = self._block()
                if not block:
                    break
                parts.append(block)
                have += len(block)
            whole = b"".join(parts)
            data, self._held = whole[:n], whole[n:]
        return data

    def read_into(self, buf: bytearray, n: int) -> int:
        """Append about ``n`` more bytes to ``buf`` (the last inflated block may overshoot), each
        copied once; returns how many, 0 at the end of the file."""
        if self._inflater is None:
            data = self.read(n)
            buf += data
            return len(data)
        added = len(self._held)
        buf += self._held
        self._held = b""
        while added < n:
            block = self._block()
            if not block:
                break
            buf += block
            added += len(block)
        return added

    def _block(self) -> bytes:
        """The next inflated block (counted against ``max_bytes``); ``b""`` at the end."""
        assert self._inflater is not None
        try:
            block = self._inflater.next_block()
        except EOFError as exc:
            raise TraceError(self.path, "truncated gzip file: it ends before the compressed "
                                        "data does") from exc
        except (zlib.error, OSError) as exc:
            raise TraceError(self.path, f"corrupt gzip data ({exc})") from exc
        self._count(len(block))
        return block

    def _count(self, n: int) -> None:
        self.read_bytes += n
        if self.max_bytes and self.read_bytes > self.max_bytes:
            what = "decompresses to" if self.gzipped else "is"
            raise TraceError(self.path, f"{what} more than {self.max_bytes // MIB} MiB of JSON, "
                                        "the limit per trace file (raise it with "
                                        "--max-trace-mb)")

    def position(self) -> int:
        return self._raw.tell() if self._inflater is None else self._inflater.position

    def close(self) -> None:
        if self._inflater is not None:
            self._inflater.close()
        self._raw.close()


class _Inflater:
    """Gzip decompression in large zlib calls, on a background thread for files that pay for it.

    zlib releases the GIL while it inflates, so on the thread the next chunk decompresses while
    the caller decodes the previous one: a trace costs about max(inflate, decode) instead of their
    sum. At most ``_QUEUED_BLOCKS`` blocks of ``_OUT_BLOCK`` bytes wait, so memory stays bounded;
    errors (``EOFError`` for a truncated file, ``zlib.error`` for corrupt data, ``OSError``) reach
    the caller in order, after the data before them. Several gzip members, and zero padding
    between them, read as one stream, as :mod:`gzip` reads them.
    """

    def __init__(self, raw: BinaryIO, *, threaded: bool) -> None:
        self._raw = raw
        self.position = 0  # compressed bytes read so far
        self._blocks = self._inflate()
        self._thread: Any = None
        if threaded:
            import queue
            import threading

            self._queue: Any = queue.Queue(maxsize=_QUEUED_BLOCKS)
            self._full: type[Exception] = queue.Full
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._produce, name="perfcallback-gunzip",
                                            daemon=True)
            self._thread.start()

    def _inflate(self) -> Iterator[bytes]:
        """Inflated blocks of the whole file; raises at the first bad byte."""
        member = zlib.decompressobj(31)  # 31: a gzip header and trailer, CRC checked
        pending = b""
        in_member = False
        while True:
            if not pending:
                pending = self._raw.read(_IN_BLOCK)
                self.position += len(pending)
                if not pending:
                    if in_member:
                        raise EOFError("compressed file ended before the end-of-stream marker")
                    return
            if not in_member:
                pending = pending.lstrip(b"\0")  # padding after a member, as gzip skips it
                if not pending:
                    continue
                in_member = True
            out = member.decompress(pending, _OUT_BLOCK)
            pending = member.unconsumed_tail
            if out:
                yield out
            if member.eof:
                pending = member.unused_data
                member = zlib.decompressobj(31)
                in_member = False

    def _produce(self) -> None:
        try:
            for block in self._blocks:
                if not self._put(block):
                    return
            self._put(b"")
        except BaseException as exc:  # handed to the reader, raised there in order
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except self._full:
                continue
        return False

    def next_block(self) -> bytes:
        """The next inflated block; ``b""`` at the end (and after it)."""
        if self._thread is None:
            return next(self._blocks, b"")
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # raised again if asked again
            raise item
        if not item:
            self._queue.put(item)
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
            self._thread = None


def iter_trace(
    path: str | Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    progress: ProgressFn | None = None,
    limits: TraceLimits = DEFAULT_LIMITS,
) -> Iterator[list[Event] | Metadata]:
    """Yield the events of ``path`` in batches, then one :class:`Metadata` last.

    Args:
        path: A ``.json`` or ``.json.gz`` Kineto trace (an object with ``traceEvents``, or the
            2021 schema's bare array of events).
        chunk_bytes: Decompressed bytes decoded at once; larger files are streamed.
        progress: Called with ``(compressed bytes read, file size)`` after each chunk.
        limits: Size caps (see :class:`TraceLimits`).

    Raises:
        TraceError: The file is missing, not a regular file, not gzip although named so,
            truncated, not JSON, JSON without trace events, or over a limit.
    """
    path = Path(path)
    try:
        reader = _Reader(path, limits.max_bytes)
    except OSError as exc:
        raise TraceError(path, f"cannot read it ({exc.strerror or exc})") from exc
    try:
        yield from _stream(reader, chunk_bytes, progress, max(limits.max_event_bytes,
                                                              2 * chunk_bytes))
    finally:
        reader.close()


def _stream(
    reader: _Reader, chunk_bytes: int, progress: ProgressFn | None, max_event_bytes: int
) -> Iterator[list[Event] | Metadata]:
    if reader.json_size >= _small_bytes() and _decoder == "auto":
        _msgspec_events()  # import it now: a large gzip file inflates on its thread meanwhile
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
        if match is None:  # reading on would hold the whole file: refuse instead
            raise TraceError(reader.path, "JSON, but not a Kineto trace: no 'traceEvents' array "
                                          f"in its first {chunk_bytes // MIB or 1} MiB")
        header = bytes(buf[: match.start()]) + b'"traceEvents":[]}'
        header_meta = _decode_raw(reader.path, header)[1]
        pos = match.end()  # buf[pos - 1] is the array's "["
    while True:
        if progress is not None:
            progress(reader.position(), reader.size)
        found = _decode_chunk(reader.path, buf, pos)
        if found is not None:
            events, next_event = found
            del found
            yield events
            del events
            del buf[: next_event - 1]  # keep one byte before the next event for the "["
            pos = 1
        elif len(buf) > max_event_bytes:  # no event boundary in sight: refuse, never read all
            raise TraceError(reader.path, f"no event boundary in {max_event_bytes // MIB} MiB "
                                          "of text: an event that large is not a Kineto trace "
                                          "event")
        if not reader.read_into(buf, chunk_bytes):
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


def _last_cuts(buf: bytearray, pos: int) -> list[int]:
    """The last ``_CUT_TRIES`` event boundaries in ``buf[pos:]`` within its last ``_TAIL_SCAN``
    bytes, found in a tail window that doubles until it holds them: a chunk holds thousands of
    boundaries, and listing them all costs more than decoding the chunk."""
    end = len(buf)
    window = 64 * 1024
    while True:
        start = max(pos, end - window, end - _TAIL_SCAN)
        cuts = [m.start() for m in _BOUNDARY.finditer(buf, start)]
        if len(cuts) >= _CUT_TRIES or start == pos or start == end - _TAIL_SCAN:
            return cuts[-_CUT_TRIES:]
        window *= 4


def _decode_chunk(path: Path, buf: bytearray, pos: int) -> tuple[list[Event], int] | None:
    """Decode the events in ``buf[pos:]`` up to the last event boundary that decodes.

    The byte before ``pos`` and the one after the cut are overwritten in place with ``[`` and
    ``]`` (and restored), so a chunk is decoded without copying it.

    Raises:
        TraceError: The text before a cut is bad in itself (see :func:`_error_before`): the rest
            of the file is not read.
    """
    cuts = _last_cuts(buf, pos)
    before = buf[pos - 1]
    buf[pos - 1] = 0x5B  # "["
    try:
        for cut in reversed(cuts):
            after = buf[cut + 1]  # whitespace or the "," between two events
            buf[cut + 1] = 0x5D  # "]"
            try:
                with memoryview(buf)[pos - 1 : cut + 2] as view:
                    events = decode_events(view)
            except ValueError as exc:  # msgspec.DecodeError and json errors are ValueErrors
                if _error_before(exc, cut - pos):
                    raise TraceError(path, _describe(exc)) from None
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
