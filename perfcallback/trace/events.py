"""Reduce one rank's decoded events to the compact columns the analysis needs (:class:`RankTrace`).

Design notes:
- One pass, constant work per event, typed ``array`` columns (8 bytes a value) for the GPU side,
  so a multi-GB trace costs memory proportional to its GPU activity, not its size on disk.
- What counts as GPU activity follows HolisticTraceAnalysis (HTA 0.5.0, ``trace_parser`` and
  ``breakdown_analysis``): events with a duration and a category, other than ``Trace``, whose
  ``args.stream`` is a stream number (not -1), of the kernel / memcpy / memset categories, and
  ``cuda_sync`` events on a stream (HTA counts them too; they classify as non-compute). One
  deliberate difference: HTA also counts any CPU event that carries a ``stream`` argument (the
  Triton launcher ``cpu_op`` does), which we leave out because it is host time.
- Implausible events are left out and counted (``RankTrace.dropped``), never analysed: a negative
  duration, or a time outside +-2**53 us (beyond it a float no longer holds whole microseconds,
  so the rounding of HTA's definitions breaks; 2**53 us is ~285 years). Non-finite times and
  numbers beyond 64 bits make the file unreadable (:class:`TraceError`).
- CPU events are reduced to what later figures need: runtime calls by correlation id (launch
  delays, the kernel-to-step mapping), ``ProfilerStep#N`` spans, DataLoader ``__next__`` spans,
  blocking device synchronisation calls and optimizer steps; ``cpu_op`` events and the launch
  calls keep their thread (interned ``tid``) for the operator table (``operators.py``).
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable

from perfcallback._record import field, record
from perfcallback.trace.errors import TraceError
from perfcallback.trace.parse import DEFAULT_LIMITS, Event, TraceLimits

GPU_KIND_KERNEL, GPU_KIND_MEMCPY, GPU_KIND_MEMSET, GPU_KIND_SYNC = range(4)
_GPU_CATEGORIES: dict[str, int] = {  # Kineto names, old ("Kernel") and new ("kernel") schema
    "kernel": GPU_KIND_KERNEL,
    "Kernel": GPU_KIND_KERNEL,
    "mtia_ccp_events": GPU_KIND_KERNEL,
    "gpu_memcpy": GPU_KIND_MEMCPY,
    "Memcpy": GPU_KIND_MEMCPY,
    "gpu_memset": GPU_KIND_MEMSET,
    "Memset": GPU_KIND_MEMSET,
    "cuda_sync": GPU_KIND_SYNC,
}
# Host calls that block until the device catches up (CUDA and ROCm spellings).
SYNC_CALLS: frozenset[str] = frozenset({
    "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
    "hipDeviceSynchronize", "hipStreamSynchronize", "hipEventSynchronize", "hipMemcpy",
})
_STEP_RE = re.compile(r"ProfilerStep\s*#\s*(\d+)")
_MAX_STEP_DIGITS = 18  # fits int64; longer "step numbers" are garbage, not steps
TIME_LIMIT_US = float(2**53)  # |ts|, dur and ts + dur above this are not plausible times
_NO_STREAM = -1
_STEP, _RARE = 1, 2  # host name flags: a ProfilerStep#; feeds a figure besides the columns
_MAX_FLAGS = 1 << 16  # distinct names whose flags are cached


@record
class Step:
    """One ``ProfilerStep#N`` span on the host, in trace microseconds."""

    number: int
    ts: float
    dur: float

    @property
    def end(self) -> float:
        return self.ts + self.dur


@record(frozen=False)
class RankTrace:
    """One rank's trace, reduced to columns. Times are trace microseconds, as in the file.

    GPU activity is stored column-wise (``gpu_*`` arrays, one entry per kernel, copy, set or
    stream sync). Host runtime calls that carry a correlation id are kept in ``launch_*`` arrays,
    indexed through ``launch_index``.
    """

    path: str
    rank: int = 0
    world_size: int | None = None
    device_name: str | None = None
    names: list[str] = field(default_factory=list)
    gpu_ts: array[float] = field(default_factory=lambda: array("d"))
    gpu_dur: array[float] = field(default_factory=lambda: array("d"))
    gpu_stream: array[int] = field(default_factory=lambda: array("q"))
    gpu_corr: array[int] = field(default_factory=lambda: array("q"))
    gpu_name: array[int] = field(default_factory=lambda: array("l"))
    gpu_kind: array[int] = field(default_factory=lambda: array("b"))
    launch_index: dict[int, int] = field(default_factory=dict)
    launch_ts: array[float] = field(default_factory=lambda: array("d"))
    launch_dur: array[float] = field(default_factory=lambda: array("d"))
    launch_name: array[int] = field(default_factory=lambda: array("l"))
    launch_thread: array[int] = field(default_factory=lambda: array("l"))
    op_ts: array[float] = field(default_factory=lambda: array("d"))  # cpu_op events
    op_dur: array[float] = field(default_factory=lambda: array("d"))
    op_name: array[int] = field(default_factory=lambda: array("l"))
    op_thread: array[int] = field(default_factory=lambda: array("l"))
    steps: list[Step] = field(default_factory=list)
    step_names: int = 0  # distinct names containing "ProfilerStep" (HTA's count)
    last_step_start: float | None = None  # HTA's cutoff: latest start of such a host event
    dataloader: list[tuple[float, float]] = field(default_factory=list)
    dataloader_iter: str | None = None  # "SingleProcess" / "MultiProcessing" when seen
    sync_calls: list[tuple[float, float]] = field(default_factory=list)
    optimizer: list[tuple[float, float]] = field(default_factory=list)
    cpu_events: int = 0
    profiler_ranges: int = 0  # CUPTI range-profiler events (no kernel timings)
    gpu_activities: int = 0  # kernels, copies and sets (stream syncs not counted)
    dropped: dict[str, int] = field(default_factory=dict)  # implausible events left out, by why

    @property
    def has_gpu(self) -> bool:
        return self.gpu_activities > 0

    def launch_of(self, corr: int) -> int | None:
        """Index into ``launch_*`` of the host call with correlation id ``corr``."""
        return self.launch_index.get(corr)


class _Builder:
    """Accumulates one pass over the events into a :class:`RankTrace`."""

    def __init__(self, path: str, limits: TraceLimits = DEFAULT_LIMITS, *,
                 operators: bool = True) -> None:
        self.trace = RankTrace(path=path)
        self._operators = operators
        self._max_events = limits.max_events
        self._name_chars_left = limits.max_name_chars
        self._name_ids: dict[str, int] = {}
        self._step_names: set[str] = set()
        self._steps: dict[int, Step] = {}
        self._threads: dict[int | str | None, int] = {}
        self._flags: dict[str, int] = {}

    def name_id(self, name: str) -> int:
        idx = self._name_ids.get(name)
        if idx is None:
            self._name_chars_left -= len(name)
            if self._name_chars_left < 0:
                raise TraceError(self.trace.path, "its distinct event names exceed the limit "
                                                  "per trace file")
            idx = self._name_ids[name] = len(self.trace.names)
            self.trace.names.append(name)
        return idx

    def add(self, events: Iterable[Event]) -> None:
        """Consume a batch of events; a number beyond 64 bits makes the file unreadable.

        Raises:
            TraceError: A non-finite time, a number beyond 64 bits, or more kept events than
                ``TraceLimits.max_events``.
        """
        try:
            self._add(events)
        except OverflowError as exc:  # array('q'/'d').append of an int beyond 64 bits
            raise TraceError(self.trace.path, f"a number in an event is out of range ({exc})") \
                from None
        t = self.trace
        if len(t.gpu_ts) + len(t.launch_ts) + len(t.op_ts) > self._max_events:
            raise TraceError(t.path, f"more than {self._max_events:,} GPU events, launch "
                                     "calls and CPU operators, the limit per trace file")

    def _add(self, events: Iterable[Event]) -> None:
        """The hot loop: keep it flat (locals, no call per event on the common paths)."""
        t = self.trace
        gpu_categories = _GPU_CATEGORIES
        limit = TIME_LIMIT_US
        name_ids, threads, flags = self._name_ids, self._threads, self._flags
        launch_index = t.launch_index
        gpu_ts, gpu_dur, gpu_stream = t.gpu_ts.append, t.gpu_dur.append, t.gpu_stream.append
        gpu_corr, gpu_name, gpu_kind = t.gpu_corr.append, t.gpu_name.append, t.gpu_kind.append
        launch_ts, launch_dur = t.launch_ts, t.launch_dur.append
        launch_name, launch_thread = t.launch_name.append, t.launch_thread.append
        op_ts, op_dur, op_name, op_thread = (t.op_ts.append, t.op_dur.append, t.op_name.append,
                                             t.op_thread.append)
        operators = self._operators
        host = 0
        for e in events:
            dur, cat, ts = e.dur, e.cat, e.ts
            if dur is None or cat is None or ts is None or cat == "Trace":
                continue
            if cat == "python_function":  # the bulk of with_stack traces; never needed
                continue
            if not (0 <= dur <= limit and -limit <= ts <= limit - dur):  # NaN fails too
                self._drop(ts, dur)
                continue
            name, args = e.name, e.args
            kind = gpu_categories.get(cat)
            if kind is not None:
                stream = args.stream if args is not None else None
                if type(stream) is not int:
                    stream = _stream_value(stream)
                if stream != _NO_STREAM:
                    corr = args.correlation if args is not None else None
                    nid = name_ids.get(name)
                    gpu_ts(ts)
                    gpu_dur(dur)
                    gpu_stream(stream)
                    gpu_corr(corr if corr is not None else -1)
                    gpu_name(self.name_id(name) if nid is None else nid)
                    gpu_kind(kind)
                    continue
                if kind == GPU_KIND_SYNC:  # device-wide Event/Context Sync: neither side
                    continue
            host += 1  # a host event from here on
            if args is not None:
                corr = args.correlation
                if corr is not None and corr not in launch_index:
                    launch_index[corr] = len(launch_ts)
                    launch_ts.append(ts)
                    launch_dur(dur)
                    nid = name_ids.get(name)
                    launch_name(self.name_id(name) if nid is None else nid)
                    th = threads.get(e.tid)
                    launch_thread(self._thread(e.tid) if th is None else th)
            flag = flags.get(name)
            if flag is None:
                flag = self._flag(name)
            if cat == "cpu_op" and operators and not flag & _STEP:  # a step is no operator
                nid = name_ids.get(name)
                th = threads.get(e.tid)
                op_ts(ts)
                op_dur(dur)
                op_name(self.name_id(name) if nid is None else nid)
                op_thread(self._thread(e.tid) if th is None else th)
            if flag & _RARE or cat == "cuda_profiler_range":
                self._host(name, cat, ts, dur)
        t.cpu_events += host

    def _drop(self, ts: float, dur: float) -> None:
        if math.isnan(ts) or math.isnan(dur) or math.isinf(ts) or math.isinf(dur):
            raise TraceError(self.trace.path, f"an event has a non-finite time (ts={ts}, "
                                              f"dur={dur})")
        why = "negative duration" if dur < 0 else "time beyond +-2**53 us"
        self.trace.dropped[why] = self.trace.dropped.get(why, 0) + 1

    def _flag(self, name: str) -> int:
        """What a host event name feeds besides the columns (cached: names repeat)."""
        flag = _STEP if "ProfilerStep#" in name else 0
        if ("ProfilerStep" in name or ("DataLoader" in name and name.endswith("__next__"))
                or name in SYNC_CALLS or name.startswith("Optimizer.step#")):
            flag |= _RARE
        if len(self._flags) < _MAX_FLAGS:  # bounded: names are interned under a limit too
            self._flags[name] = flag
        return flag

    def _host(self, name: str, cat: str, ts: float, dur: float) -> None:
        """Steps, DataLoader spans, sync calls, optimizer steps, profiler ranges."""
        t = self.trace
        if "ProfilerStep" in name:
            self._step(name, cat, ts, dur)
        elif "DataLoader" in name and name.endswith("__next__"):
            t.dataloader.append((ts, ts + dur))
            if t.dataloader_iter is None:
                multi = "SingleProcess" not in name
                t.dataloader_iter = "MultiProcessing" if multi else "SingleProcess"
        elif name in SYNC_CALLS:
            t.sync_calls.append((ts, ts + dur))
        elif name.startswith("Optimizer.step#"):
            t.optimizer.append((ts, ts + dur))
        elif cat == "cuda_profiler_range":
            t.profiler_ranges += 1

    def _thread(self, tid: int | str | None) -> int:
        """A small index for a thread id (Kineto writes ints, some tools strings)."""
        idx = self._threads.get(tid)
        if idx is None:
            idx = self._threads[tid] = len(self._threads)
        return idx

    def _step(self, name: str, cat: str, ts: float, dur: float) -> None:
        t = self.trace
        self._step_names.add(name)
        t.last_step_start = ts if t.last_step_start is None else max(t.last_step_start, ts)
        match = _STEP_RE.search(name)
        if match is None or cat == "gpu_user_annotation":
            return
        digits = match.group(1)
        if len(digits) > _MAX_STEP_DIGITS:
            raise TraceError(self.trace.path, f"a ProfilerStep number has {len(digits)} digits "
                                              f"(at most {_MAX_STEP_DIGITS} make sense)")
        number = int(digits)
        old = self._steps.get(number)
        if old is None or dur > old.dur:  # the same step seen on two threads: keep the longer
            self._steps[number] = Step(number=number, ts=ts, dur=dur)

    def finish(self) -> RankTrace:
        t = self.trace
        t.steps = sorted(self._steps.values(), key=lambda s: s.ts)
        t.step_names = len(self._step_names)
        t.gpu_activities = sum(1 for kind in t.gpu_kind if kind != GPU_KIND_SYNC)
        return t


def _stream_value(stream: int | str | None) -> int:
    """``args.stream`` as an int; -1 when absent or not a number (as HTA normalises it)."""
    if stream is None:
        return _NO_STREAM
    if isinstance(stream, int):
        return stream
    try:
        return int(stream)
    except ValueError:
        return _NO_STREAM


def build_rank_trace(
    path: str, batches: Iterable[Iterable[Event]], limits: TraceLimits = DEFAULT_LIMITS, *,
    operators: bool = True,
) -> RankTrace:
    """Reduce event batches (from :func:`perfcallback.trace.parse.iter_trace`) to a RankTrace;
    ``operators=False`` skips the ``op_*`` columns (only the operator table reads them).

    Raises:
        TraceError: See :meth:`_Builder.add`.
    """
    builder = _Builder(path, limits, operators=operators)
    for batch in batches:
        builder.add(batch)
        del batch  # NOTE: free this batch before the next one is decoded
    return builder.finish()
