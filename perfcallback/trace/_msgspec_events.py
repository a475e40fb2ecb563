"""msgspec's typed decoders for trace events: imported only when a trace is large enough to pay.

Importing msgspec costs ~10 ms, more than the stdlib decoder spends on a trace of a few hundred
KB, so :mod:`perfcallback.trace.parse` imports this module on first need (see its design notes).
The structs mirror :class:`perfcallback.trace.parse.Event`: only the fields the analysis reads
are decoded; msgspec skips the rest without allocating.
"""

from __future__ import annotations

from typing import Any

import msgspec

ValidationError = msgspec.ValidationError


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
    tid: int | str | None = None
    args: _Args | None = None


class Doc(msgspec.Struct, gc=False):
    """A whole trace object: its events and the metadata the loader reads."""

    traceEvents: list[Event] | None = None  # the trace's own keys
    distributedInfo: dict[str, Any] | None = None
    deviceProperties: list[dict[str, Any]] | None = None
    schemaVersion: Any = None


EVENT_LIST = msgspec.json.Decoder(list[Event])
DOC = msgspec.json.Decoder(Doc)
