"""Clocks: the host clock and CUDA-event timing. The only module that decides when to synchronise.

Design note: device time is measured with CUDA events recorded on the current stream at phase
boundaries and read later with ``event.query()`` (non-blocking). A step's events are resolved only
once its last event has completed, typically a step or two later, so the hot path never waits for
the device. ``synchronize()`` is called only in :meth:`CudaEventTimer.drain`, at report/exit time.

Events are recorded on the current stream *of the training device* (not of whatever device is
current), and no event is recorded while that stream is being captured into a CUDA graph (an
event with timing cannot be captured; recording one would invalidate the user's capture).
Constructing a timer makes no CUDA call: nothing touches the driver before the first step, so a
fork-based launcher (``ddp_fork``, ``ddp_notebook``) still finds CUDA uninitialised.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

Clock = Callable[[], float]
host_clock: Clock = time.perf_counter

_MAX_PENDING_STEPS = 64  # steps whose events are still in flight; older ones are dropped unread


class CudaEventTimer:
    """Per-step device-side phase times from CUDA events, resolved lazily by polling.

    Call :meth:`begin` at step start, :meth:`mark` whenever the active phase changes (with the index
    of the phase that starts), :meth:`end` at step end, and :meth:`poll` whenever convenient: it
    returns the steps whose events have completed, as ``(step_index, device_step_s, phase_s)``.
    """

    def __init__(self, n_phases: int, device: torch.device | int | None = None) -> None:
        self._n_phases = n_phases
        self.device = device  # None: the current device, read at the first step
        self._free: list[Any] = []
        self._current: list[tuple[int, Any]] = []
        self._pending: deque[tuple[int, list[tuple[int, Any]]]] = deque()
        self._stream: Any = None  # the training device's current stream, read once per step
        self.skipped_captures = 0  # steps not timed because their stream was being captured
        self._capturing = False  # the current step began inside a graph capture

    def _event(self) -> Any:
        ev = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        ev.record(self._stream)
        return ev

    def begin(self, phase: int) -> None:
        # A capture runs on the current stream of the current device (torch.cuda.graph makes
        # its side stream current), so this one check covers it.
        self._capturing = torch.cuda.is_current_stream_capturing()
        if self._capturing:  # inside torch.cuda.graph(...): record nothing this step
            self.skipped_captures += 1
            self._current = []
            return
        self._stream = torch.cuda.current_stream(self.device)
        self._current = [(phase, self._event())]

    def mark(self, phase: int) -> None:
        if self._current:
            self._current.append((phase, self._event()))

    def end(self, step_index: int) -> None:
        if not self._current:
            return
        self._current.append((-1, self._event()))
        self._pending.append((step_index, self._current))
        self._current = []
        while (
            len(self._pending) > _MAX_PENDING_STEPS
        ):  # bounded even if the device never catches up
            self._recycle(self._pending.popleft()[1])

    def discard(self) -> None:
        """Drop the events of an aborted step."""
        self._recycle(self._current)
        self._current = []

    def poll(self) -> list[tuple[int, float, list[float]]]:
        """Resolve completed steps without blocking (``query()`` only)."""
        done: list[tuple[int, float, list[float]]] = []
        if self._capturing:  # event queries are prohibited during a (global-mode) capture
            return done
        while self._pending and self._pending[0][1][-1][1].query():
            index, marks = self._pending.popleft()
            done.append((index, *self._resolve(marks)))
        return done

    def drain(self) -> list[tuple[int, float, list[float]]]:
        """Resolve everything pending. Synchronises: call at report or exit time only."""
        if self._pending:
            self._pending[-1][1][-1][1].synchronize()
        return self.poll()

    def _resolve(self, marks: list[tuple[int, Any]]) -> tuple[float, list[float]]:
        phases = [0.0] * self._n_phases
        for (phase, start), (_, stop) in itertools.pairwise(marks):
            if 0 <= phase < self._n_phases:
                phases[phase] += start.elapsed_time(stop) / 1e3  # elapsed_time is in ms
        total = marks[0][1].elapsed_time(marks[-1][1]) / 1e3
        self._recycle(marks)
        return total, phases

    def _recycle(self, marks: list[tuple[int, Any]]) -> None:
        self._free.extend(ev for _, ev in marks)
