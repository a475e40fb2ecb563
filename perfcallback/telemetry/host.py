"""Host CPU facts per window: torch's intra-op threads, the CPU time this process gets, host load.

Read on the training thread at a window's end, at most every half second (three cheap calls:
``torch.get_num_threads()``, ``time.process_time()`` and ``os.getloadavg()``, the last two
syscalls, which slow the training step after them). CPU time over wall time is how many cores this
process kept busy; the load average counts runnable threads on the whole host, ours included, so
their difference tells how busy the rest of the machine is. Neither means much over less than a
second, and with short steps a window lasts a few milliseconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

Clock = Callable[[], float]


def load_average() -> float | None:
    """One-minute load average (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


class HostThreadsProbe:
    """``intra_op_threads``, ``process_cpu_cores`` and ``load_avg_1m`` for each window.

    Args:
        wall: Wall clock in seconds; ``cpu``: this process's CPU time (all its threads) in
            seconds; ``load``: the host's load average. Injectable for exact tests.
        min_interval_s: Windows closer than this to the last sample keep its figures.
    """

    name = "host_threads"

    def __init__(self, *, wall: Clock = time.perf_counter, cpu: Clock = time.process_time,
                 load: Callable[[], float | None] = load_average,
                 min_interval_s: float = 0.0) -> None:
        self._wall, self._cpu, self._load = wall, cpu, load
        self._min_interval_s = min_interval_s
        self._t0, self._cpu0 = wall(), cpu()
        self.latest: dict[str, float] = {}

    def sample(self) -> None:
        t = self._wall()
        if self.latest and t - self._t0 < self._min_interval_s:
            return
        c = self._cpu()
        figures = {"intra_op_threads": float(torch.get_num_threads())}
        if t > self._t0:
            figures["process_cpu_cores"] = (c - self._cpu0) / (t - self._t0)
        load = self._load()
        if load is not None:
            figures["load_avg_1m"] = float(load)
        self._t0, self._cpu0 = t, c
        self.latest = figures

    def figures(self, step_s: float) -> dict[str, float]:
        return self.latest

    def close(self) -> None:
        pass
