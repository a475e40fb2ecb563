"""StepRecorder: the framework-free engine every integration drives.

Adapters (``PerfMonitor``, the Lightning callback) translate their events into five calls:
``data_begin``/``data_end`` around a batch fetch, ``begin_step``/``end_step`` around one training
iteration, and ``phase_start``/``phase_end`` around forward, backward and optimizer work. Everything
else (windows, rules, sinks, the report) happens here, so every integration measures the same way.

Design notes:
- Phases are timed *exclusively*: when a phase starts inside another (the forward and backward that
  an LBFGS closure runs inside ``optimizer.step``), the outer one pauses. Time in no phase is
  "other", derived as the step's wall time minus the measured phases, so the phases always add up
  to the step exactly.
- A step's wall time runs from the start of its batch fetch (or from ``begin_step`` when nothing was
  fetched) to ``end_step``. Time between steps outside any fetch is not part of a step.
- Validation (``begin_validation``/``end_validation``) is accounted apart; when it runs inside a
  step (mid gradient accumulation), the step's clocks skip it, so it never counts as step time.
- The hot path is a few ``perf_counter`` calls, list stores and one small object per step. The ring
  buffer has a fixed size; rules, summaries and sinks run once per window.
"""

from __future__ import annotations

import gc
import logging
import operator
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from perfcallback.clock import Clock, CudaEventTimer, host_clock
from perfcallback.context import CompileProbe, RunContext, autocast_active, autocast_dtype
from perfcallback.failopen import FailOpen
from perfcallback.memory import HostRSS, cuda_memory_snapshot, cuda_total_bytes, reset_cuda_peak
from perfcallback.pipeline import WindowPipeline
from perfcallback.report import Report
from perfcallback.sinks import Sink
from perfcallback.stats import (
    DATA,
    OTHER,
    PHASE_NAMES,
    StepRecord,
    WindowStats,
    percentile,
    slope,
    summarize,
)
from perfcallback.totals import RunTotals

if TYPE_CHECKING:
    from perfcallback.profiling import Capture, TraceProfiler
    from perfcallback.telemetry import WindowProbe
    from perfcallback.telemetry.flops import StepFlopCounter

logger = logging.getLogger("perfcallback")

_N_PHASES = len(PHASE_NAMES)
_STEP_S, _INDEX = operator.attrgetter("step_s"), operator.attrgetter("index")
_CUDA_MEMORY_EVERY = 5  # steps between allocator snapshots (memory_stats() costs tens of us)
# Host RSS is read once per window, on its last step (and once as warm-up ends). The read is a
# syscall of ~1 us alone, but inside a near-empty training loop it cost ~13 us (benchmarks/
# overhead.py, ablated): the loop's own work runs slower after it. So the leak rule's straight
# line is fitted over the samples of the last few windows, not over the steps of one.
_RSS_FIT_WINDOWS = 8
_STATE_VERSION = 1  # bump when state_dict() changes shape
# A capture's kernel-level figures describe the steps it profiled (perturbed by the profiler):
# they join this many windows after it, then age out, so a finding they raise can resolve.
_TRACE_FIGURES_WINDOWS = 4
# Automatic windows (window_steps=None): at least this many steps and seconds, at most this many
# steps. A window costs a few hundred microseconds of Python (summary, rules, sinks) and evicts
# the training step's code from the caches, so a loop of sub-millisecond steps closing one every
# 25 steps paid more for its windows than for everything else the monitor does, and wrote ~80
# TensorBoard points a second. Steps of 10 ms or more keep 25-step windows.
AUTO_WINDOW_MIN_STEPS, AUTO_WINDOW_MAX_STEPS, AUTO_WINDOW_MIN_S = 25, 250, 0.25


class StepRecorder:
    """Collects per-step timings, memory and GC figures, and turns windows into findings.

    Args:
        warmup_steps: Leading steps left out of every figure (allocator warm-up, compilation).
        window_steps: Steps per window; rules and sinks run once per window. ``None``: automatic,
            at least 25 steps and 0.25 s and at most 250 steps (and the ring); 25 steps under
            torch.distributed, where every rank must close the same windows.
        buffer_steps: Capacity of the ring buffer of per-step records (bounds memory).
        fire_after: Consecutive windows a rule must hold before its finding is emitted.
        clear_after: Consecutive windows a rule must be absent before its finding is resolved.
        sinks: Receivers of window summaries and recommendation events.
        context: Facts about the run that rules read; a default one is created if omitted.
        thresholds: Overrides of rule thresholds by name (see docs/rules.md).
        disabled_rules: Rule ids or categories never evaluated.
        cuda: Time the device side with CUDA events; ``None`` means "if CUDA is available".
        clock: Host clock in seconds; injectable for exact tests.
    """

    # Slots, not an instance dict: the recorder has more attributes than CPython's key-sharing
    # dicts hold (30), so without them every attribute read on the hot path is a hash lookup in a
    # dict of its own, cold in the cache after each training step.
    __slots__ = (
        "_acc", "_active", "_closed", "_compile", "_cuda", "_cuda_retries_at_window",
        "_cuda_snapshot", "_data_t0", "_dev_window", "_fetch_t0", "_flop_step", "_gc_callback",
        "_gc_count", "_gc_installed", "_gc_pause_s", "_gc_t0", "_in_step", "_pending_data_s",
        "_pending_samples", "_poll_device", "_process_window_guarded",
        "_retained", "_ring", "_rss", "_rss_samples", "_sample_rss", "_seen", "_stack",
        "_step_t0", "_sync_s", "_sync_t0", "_t_mark", "_totals", "_trace_age", "_untallied",
        "_val_t0", "_warmup_end", "_win_len", "_win_max", "_win_min", "_win_min_s",
        "_win_n", "_win_t0", "_window_steps", "autocast_pending", "clock", "comm_sources",
        "context", "device", "failopen", "flop_counter", "last_profiled_step", "pipeline",
        "probes", "profiled_steps", "profiler", "steps_seen", "trace_figures", "warmup_steps",
        "window_sources",
    )

    def __init__(
        self,
        *,
        warmup_steps: int = 5,
        window_steps: int | None = None,
        buffer_steps: int = 1024,
        fire_after: int = 2,
        clear_after: int = 2,
        sinks: Sequence[Sink] = (),
        context: RunContext | None = None,
        thresholds: Mapping[str, float] | None = None,
        disabled_rules: Sequence[str] = (),
        cuda: bool | None = None,
        clock: Clock = host_clock,
    ) -> None:
        for name, value, low in (
            ("warmup_steps", warmup_steps, 0),
            ("window_steps", 1 if window_steps is None else window_steps, 1),
            ("buffer_steps", buffer_steps, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if window_steps is not None and buffer_steps < window_steps:
            raise ValueError(
                f"buffer_steps ({buffer_steps}) must be >= window_steps ({window_steps})"
            )
        self.warmup_steps = warmup_steps
        self._window_steps = window_steps
        self.clock = clock
        self.context = context or RunContext()
        self.profiler: TraceProfiler | None = None  # see attach_profiler()
        self.trace_figures: dict[str, float] = {}  # from the latest capture, see join_capture()
        # Callables returning more WindowStats fields (the cross-rank comparison), read per window
        self.window_sources: list[Callable[[], Mapping[str, Any]]] = []
        # Callables returning more Report.communication figures (DDP's own), read at report time
        self.comm_sources: list[Callable[[], Mapping[str, float]]] = []
        self._trace_age = 0  # windows since trace_figures arrived
        self.probes: list[WindowProbe] = []  # per-window telemetry (NVML, MFU, host threads)
        self.flop_counter: StepFlopCounter | None = None  # see perfcallback.telemetry.flops
        self.device: torch.device | int | None = None  # the training device; None: current
        self.failopen = FailOpen()
        self.pipeline = WindowPipeline(
            context=self.context,
            failopen=self.failopen,
            thresholds=thresholds,
            disabled_rules=disabled_rules,
            sinks=sinks,
            fire_after=fire_after,
            clear_after=clear_after,
        )
        self._ring: deque[StepRecord] = deque(maxlen=buffer_steps)
        self._rss = HostRSS()
        self._rss_samples: deque[tuple[int, int]] = deque(maxlen=_RSS_FIT_WINDOWS)  # (step, bytes)
        self._sample_rss: Callable[[], None] = self.failopen.guard("host_rss", self._read_rss)
        use_cuda = torch.cuda.is_available() if cuda is None else cuda
        # No CUDA call here (is_available() aside): device facts are read at the first window,
        # so a fork-based launcher finds CUDA uninitialised in the parent process.
        self._cuda = CudaEventTimer(_N_PHASES) if use_cuda else None
        if use_cuda:
            self.context.device_type = "cuda"
        self._poll_device = self.failopen.guard("cuda_timer", self._poll_device_times)
        self._process_window_guarded = self.failopen.guard("window", self._process_window)
        self._cuda_snapshot = self.failopen.guard("cuda_memory", self._cuda_memory)
        # (steps appended, times, indices) of the ring as last summarised: see _retained_steps()
        self._retained: tuple[int, tuple[float, ...], tuple[int, ...]] = (-1, (), ())
        # torch.compile counters, read once per window; autocast sampled in one forward per window
        self._compile = CompileProbe(
            max_marks=buffer_steps // min(window_steps or AUTO_WINDOW_MIN_STEPS, buffer_steps) + 2)
        if warmup_steps == 0:
            self.failopen.guard("compile_counters", self._compile.mark)(0)
        self.autocast_pending = True  # sample autocast in the next forward (sample_autocast())
        self._totals = RunTotals()
        self._untallied = 0  # measured steps, the newest in the ring, not yet in _totals
        # The open window: its measured steps and start; it closes at _win_min steps or more once
        # it spans _win_min_s seconds, and at _win_max steps (see _window_bounds()).
        self._win_n = 0
        self._win_t0 = 0.0
        self._window_bounds()
        self._win_len = self._win_min  # steps in the last closed window (none yet: the minimum)
        self._dev_window: list[tuple[float, list[float]]] = []
        self._cuda_retries_at_window = 0.0
        # current step
        self._in_step = False
        self._acc = [0.0] * _N_PHASES
        self._active = OTHER
        self._seen = [False] * _N_PHASES  # phases that ever started: the others are unmeasured
        self._stack: list[int] = []
        self._t_mark = 0.0
        self._step_t0 = 0.0
        self._sync_t0 = 0.0  # start of the gradient-sync wait in progress (0: none)
        self._sync_s = 0.0
        # between steps
        self._data_t0 = 0.0
        self._fetch_t0: float | None = None
        self._pending_data_s = 0.0
        self._pending_samples = 0
        self._gc_t0 = 0.0
        self._gc_pause_s = 0.0
        self._gc_count = 0
        self._gc_installed = False
        # gc runs its callbacks anywhere; an error there would be printed as "Exception ignored"
        self._gc_callback = self.failopen.guard("gc_probe", self._on_gc)
        self._closed = False
        self.steps_seen = 0  # steps ended, warm-up included
        self._warmup_end = warmup_steps  # steps up to this index are warm-up (moves on resume)
        self._val_t0: float | None = None
        self._flop_step = -1  # index of the step running under FlopCounterMode
        self.profiled_steps = 0  # steps run under the profiler, left out of the figures
        self.last_profiled_step = 0

    @property
    def totals(self) -> RunTotals:
        """Sums over every measured step so far.

        The steps since the last read are added here, in a batch from the ring buffer, rather
        than one call per step in :meth:`end_step`: the hot path keeps to a counter.
        """
        if self._untallied:
            self._tally()
        return self._totals

    def _tally(self) -> None:
        ring, add = self._ring, self._totals.add_step
        for i in range(-self._untallied, 0):
            r = ring[i]
            add(r.phases, r.step_s, r.samples, r.gc_pause_s, r.gc_collections, r.comm_s)
        self._untallied = 0

    @property
    def window_steps(self) -> int | None:
        """Steps per window as given (``None``: automatic, see :meth:`_window_bounds`)."""
        return self._window_steps

    @window_steps.setter
    def window_steps(self, steps: int | None) -> None:
        """Change the window length from the open window on (a window longer than the ring
        loses no step: the totals are tallied before the ring wraps)."""
        self._window_steps = steps
        self._window_bounds()

    def _window_bounds(self) -> None:
        """Set how many steps (and seconds) a window spans, from ``window_steps`` and the world
        size (every adapter gives it at construction).

        Automatic windows stay at 25 steps under torch.distributed: ranks compare their windows
        by number, so every rank must close each one at the same step, which a window closed by
        the clock would not guarantee.
        """
        ring = self._ring.maxlen or 1
        fixed = self._window_steps
        if fixed is None and self.context.world_size > 1:
            fixed = min(AUTO_WINDOW_MIN_STEPS, ring)
        if fixed is not None:
            self._win_min = self._win_max = fixed
            self._win_min_s = 0.0
        else:
            self._win_min = min(AUTO_WINDOW_MIN_STEPS, ring)
            self._win_max = min(AUTO_WINDOW_MAX_STEPS, ring)
            self._win_min_s = AUTO_WINDOW_MIN_S

    # ----------------------------------------------------------------- lifecycle
    def attach_profiler(self, profiler: TraceProfiler) -> None:
        """Drive ``profiler`` from :meth:`end_step`; the steps it profiles are left out."""
        self.profiler = profiler
        profiler.on_trace_ready.append(self.join_capture)

    def join_capture(self, capture: Capture) -> None:
        """Join a finished capture's kernel-level figures into the windows that follow.

        Runs on the profiler's export thread: the analysis (tens of ms to a second, holding the
        GIL part of the time) happens there, and the result replaces :attr:`trace_figures` in one
        assignment, which :meth:`window` reads once per window. A failure trips
        ``on_trace_ready:join_capture`` and leaves training alone.
        """
        if capture.path is None:
            return
        from perfcallback.trace.live import capture_figures  # the analysis is only needed here

        figures = capture_figures(capture.path)
        if figures:
            figures["trace_first_step"] = float(capture.first_step)
            figures["trace_last_step"] = float(capture.last_step)
        self._trace_age = 0
        self.trace_figures = figures

    def install_gc_probe(self) -> None:
        """Start timing garbage collections (``gc.callbacks``); undone by :meth:`close`."""
        if not self._gc_installed:
            gc.callbacks.append(self._gc_callback)
            self._gc_installed = True

    def close(self) -> None:
        """Resolve outstanding device timings, flush sinks, release probes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Each part fails open on its own and the sinks are flushed whatever happened before
        # (a sticky CUDA error in drain() must neither replace the user's exception nor lose the
        # report).
        try:
            if self._gc_installed:
                gc.callbacks.remove(self._gc_callback)
                self._gc_installed = False
            if self._cuda is not None:
                self.failopen.call("cuda_timer", self._drain_device_times)
            if self.flop_counter is not None:
                self.failopen.call("flop_count", self.flop_counter.stop, False)
            for probe in self.probes:
                self.failopen.call(probe.name, probe.close)
            self.failopen.call("host_rss", self._rss.close)
            if self.profiler is not None:  # before the sinks: a last capture may still be written
                # Its own name: close() must run (join the export thread) after a tripped capture.
                self.failopen.guard("profiler.close", self.profiler.close)()
        finally:
            self.pipeline.close()

    def _poll_device_times(self) -> None:
        assert self._cuda is not None
        self._apply_device(self._cuda.poll())

    def _drain_device_times(self) -> None:
        assert self._cuda is not None
        self._apply_device(self._cuda.drain())

    def _cuda_memory(self) -> dict[str, float]:
        return cuda_memory_snapshot(self.device)

    def sample_autocast(self) -> None:
        """Read autocast where the user's forward runs (a forward hook, Lightning's step)."""
        self.autocast_pending = False
        device_type = self.context.device_type
        self.context.autocast_seen = seen = autocast_active(device_type)
        self.context.autocast_dtype = autocast_dtype(device_type) if seen else None

    # ----------------------------------------------------------------- hot path
    def data_begin(self) -> None:
        """The training loop starts waiting for a batch."""
        self._data_t0 = self.clock()
        if self._in_step:
            self.phase_start(DATA)
        elif self._fetch_t0 is None:
            self._fetch_t0 = self._data_t0

    def data_end(self, samples: int = 0) -> None:
        """The batch arrived; ``samples`` is its batch size when known (0 otherwise)."""
        self._seen[DATA] = True
        if self._in_step:
            self.phase_end(DATA)
        else:
            self._pending_data_s += self.clock() - self._data_t0
        self._pending_samples += samples

    def abort_fetch(self) -> None:
        """The fetch started by :meth:`data_begin` produced no batch (end of the loader)."""
        if self._in_step:
            self.phase_end(DATA)
        elif self._pending_data_s == 0.0:
            self._fetch_t0 = None

    def begin_step(self) -> None:
        """A training iteration starts (after its batch was fetched)."""
        t = self.clock()
        self._in_step = True
        self._step_t0 = self._fetch_t0 if self._fetch_t0 is not None else t
        acc = self._acc
        acc[0] = self._pending_data_s
        acc[1] = acc[2] = acc[3] = acc[4] = 0.0
        self._sync_s = self._sync_t0 = 0.0
        self._active = OTHER
        self._stack.clear()
        self._t_mark = t
        if self._cuda is not None:
            self._cuda.begin(OTHER)
        # FLOPs are counted in a warm-up step: past it, the counter object is not even touched
        if (self.steps_seen < self._warmup_end and self.flop_counter is not None
                and self.flop_counter.pending):
            self._start_flop_count()

    def phase_start(self, phase: int) -> None:
        """Enter ``phase`` (an index from :mod:`perfcallback.stats`); pauses the current one."""
        if not self._in_step:
            return
        t = self.clock()
        self._acc[self._active] += t - self._t_mark
        self._stack.append(self._active)
        self._active = phase
        self._seen[phase] = True
        self._t_mark = t
        if self._cuda is not None:
            self._cuda.mark(phase)

    def phase_end(self, phase: int) -> None:
        """Leave ``phase``; the phase it interrupted resumes."""
        if not self._in_step or self._active != phase:
            return
        t = self.clock()
        self._acc[phase] += t - self._t_mark
        self._active = self._stack.pop() if self._stack else OTHER
        self._t_mark = t
        if self._cuda is not None:
            self._cuda.mark(self._active)

    def grad_sync_begin(self) -> None:
        """Backward's gradient compute is done; what follows inside backward is the wait for
        gradient synchronisation (DDP's reducer, FSDP's reduce-scatter)."""
        if self._in_step:
            self._sync_t0 = self.clock()

    def grad_sync_end(self) -> None:
        """The gradient synchronisation that :meth:`grad_sync_begin` opened is done."""
        if self._sync_t0:
            self._sync_s += self.clock() - self._sync_t0
            self._sync_t0 = 0.0

    def end_step(self) -> None:
        """The training iteration finished (after ``optimizer.step()``)."""
        if not self._in_step:
            return
        t = self.clock()
        self._in_step = False
        acc = self._acc
        step_s = t - self._step_t0
        other = step_s - acc[0] - acc[1] - acc[2] - acc[3]
        acc[OTHER] = other if other > 0.0 else 0.0
        self.steps_seen += 1
        index = self.steps_seen
        samples, gc_pause, gc_count = self._pending_samples, self._gc_pause_s, self._gc_count
        self._fetch_t0 = None
        self._pending_data_s = 0.0
        self._pending_samples = self._gc_count = 0
        self._gc_pause_s = 0.0
        # A step run under the profiler is perturbed by it: left out of every figure.
        profiled = self.profiler is not None and self.profiler.capturing
        if index == self._flop_step:  # the FLOP-counted (last warm-up) step ends
            self._flop_step = -1
            self.failopen.call("flop_count", self._stop_flop_count)
        if self._cuda is not None:
            if profiled:
                self._cuda.discard()
            else:
                self._cuda.end(index)
        if self.profiler is not None and "profiler" not in self.failopen.disabled:
            try:  # after the end event: starting a capture costs host time
                self.profiler.on_step_end(index, step_s)
            except Exception as exc:  # fail open, inline: this runs every step
                self.failopen.trip("profiler", exc)
        if profiled:
            self.profiled_steps += 1
            self.last_profiled_step = index
        if index <= self._warmup_end or profiled:
            if index == self._warmup_end:  # compile counters as warm-up ends: later = recompiles
                self.failopen.guard("compile_counters", self._compile.mark)(index)
                self._sample_rss()  # the leak fit's first point, a window before the next
            return
        cuda = None
        if self._cuda is not None and index % _CUDA_MEMORY_EVERY == 0:
            cuda = self._cuda_snapshot()
        sync = self._sync_s
        self._ring.append(  # rss_bytes 0: not sampled (see _read_rss)
            StepRecord(index, step_s, acc.copy(), samples, 0, gc_pause, gc_count, t, cuda, sync)
        )
        self._untallied += 1  # added to the totals in a batch, on read (see totals)
        if self._cuda is not None:
            self._poll_device()
        n = self._win_n + 1
        self._win_n = n
        if n == 1:
            self._win_t0 = self._step_t0
        if n >= self._win_min and (n >= self._win_max or t - self._win_t0 >= self._win_min_s):
            self._win_n = 0
            self._win_len = n
            self._tally()  # at most a window's steps wait, all still in the ring
            self._sample_rss()
            self._process_window_guarded()
        elif self._untallied == self._ring.maxlen:  # more steps than the ring since a tally
            self._tally()

    def abort_step(self) -> None:
        """Drop the current step (the user's code raised inside it)."""
        self._in_step = False
        self._fetch_t0 = None
        self._pending_data_s = 0.0
        self._pending_samples = 0
        if self._cuda is not None:
            self._cuda.discard()
        if self._flop_step == self.steps_seen + 1:  # count a later step instead
            self._flop_step = -1
            if self.flop_counter is not None:
                self.failopen.call("flop_count", self.flop_counter.stop, False)

    def _start_flop_count(self) -> None:
        """Count FLOPs in this step if it is the last warm-up step: a step never measured (with
        ``warmup_steps=0`` nothing is counted; ``flops_per_step=`` gives the figure instead)."""
        index = self.steps_seen + 1
        if self.flop_counter is None or index != self._warmup_end:
            return  # begin_step() calls this during the warm-up only
        self._flop_step = index
        self.failopen.call("flop_count", self.flop_counter.start)

    def _stop_flop_count(self) -> None:
        if self.flop_counter is not None:
            self.flop_counter.stop(True)

    @property
    def in_step(self) -> bool:
        return self._in_step

    @property
    def sinks(self) -> list[Sink]:
        """The pipeline's sinks; append to add one."""
        return self.pipeline.sinks

    def add_samples(self, samples: int) -> None:
        """Count ``samples`` towards the current step (for adapters whose fetch cannot see it)."""
        self._pending_samples += samples

    def discard_fetch(self) -> None:
        """Forget fetch time gathered outside a step (the loop moved on without starting one)."""
        if not self._in_step:
            self._fetch_t0 = None
            self._pending_data_s = 0.0
            self._pending_samples = 0

    # ----------------------------------------------------------------- validation
    def begin_validation(self) -> None:
        """A validation run starts. Its time is accounted apart and is never part of a step."""
        if self._val_t0 is None:
            self.discard_fetch()
            self._val_t0 = self.clock()

    def end_validation(self) -> None:
        """The validation run ended; a step it interrupted resumes as if no time had passed."""
        if self._val_t0 is None:
            return
        elapsed = self.clock() - self._val_t0
        self._val_t0 = None
        self.totals.add_validation(elapsed)
        if self._in_step:  # validation inside a step (mid-accumulation): shift the step's clocks
            self._step_t0 += elapsed
            self._t_mark += elapsed

    def validation_summary(self) -> dict[str, float]:
        """Validation during training: ``runs``, ``total_s`` and ``mean_s`` per run."""
        return self.totals.validation_summary()

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Counters, totals and retained step records, in plain Python types (checkpoint-safe).

        After :meth:`load_state_dict`, a resumed run continues its step numbering, totals and
        windows. Not saved: an open step, pending CUDA events, and the findings' hysteresis (rules
        re-evaluate on the restored windows).
        """
        return {
            "version": _STATE_VERSION,
            "steps_seen": self.steps_seen,
            **self.totals.state_dict(),
            "ring": [
                [
                    r.index,
                    r.step_s,
                    list(r.phases),
                    r.samples,
                    r.rss_bytes,
                    r.gc_pause_s,
                    r.gc_collections,
                    r.t_end,
                    r.cuda,
                    r.comm_s,
                ]
                for r in self._ring
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`. The next ``warmup_steps`` steps are warm-up again.

        Raises:
            ValueError: ``state`` is not a state dict of this version.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != _STATE_VERSION or len(state.get("totals", ())) != _N_PHASES:
            raise ValueError(
                f"not a StepRecorder state dict of version {_STATE_VERSION}: version={version!r}"
            )
        self.steps_seen = int(state["steps_seen"])
        self._warmup_end = self.steps_seen + self.warmup_steps  # a new process is cold again
        self._totals.load_state_dict(state)
        self._untallied = 0
        # a fixed window stays aligned to the step count it had; an automatic one starts afresh
        self._win_n = self._totals.steps % self._window_steps if self._window_steps else 0
        self._ring.clear()
        self._ring.extend(StepRecord(*row) for row in state["ring"])
        self._retained = (-1, (), ())
        self._rss_samples.clear()
        self._rss_samples.extend((r.index, r.rss_bytes) for r in self._ring if r.rss_bytes > 0)

    def _read_rss(self) -> None:
        """Sample host RSS for the step that just ended (the newest in the ring, if measured)."""
        rss = self._rss.read()
        if rss <= 0:
            return
        if self._ring and self._ring[-1].index == self.steps_seen:
            self._ring[-1].rss_bytes = rss
        self._rss_samples.append((self.steps_seen, rss))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = self.clock()
            return
        self._gc_pause_s += self.clock() - self._gc_t0
        self._gc_count += 1
        self._totals.add_gc_generation(info.get("generation", 0))

    def _apply_device(self, resolved: list[tuple[int, float, list[float]]]) -> None:
        for index, step_s, phases in resolved:
            if index <= self._warmup_end:
                continue
            self._totals.add_device_step(step_s, phases)
            self._dev_window.append((step_s, phases))
            del self._dev_window[: -self._win_max]

    # ----------------------------------------------------------------- windows
    def window(self, steps: int | None = None) -> WindowStats | None:
        """Summary of the last ``steps`` measured steps (default: one window); ``None`` if none."""
        n = self._win_len if steps is None else steps
        if not self._ring:
            return None
        ring = self._ring
        records = [ring[i] for i in range(-min(n, len(ring)), 0)]  # deque ends index in O(1)
        extra: dict[str, Any] = {}
        if self._dev_window:
            dev = self._dev_window[-n:]
            k = len(dev)
            extra["device_step_s"] = sum(s for s, _ in dev) / k
            extra["device_phase_s"] = {
                name: sum(p[i] for _, p in dev) / k for i, name in enumerate(PHASE_NAMES)
            }
        if self._cuda is not None:
            self.failopen.call("cuda_capability", self._read_device_facts)
            snap = self._cuda_snapshot()
            if snap is not None:
                extra["cuda_alloc_retries"] = int(
                    snap["alloc_retries"] - self._cuda_retries_at_window
                )
                extra["cuda_total_bytes"] = self.failopen.call(
                    "cuda_memory", cuda_total_bytes, self.device
                )
        compile_fields = self.failopen.call(
            "compile_counters", self._compile.fields, records[0].index, self.context
        )
        extra.update(compile_fields or {})
        extra["recent_step_times_s"], extra["recent_step_indices"] = self._retained_steps()
        if n <= self._win_len * _RSS_FIT_WINDOWS:  # a live window: fit over recent windows
            extra["rss_samples"] = tuple(self._rss_samples)
        joined = self._joined_figures(sum(map(_STEP_S, records)) / len(records))
        if joined:
            extra["extra"] = joined
        for source in self.window_sources:
            extra.update(self.failopen.call("window_source", source) or {})
        self.context.float32_matmul_precision = torch.get_float32_matmul_precision()
        return summarize(records, **extra)

    def _retained_steps(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Wall time and index of every step in the ring, oldest first.

        Kept from the last call and extended by the steps appended since, rather than copied from
        the ring whole (2 x 1024 values) every window.
        """
        appended = self._totals.steps + self._untallied  # steps ever appended to the ring
        done, times, indices = self._retained
        ring = self._ring
        new = appended - done
        if done < 0 or not 0 <= new <= len(ring):  # first use, or after load_state_dict()
            times, indices = tuple([r.step_s for r in ring]), tuple([r.index for r in ring])
        elif new:
            fresh = [ring[i] for i in range(-new, 0)]
            keep = len(ring)
            times = (times + tuple([r.step_s for r in fresh]))[-keep:]
            indices = (indices + tuple([r.index for r in fresh]))[-keep:]
        self._retained = (appended, times, indices)
        return times, indices

    def _process_window(self) -> None:
        self._sample_probes()
        stats = self.window()
        if stats is None:
            return
        if stats.cuda_alloc_retries is not None:
            self._cuda_retries_at_window += stats.cuda_alloc_retries
        self.failopen.call("compile_counters", self._compile.mark, stats.last_step, reuse=True)
        self.autocast_pending = True
        if self._cuda is not None and stats.cuda_peak_allocated_bytes is not None:
            # The allocator's peak is a lifetime figure: reset it, so each window reports its own
            # peak and one warm-up spike does not keep "near capacity" firing all run.
            self.failopen.call("cuda_memory", reset_cuda_peak, self.device)
        self.pipeline.process(stats)

    def _sample_probes(self) -> None:
        """Close the window's telemetry (NVML means, FLOPs, host threads) and age trace figures."""
        if self.trace_figures:
            self._trace_age += 1
            if self._trace_age > _TRACE_FIGURES_WINDOWS:
                self.trace_figures = {}
        for probe in self.probes:
            self.failopen.call(probe.name, probe.sample)

    def _joined_figures(self, step_s: float) -> dict[str, float]:
        """Figures from other sources for a window whose mean step is ``step_s``."""
        out: dict[str, float] = {}
        if self.trace_figures:
            out.update(self.trace_figures)
            out["trace_age_windows"] = float(self._trace_age)
        for probe in self.probes:
            figures = self.failopen.call(probe.name, probe.figures, step_s)
            if figures:
                out.update(figures)
        return out

    def _read_device_facts(self) -> None:
        """Capability of the training device, read once at the first window (never at init)."""
        if self.context.cuda_capability is None:
            self.context.cuda_capability = torch.cuda.get_device_capability(self.device)

    # ----------------------------------------------------------------- report
    def report(self) -> Report:
        """Figures over every measured step so far, and the findings (active and resolved).

        Rules are also evaluated on the latest window (or on every step, for a run shorter than
        one window), so a run shorter than the hysteresis still gets its diagnosis.
        """
        totals = self.totals
        if totals.steps == 0:
            return Report(
                steps=0,
                warmup_steps=self.warmup_steps,
                breakdown=totals.breakdown(),
                disabled=dict(self.failopen.disabled),
                profiled_steps=self.profiled_steps,
                steps_run=self.steps_seen,
            )
        times = sorted(r.step_s for r in self._ring)
        percentiles = {
            "p50": percentile(times, 50),
            "p90": percentile(times, 90),
            "p99": percentile(times, 99),
            "max": times[-1],
        }
        stats = self.window(len(self._ring))
        latest = self.window()
        recs, resolved = self.pipeline.findings(latest)
        telemetry = self._telemetry_report(totals.breakdown()["step"])
        throughput = totals.throughput()
        if telemetry["flops_per_step"]:
            throughput["tflops"] = telemetry["flops_per_step"] / totals.breakdown()["step"] / 1e12
        return Report(
            steps=totals.steps,
            warmup_steps=self.warmup_steps,
            breakdown=totals.breakdown(),
            device_breakdown=totals.device_breakdown(),
            step_percentiles_s=percentiles,
            throughput=throughput,
            memory=self._memory_figures(stats),
            gc=totals.gc_figures(),
            recommendations=recs,
            resolved=resolved,
            disabled=dict(self.failopen.disabled),
            validation=totals.validation_summary() if totals.validation_runs else {},
            profiled_steps=self.profiled_steps,
            communication=self._communication_figures(),
            ranks=stats.cross_rank.to_report() if stats and stats.cross_rank else {},
            steps_run=self.steps_seen,
            unmeasured=self._unmeasured(),
            findings_window=(
                {"first_step": latest.first_step, "last_step": latest.last_step} if latest else {}
            ),
            **telemetry,
        )

    def _unmeasured(self) -> tuple[str, ...]:
        """Phases nothing ever timed ("other" is derived, so always measured)."""
        return tuple(n for i, n in enumerate(PHASE_NAMES) if i != OTHER and not self._seen[i])

    def _communication_figures(self) -> dict[str, float]:
        """Exposed gradient-sync wait, whole run (distributed runs only)."""
        totals = self.totals
        if self.context.world_size <= 1 or not totals.steps:
            return {}
        exposed = totals.comm_exposed_s / totals.steps
        step = totals.step_s / totals.steps
        out = {"exposed_s": exposed, "exposed_share": exposed / step if step > 0 else 0.0}
        for source in self.comm_sources:
            out.update(self.failopen.call("comm_source", source) or {})
        return out

    def _telemetry_report(self, step_s: float) -> dict[str, Any]:
        """Report fields from the probes: ``flops_per_step``, ``mfu`` and NVML's ``gpu``."""
        figures = self._joined_figures(step_s) if step_s > 0 else {}
        return {
            "flops_per_step": figures.get("flops_per_step"),
            "mfu": figures.get("mfu"),
            "gpu": {k: v for k, v in figures.items() if k.startswith("nvml_")},
        }

    def _memory_figures(self, stats: WindowStats | None) -> dict[str, float]:
        out: dict[str, float] = {}
        if stats is None:
            return out
        rss = [(r.index, r.rss_bytes) for r in self._ring if r.rss_bytes > 0]
        rss = rss or list(self._rss_samples)  # or only the sample taken as warm-up ended
        if rss:
            out["host_rss_bytes"] = float(rss[-1][1])
            out["host_rss_peak_bytes"] = float(max(b for _, b in rss))
            trend = slope([float(i) for i, _ in rss], [float(b) for _, b in rss])
            if trend is not None:
                out["host_rss_slope_bytes_per_step"] = trend
        else:  # a run shorter than a window: no sample yet, so read it now
            now = self.failopen.call("host_rss", self._rss.read)
            if now:
                out["host_rss_bytes"] = out["host_rss_peak_bytes"] = float(now)
        for name in (
            "cuda_allocated_bytes",
            "cuda_reserved_bytes",
            "cuda_peak_allocated_bytes",
            "cuda_allocated_slope_bytes_per_step",
        ):
            value = getattr(stats, name)
            if value is not None:
                out[name] = float(value)
        if stats.cuda_alloc_retries is not None:
            out["cuda_alloc_retries"] = float(
                stats.cuda_alloc_retries + self._cuda_retries_at_window
            )
        return out
