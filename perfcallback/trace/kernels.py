"""Kernel-level figures of one rank: kernel types, top kernels, launch statistics, idle breakdown.

Definitions follow HolisticTraceAnalysis 0.5.0 where it has one:
- Kernel type by name (``hta.utils.utils.get_kernel_type``): communication ``^nccl.*Kernel``,
  memory ``^Memcpy|^Memset|^dma``, computation anything not matching
  ``(^nccl.*Kernel)|(.*(Memcpy)|(Memset))|(.*Sync)``, other the rest (e.g. ``Stream Sync``).
- Launch delay (``CudaKernelAnalysis.cuda_kernel_launch_stats``): kernel start minus the end of
  the host launch call with the same correlation id, clipped at 0.
- Idle breakdown (``BreakdownAnalysis._analyze_idle_time_for_stream``): per stream, the gap before
  each kernel is *host wait* when its launch call started after the previous kernel ended, else
  *kernel wait* when shorter than 30 us (HTA's default ``consecutive_kernel_delay``, in the
  trace's microseconds), else *other*. We sum gaps clipped at 0 (HTA sums them as they are).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from perfcallback._record import record
from perfcallback.stats import percentile
from perfcallback.trace.events import GPU_KIND_KERNEL, GPU_KIND_SYNC, RankTrace

COMPUTE, COMMUNICATION, MEMORY, OTHER = "compute", "communication", "memory", "other"
_COMM_RE = re.compile(r"^nccl.*Kernel")
_MEMORY_RE = re.compile(r"(^Memcpy)|(^Memset)|(^dma)")
_NON_COMPUTE_RE = re.compile(r"(^nccl.*Kernel)|(.*(Memcpy)|(Memset))|(.*Sync)")
SHORT_KERNEL_US = 10.0  # "short kernel" bound of EXTRA_KEYS["short_kernel_pct"]
KERNEL_WAIT_US = 30.0  # HTA get_idle_time_breakdown(consecutive_kernel_delay=30)
TOP_KERNELS = 10
_LAUNCH_CALLS = re.compile(
    r"(LaunchKernel(Ex|ExC)?$)|(^(cuda|hip)(Memcpy|Memset)(Async|WithStream)$)"
    r"|(^runFunction - job_prep_and_submit_for_execution$)"
)


def kernel_type(name: str) -> str:
    """HTA's kernel type of a GPU event name: compute, communication, memory or other."""
    if _COMM_RE.match(name):
        return COMMUNICATION
    if _MEMORY_RE.match(name):
        return MEMORY
    if not _NON_COMPUTE_RE.match(name):
        return COMPUTE
    return OTHER


def is_launch_call(name: str) -> bool:
    """A host runtime call that enqueues one kernel, copy or set."""
    return _LAUNCH_CALLS.search(name) is not None


@record
class KernelTypeShare:
    """Summed GPU time of one kernel type (overlaps counted once per kernel, as HTA sums)."""

    kernel_type: str
    count: int
    total_us: float
    pct: float  # of the summed time of all kernels, copies and sets


@record
class KernelStat:
    """Totals for one kernel name."""

    name: str
    kernel_type: str
    count: int
    total_us: float
    mean_us: float
    max_us: float
    pct: float  # of the summed time of all kernels, copies and sets


@record
class LaunchStats:
    """Host-to-device launch figures over kernels, copies and sets with a known launch call."""

    launches: int
    delay_p50_us: float
    delay_p90_us: float
    delay_max_us: float
    runtime_p50_us: float  # duration of the host launch call
    gpu_shorter_than_launch_pct: float  # kernels that run for less time than their launch call
    short_kernel_pct: float  # kernels shorter than SHORT_KERNEL_US, of all kernels


@record
class IdleBreakdown:
    """GPU idle gaps between consecutive kernels of each stream, summed over streams."""

    host_wait_us: float
    kernel_wait_us: float
    other_us: float

    @property
    def total_us(self) -> float:
        return self.host_wait_us + self.kernel_wait_us + self.other_us

    @property
    def host_wait_pct(self) -> float | None:
        return 100.0 * self.host_wait_us / self.total_us if self.total_us > 0 else None


def name_types(rt: RankTrace) -> list[str]:
    """Kernel type of every interned name of ``rt`` (index = name id)."""
    return [kernel_type(name) for name in rt.names]


def kernel_breakdown(
    rt: RankTrace, kept: Sequence[int], types: Sequence[str], *, top: int = TOP_KERNELS
) -> tuple[tuple[KernelTypeShare, ...], tuple[KernelStat, ...], dict[str, float]]:
    """Per-type shares, the ``top`` kernels and every name's summed time, over ``kept``."""
    per_name: dict[int, list[float]] = {}  # name id -> [count, total, max]
    kinds, names, durs = rt.gpu_kind, rt.gpu_name, rt.gpu_dur
    for i in kept:
        if kinds[i] == GPU_KIND_SYNC:
            continue
        acc = per_name.get(names[i])
        if acc is None:
            acc = per_name[names[i]] = [0, 0.0, 0.0]
        dur = durs[i]
        acc[0] += 1
        acc[1] += dur
        if dur > acc[2]:
            acc[2] = dur
    grand = sum(acc[1] for acc in per_name.values())
    by_type: dict[str, list[float]] = {}
    for name_id, (count, total, _) in per_name.items():
        acc = by_type.setdefault(types[name_id], [0, 0.0])
        acc[0] += count
        acc[1] += total
    shares = tuple(
        KernelTypeShare(kernel_type=kt, count=int(c), total_us=t, pct=_pct(t, grand))
        for kt, (c, t) in sorted(by_type.items(), key=lambda kv: -kv[1][1])
    )
    ranked = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:top]
    stats = tuple(
        KernelStat(name=rt.names[nid], kernel_type=types[nid], count=int(c), total_us=t,
                   mean_us=t / c, max_us=m, pct=_pct(t, grand))
        for nid, (c, t, m) in ranked
    )
    return shares, stats, {rt.names[nid]: acc[1] for nid, acc in per_name.items()}


def launch_stats(rt: RankTrace, kept: Sequence[int]) -> LaunchStats | None:
    """Launch delays and short-kernel shares; ``None`` when no launch call is in the trace."""
    delays: list[float] = []
    runtimes: list[float] = []
    shorter = 0
    kernels = short = 0
    launch_names: dict[int, bool] = {}
    kinds, durs, corrs, gpu_ts = rt.gpu_kind, rt.gpu_dur, rt.gpu_corr, rt.gpu_ts
    index, l_ts, l_dur, l_name = rt.launch_index, rt.launch_ts, rt.launch_dur, rt.launch_name
    for i in kept:  # hot: one pass over the window's GPU events, locals only
        kind = kinds[i]
        if kind == GPU_KIND_SYNC:
            continue
        dur = durs[i]
        if kind == GPU_KIND_KERNEL:
            kernels += 1
            short += dur < SHORT_KERNEL_US
        j = index.get(corrs[i])
        if j is None:
            continue
        nid = l_name[j]
        ok = launch_names.get(nid)
        if ok is None:
            ok = launch_names[nid] = is_launch_call(rt.names[nid])
        if not ok:
            continue
        runtime = l_dur[j]
        delay = gpu_ts[i] - (l_ts[j] + runtime)
        delays.append(delay if delay > 0.0 else 0.0)
        runtimes.append(runtime)
        shorter += dur < runtime
    if not delays:
        return None
    delays.sort()
    runtimes.sort()
    return LaunchStats(
        launches=len(delays),
        delay_p50_us=percentile(delays, 50),
        delay_p90_us=percentile(delays, 90),
        delay_max_us=delays[-1],
        runtime_p50_us=percentile(runtimes, 50),
        gpu_shorter_than_launch_pct=_pct(shorter, len(delays)),
        short_kernel_pct=_pct(short, kernels),
    )


def idle_breakdown(
    rt: RankTrace, kept: Sequence[int], starts: Sequence[float], ends: Sequence[float]
) -> IdleBreakdown | None:
    """HTA's idle-time breakdown over ``kept`` GPU events (``starts``/``ends`` indexed alike).

    Args:
        rt: The rank's trace.
        kept: Indices of the GPU events in the analysed window.
        starts: Start time of every GPU event of ``rt`` as the temporal breakdown uses it.
        ends: End time, likewise.
    """
    by_stream: dict[int, list[int]] = {}
    for i in kept:
        if rt.gpu_kind[i] != GPU_KIND_SYNC:
            by_stream.setdefault(rt.gpu_stream[i], []).append(i)
    if not by_stream:
        return None
    host = kernel = other = 0.0
    for members in by_stream.values():
        members.sort(key=lambda i: starts[i])
        for prev, cur in pairwise(members):
            gap = max(0.0, starts[cur] - ends[prev])
            j = rt.launch_of(rt.gpu_corr[cur])
            if j is not None and rt.launch_ts[j] > ends[prev]:
                host += gap
            elif gap < KERNEL_WAIT_US:
                kernel += gap
            else:
                other += gap
    return IdleBreakdown(host_wait_us=host, kernel_wait_us=kernel, other_us=other)


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0
