"""Profiler trace capture: short ``torch.profiler`` windows, scheduled or triggered by a slowdown.

Design notes:
- Zero cost between captures: no profiler object exists; per step :meth:`TraceProfiler.on_step_end`
  compares an int and feeds the :class:`RegressionDetector` (a few float operations).
- Captures are driven by hand (``prepare_trace``/``start_trace``/``stop_trace``) rather than by a
  ``schedule``, so one can start at any step and its ``ProfilerStep#N`` annotations carry the
  recorder's step index, the x axis of the TensorBoard scalars.
- Layout ``<logdir>/profiler/<capture>/<worker>.<ms>.pt.trace.json.gz``, the file name
  ``tensorboard_trace_handler`` writes. torch-tb-profiler lists any directory holding such files as
  a run but loads each run once ("assume run data is immutable", plugin.py), so every capture gets
  its own directory, which a running TensorBoard picks up within 10 s. Ranks capturing the same
  scheduled steps share a directory, as the plugin's Distributed view expects.
- Export (Chrome Trace JSON, then gzip) runs on one background thread; a file appears atomically
  (temporary name, then ``os.replace``). Profiled steps are perturbed: ``on_step_end`` returns
  ``True`` for them and the recorder leaves them out of every figure.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import queue
import shutil
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from perfcallback._record import field, record
from perfcallback.capture_policy import ProfileOptions, RegressionDetector
from perfcallback.failopen import FailOpen

__all__ = ["Capture", "ProfileOptions", "TraceProfiler"]

logger = logging.getLogger("perfcallback")

TRACE_SUFFIX = ".pt.trace.json.gz"  # matches torch_tb_profiler.consts.WORKER_PATTERN
_EXPORT_JOIN_S = 60.0  # close() waits at most this long for pending exports
_MB = 2**20
_COMPONENT = "profiler"  # fail-open name; the recorder guards on_step_end under the same name

# torch runs one profiler session per process: two at once ("Profiler is already enabled on this
# thread") leave a broken one whose export crashes the process. A TraceProfiler holds this claim
# from the start of a capture until its export is written.
_claim_lock = threading.Lock()
_claim_holder: weakref.ref[TraceProfiler] | None = None


def _claim(profiler: TraceProfiler) -> str | None:
    """Take the process's one profiler session for ``profiler``; else say who holds it.

    A holder that is gone, or that neither captures nor exports any more (a monitor left without
    being closed), does not block the others.
    """
    global _claim_holder
    with _claim_lock:
        holder = _claim_holder() if _claim_holder is not None else None
        if holder is not None and holder is not profiler and holder.busy:
            return "another PerfMonitor or PerfCallback in this process"
        if torch._C._autograd._profiler_enabled():
            return "a torch.profiler session outside perfcallback"
        _claim_holder = weakref.ref(profiler)
        return None


def _release(profiler: TraceProfiler) -> None:
    global _claim_holder
    with _claim_lock:
        if _claim_holder is not None and _claim_holder() is profiler:
            _claim_holder = None


@record(frozen=False)
class Capture:
    """One profiler capture: which steps (recorder indices), why, and where the trace went."""

    reason: str  # "scheduled" or "triggered"
    first_step: int
    last_step: int
    path: Path | None = None  # the .pt.trace.json.gz once written; None again if retention drops it
    size_bytes: int = 0
    evidence: dict[str, float] = field(default_factory=dict)  # what fired a triggered capture


class _Session:
    """One capture in progress (the torch profiler object and its step bookkeeping)."""

    __slots__ = ("capture", "last_done", "prof", "recording", "start_at", "step_fn")

    def __init__(self, prof: Any, capture: Capture, start_at: int) -> None:
        self.prof, self.capture, self.start_at = prof, capture, start_at
        self.recording = False
        self.last_done = 0  # last recorded step that ended
        self.step_fn: Any = None


def sweep_stale_exports(root: Path) -> list[Path]:
    """Delete the temporary files of exports whose process died mid-write (killed, SIGTERM).

    Only this host's, and only where the writing process is gone: the name carries
    ``<host>_<pid>``, as :attr:`TraceProfiler.worker` writes it. Returns what was deleted.
    """
    prefix = f".{socket.gethostname()}_"
    removed = []
    for tmp in root.glob(f"*/{prefix}*.tmp"):
        pid_text = tmp.name.removeprefix(prefix).split(".", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            with contextlib.suppress(OSError):  # only when empty
                tmp.parent.rmdir()
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _write_failure(folder: Path) -> OSError:
    """Why Kineto could not write a trace into ``folder``, as the ``OSError`` the disk gave."""
    import errno
    import resource

    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 16 * _MB:
            return OSError(errno.ENOSPC, "no space left on device for the trace", str(folder))
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return OSError(errno.EFBIG, f"file size limit ({soft} bytes) reached writing the trace",
                       str(folder))
    return OSError(errno.EIO, "the profiler could not write the trace", str(folder))


class TraceProfiler:
    """Captures short profiler traces into ``logdir`` while a :class:`StepRecorder` runs.

    The recorder calls :meth:`on_step_end` after every step and leaves out the steps for which it
    returns ``True``. Completed captures are passed to every callable in :attr:`on_trace_ready`,
    on the export thread (keep them short; the trace-analysis seam).

    Args:
        logdir: Root directory; traces go to ``<logdir>/<options.trace_dir>/<capture>/``.
        options: When and how to capture.
        warmup_steps: The recorder's warm-up; scheduled captures start after it.
        failopen: Where an internal error is recorded (it switches the profiler off).

    Example::

        >>> import tempfile
        >>> p = TraceProfiler(tempfile.mkdtemp(), ProfileOptions(start_after=None, trigger=False))
        >>> p.on_step_end(1, 0.01)
        False
        >>> p.close()
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        options: ProfileOptions | None = None,
        *,
        warmup_steps: int = 0,
        failopen: FailOpen | None = None,
    ) -> None:
        self.options = opts = options or ProfileOptions()
        self.root = Path(logdir) / opts.trace_dir
        self.warmup_steps = warmup_steps
        self.failopen = failopen or FailOpen()
        self.failopen.on_trip(_COMPONENT, self._switch_off)
        self.on_trace_ready: list[Callable[[Capture], object]] = []
        self.captures: deque[Capture] = deque(maxlen=256)  # completed, newest last
        self.worker = f"{socket.gethostname()}_{os.getpid()}"  # tensorboard_trace_handler's name
        with contextlib.suppress(OSError):
            sweep_stale_exports(self.root)
        self._warm_end = -1  # last warm-up index; set from the first step seen (resume-safe)
        self._next_at: float = float("inf")
        self._detector = (RegressionDetector(factor=opts.trigger_factor, steps=opts.trigger_steps,
                                             baseline_steps=opts.baseline_steps)
                          if opts.trigger and opts.max_triggered > 0 else None)
        self._quiet_until = 0  # no trigger checks up to this step (cooldown)
        self._triggered = 0
        self._session: _Session | None = None
        # The step now running is profiled (a capture is prepared or recording): a plain
        # attribute, kept with _session, because the recorder reads it every step.
        self.capturing = False
        self._kept: deque[Path] = deque()  # files written by this profiler, oldest first
        self._jobs: queue.Queue[tuple[Any, Capture] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._off = False
        self._told_busy = False  # "another profiler is running" is said once

    @property
    def busy(self) -> bool:
        """A capture is in progress or an export is pending (the profiler session is in use)."""
        return self._session is not None or self._jobs.unfinished_tasks > 0

    # ----------------------------------------------------------------- per step (hot path)
    def on_step_end(self, index: int, step_s: float) -> bool:
        """Step ``index`` just ended after ``step_s`` seconds; returns whether it was profiled."""
        if self.capturing:
            return self._guarded(self._advance, index)
        if self._warm_end < 0:
            self._rebase(index)
        if self._off or index <= self._warm_end:
            return False
        if index >= self._next_at:
            if not self._jobs.unfinished_tasks:  # one export at a time; else retry next step
                self._guarded(self._begin, index, "scheduled", {})
            return False
        # No checks while an export runs: its thread competes with training for the CPU.
        if self._detector is not None and index > self._quiet_until and not (
            self._jobs.unfinished_tasks
        ):
            evidence = self._detector.update(step_s)
            if evidence is not None:
                self._guarded(self._begin, index, "triggered", evidence)
        return False

    def _rebase(self, index: int) -> None:
        """Count warm-up and the first capture from the first step seen (1, or after a resume)."""
        self._warm_end = index - 1 + self.warmup_steps
        if self.options.start_after is not None:
            self._next_at = self._warm_end + self.options.start_after

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> bool:
        """``fn(*args)`` behind the session's fail-open; a failure counts the step as profiled."""
        result = self.failopen.call(_COMPONENT, fn, *args)
        return bool(result) if self.failopen.is_on(_COMPONENT) else True

    def _switch_off(self) -> None:
        """Cleanup when profiling is switched off after an internal error."""
        self._off = True
        self._abandon()

    def _begin(self, index: int, reason: str, evidence: dict[str, float]) -> None:
        opts = self.options
        if reason == "scheduled":
            self._next_at = index + opts.every if opts.every else float("inf")
        else:
            self._triggered += 1
            if self._triggered >= opts.max_triggered:
                self._detector = None
        holder = _claim(self)
        if holder is not None:
            if not self._told_busy:
                self._told_busy = True
                logger.warning("perfcallback: %s is already profiling, and torch runs one "
                               "profiler at a time; this capture is skipped and measuring goes "
                               "on", holder)
            return
        first = index + opts.warmup + 1
        capture = Capture(reason=reason, first_step=first, last_step=first + opts.active - 1,
                          evidence=evidence)
        if reason == "triggered":
            logger.warning(
                "perfcallback: step time regressed to %.2f ms against a %.2f ms baseline for %d "
                "steps (step %d); profiling steps %d-%d", evidence["slow_step_ms"],
                evidence["baseline_step_ms"], int(evidence["slow_steps"]), index, first,
                capture.last_step)
        prof = torch.profiler.profile(
            activities=self._activities(), record_shapes=opts.record_shapes,
            with_stack=opts.with_stack, profile_memory=opts.profile_memory)
        self._session = _Session(prof, capture, start_at=index + opts.warmup)
        self.capturing = True
        prof.prepare_trace()
        if opts.warmup == 0:
            self._start_recording(index)

    def _activities(self) -> list[Any]:
        acts = [torch.profiler.ProfilerActivity.CPU]
        use_cuda = torch.cuda.is_available() if self.options.cuda is None else self.options.cuda
        if use_cuda:
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        return acts

    def _start_recording(self, index: int) -> None:
        s = self._session
        assert s is not None
        s.prof.start_trace()
        s.recording = True
        self._mark_step(s, index + 1)

    @staticmethod
    def _mark_step(s: _Session, index: int) -> None:
        # The same annotation torch.profiler.profile.step() writes; the plugin finds steps by it.
        s.step_fn = torch.autograd.profiler.record_function(f"ProfilerStep#{index}")
        s.step_fn.__enter__()

    def _advance(self, index: int) -> bool:
        s = self._session
        assert s is not None
        if not s.recording:
            if index >= s.start_at:
                self._start_recording(index)
            return True
        s.step_fn.__exit__(None, None, None)
        s.step_fn = None
        s.last_done = index
        if index >= s.capture.last_step:
            self._finish(index)
        else:
            self._mark_step(s, index + 1)
        return True

    def _finish(self, last: int) -> None:
        s = self._session
        assert s is not None
        self._session, self.capturing = None, False
        s.prof.stop_trace()
        s.capture.last_step = last
        self._quiet_until = last + self.options.cooldown_steps
        self._jobs.put((s.prof, s.capture))
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._export_loop, name="perfcallback-trace-export", daemon=True)
            self._thread.start()

    def _abandon(self) -> None:
        """Stop a capture in progress without writing it (after an internal error)."""
        s, self._session, self.capturing = self._session, None, False
        if s is None:
            return
        try:
            if s.step_fn is not None:
                s.step_fn.__exit__(None, None, None)
            s.prof.stop_trace()
        except Exception:  # already failing; the first error was recorded
            logger.debug("perfcallback: profiler cleanup failed", exc_info=True)
        finally:
            _release(self)

    # ----------------------------------------------------------------- export thread
    def _export_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            try:
                self.failopen.call("profiler.export", self._export, *job)
            finally:
                _release(self)  # the next session may start once this one is written
                self._jobs.task_done()

    def _export(self, prof: Any, capture: Capture) -> None:
        name = f"step{capture.first_step:07d}-{capture.reason}"
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{self.worker}.{time.time_ns() // 1_000_000}{TRACE_SUFFIX}"
        raw = folder / f".{final.name}.json.tmp"  # names the plugin's pattern does not match
        packed = folder / f".{final.name}.tmp"
        kineto_tmp = raw.with_name(raw.name + ".tmp")  # Kineto writes here, then renames
        try:
            prof.export_chrome_trace(str(raw))
            if not raw.exists():  # Kineto logs "Failed to write to log file!" and returns
                raise _write_failure(folder)
            with open(raw, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(packed, final)
        finally:
            for tmp in (raw, packed, kineto_tmp):
                tmp.unlink(missing_ok=True)
            if not final.exists():
                with contextlib.suppress(OSError):  # only when empty: other ranks may share it
                    folder.rmdir()
        capture.path, capture.size_bytes = final, final.stat().st_size
        self._kept.append(final)
        self._enforce_retention()
        self.captures.append(capture)
        logger.log(logging.WARNING if capture.reason == "triggered" else logging.INFO,
                   "perfcallback: %s trace of steps %d-%d written to %s (open it in TensorBoard's "
                   "PyTorch Profiler tab or in ui.perfetto.dev)", capture.reason,
                   capture.first_step, capture.last_step, final)
        for fn in list(self.on_trace_ready):
            self.failopen.call(f"on_trace_ready:{getattr(fn, '__name__', fn)}", fn, capture)

    def _enforce_retention(self) -> None:
        """Delete the oldest traces this profiler wrote until both bounds hold."""
        opts = self.options
        sizes = {p: p.stat().st_size for p in self._kept if p.exists()}
        self._kept = deque(p for p in self._kept if p in sizes)
        total = sum(sizes.values())
        while self._kept and (len(self._kept) > opts.max_traces or total > opts.max_mb * _MB):
            old = self._kept.popleft()
            total -= sizes[old]
            old.unlink(missing_ok=True)
            logger.info("perfcallback: deleted trace %s (retention: max_traces=%d, max_mb=%g)",
                        old, opts.max_traces, opts.max_mb)
            with contextlib.suppress(OSError):  # only when empty: other ranks may share it
                old.parent.rmdir()
            for c in self.captures:
                if c.path == old:
                    c.path = None

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Finish a capture in progress and wait (bounded) for exports.

        A capture cut short keeps the steps it recorded; its trace also holds the interrupted
        next step, up to this call (as ``torch.profiler.profile.stop()`` leaves it).
        """
        s = self._session
        if s is not None and s.last_done:  # the run ended mid-capture: keep the steps recorded
            if s.step_fn is not None:
                s.step_fn.__exit__(None, None, None)  # the step that never ended
                s.step_fn = None
            self._guarded(self._finish, s.last_done)
        else:
            self._abandon()
        self._off = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=_EXPORT_JOIN_S)
            if self._thread.is_alive():
                logger.warning("perfcallback: trace export still running after %.0f s; "
                               "leaving it to finish in the background", _EXPORT_JOIN_S)
            self._thread = None
        if self._session is None and not self._jobs.unfinished_tasks:
            _release(self)
