"""Memory probes: host RSS and CUDA allocator statistics.

Host RSS comes from ``/proc/self/statm`` read with ``os.pread`` on a descriptor kept open, about
1-2 microseconds a read on Linux alone, but a syscall slows the training step after it, so the
recorder reads it once per window (see ``recorder._RSS_FIT_WINDOWS``); elsewhere ``psutil`` is used
when installed, else RSS is not measured. CUDA figures come from one ``torch.cuda.memory_stats()``
call (it builds a dict of a few hundred entries, tens of microseconds), so the recorder samples it
every few steps, not every step.
"""

from __future__ import annotations

import os
from typing import Any

import torch

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class HostRSS:
    """Reads the resident set size of this process in bytes; 0 when it cannot be measured."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._psutil_proc: Any = None
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            try:
                import psutil  # optional; only off Linux

                self._psutil_proc = psutil.Process()
            except ImportError:
                pass

    @property
    def available(self) -> bool:
        return self._fd is not None or self._psutil_proc is not None

    def read(self) -> int:
        if self._fd is not None:
            # statm: size resident shared text lib data dt (in pages)
            return int(os.pread(self._fd, 64, 0).split()[1]) * _PAGE_SIZE
        if self._psutil_proc is not None:
            return int(self._psutil_proc.memory_info().rss)
        return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cuda_memory_snapshot(device: torch.device | int | None = None) -> dict[str, float]:
    """Allocator figures for ``device`` in bytes, plus retry/OOM counters (cumulative)."""
    stats = torch.cuda.memory_stats(device)
    return {
        "allocated_bytes": float(stats.get("allocated_bytes.all.current", 0)),
        "reserved_bytes": float(stats.get("reserved_bytes.all.current", 0)),
        "peak_allocated_bytes": float(stats.get("allocated_bytes.all.peak", 0)),
        "alloc_retries": float(stats.get("num_alloc_retries", 0)),
        "ooms": float(stats.get("num_ooms", 0)),
    }


def cuda_total_bytes(device: torch.device | int | None = None) -> float:
    return float(torch.cuda.get_device_properties(device).total_memory)


def reset_cuda_peak(device: torch.device | int | None = None) -> None:
    """Restart the allocator's peak counters on ``device`` (the recorder does so every window)."""
    torch.cuda.reset_peak_memory_stats(device)
