"""The operator table of one rank: per CPU operator name, calls, host and device time.

Definitions follow the Operator view of the PyTorch profiler's TensorBoard plugin
(torch-tb-profiler):
- An operator is a ``cpu_op`` event (``ProfilerStep#N`` is a step, not an operator). Operators
  nest by time containment on the same thread (an operator inside another one's span is its child;
  one nanosecond of slack, Kineto's resolution, absorbs float rounding of ``ts + dur``).
- Host total time is the operator's duration; host self time is that minus the durations of its
  direct child operators.
- A GPU activity (kernel, copy or set; not a stream sync) belongs to the innermost operator whose
  span holds the start of its launch call (the ``cuda_runtime`` event with the same correlation
  id) on the launch call's thread. Device self time is the summed duration of an operator's own
  GPU activities; device total time adds its child operators' device total time.
- Figures are summed over every call of a name, as the plugin does (a recursive operator counts
  its nested calls in its total again). Only operators that start inside the analysed window, and
  GPU activities the window keeps, are counted.
- The table keeps the top :data:`TOP_OPERATORS` by device self time, then host self time.

Memory: the operator columns (32 bytes an operator) count towards ``TraceLimits.max_events``;
this pass adds about 100 bytes an operator (sort keys, three arrays), freed when it returns, less
than a GPU event or launch call costs, so the bound of docs/reliability.md holds.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from perfcallback.trace.events import GPU_KIND_SYNC, RankTrace

TOP_OPERATORS = 20
_NEST_SLACK_US = 1e-3  # one nanosecond: Kineto's resolution; covers rounding of ts + dur


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorStat:
    """Totals for one operator name over the analysed window (times in trace microseconds)."""

    name: str
    calls: int
    host_total_us: float
    host_self_us: float
    device_total_us: float
    device_self_us: float


def operator_stats(
    rt: RankTrace, kept: Sequence[int], launch_from: float, launch_to: float,
    top: int = TOP_OPERATORS,
) -> tuple[OperatorStat, ...]:
    """The operator table of ``rt`` (see the module docstring).

    Args:
        rt: The rank's columns.
        kept: Indices of the GPU events the window keeps.
        launch_from: Operators starting before this are outside the window.
        launch_to: Operators starting at or after this are outside the window.
        top: Rows kept.
    """
    by_thread: dict[int, list[int]] = {}
    thread = rt.op_thread
    for i, ts in enumerate(rt.op_ts):
        if launch_from <= ts < launch_to:
            by_thread.setdefault(thread[i], []).append(i)
    if not by_thread:
        return ()
    child_us, self_dev, total_dev = _nest(rt, by_thread, _device_by_launch(rt, kept))
    return _aggregate(rt, by_thread, child_us, self_dev, total_dev, top)


def _device_by_launch(rt: RankTrace, kept: Sequence[int]) -> dict[int, float]:
    """Summed duration of the kept GPU activities of each launch call (index into ``launch_*``)."""
    out: dict[int, float] = {}
    index, corr, dur, kind = rt.launch_index, rt.gpu_corr, rt.gpu_dur, rt.gpu_kind
    for i in kept:
        if kind[i] == GPU_KIND_SYNC:
            continue
        j = index.get(corr[i])
        if j is not None:
            out[j] = out.get(j, 0.0) + dur[i]
    return out


def _nest(
    rt: RankTrace, by_thread: dict[int, list[int]], device: dict[int, float]
) -> tuple[array[float], array[float], array[float]]:
    """One sweep per thread over its operators and launch calls, with a stack of open operators.

    Returns each operator's direct children's summed duration, its device self time and its
    device total time, indexed like ``rt.op_*``. Memory: the sort keys and three arrays, about
    100 bytes per operator, freed on return (no per-operator tuples: the event limit bounds it).
    """
    n = len(rt.op_ts)
    child_us = array("d", [0.0]) * n
    self_dev = array("d", [0.0]) * n
    total_dev = array("d", [0.0]) * n
    ts, dur = rt.op_ts, rt.op_dur
    launches: dict[int, list[int]] = {}
    for j in device:
        launches.setdefault(rt.launch_thread[j], []).append(j)
    lts = rt.launch_ts
    for th, members in by_thread.items():
        _sort_operators(members, ts, dur)
        calls = sorted(launches.get(th, ()), key=lts.__getitem__)
        _sweep(members, calls, ts, dur, lts, device, child_us, self_dev, total_dev)
    return child_us, self_dev, total_dev


def _sort_operators(members: list[int], ts: array[float], dur: array[float]) -> None:
    """Sort by start time, then longest first (a parent before the children it holds); equal
    spans keep file order, so the earlier event is the parent. One C-keyed sort, then only the
    runs of equal start times are reordered (rare: a parent and its first child)."""
    members.sort(key=ts.__getitem__)
    k, n = 0, len(members)
    while k < n:
        start, end = ts[members[k]], k + 1
        while end < n and ts[members[end]] == start:
            end += 1
        if end - k > 1:
            members[k:end] = sorted(members[k:end], key=lambda i: -dur[i])
        k = end


def _sweep(
    members: list[int], calls: list[int], ts: array[float], dur: array[float],
    lts: array[float], device: dict[int, float], child_us: array[float],
    self_dev: array[float], total_dev: array[float],
) -> None:
    """Nest one thread's sorted operators; give each launch call's GPU time to the innermost
    open operator. An operator's device total is final when it leaves the stack (the closing
    code is inlined three times: this loop runs once per operator and launch call)."""
    stack: list[int] = []
    ends: list[float] = []
    k, n_calls = 0, len(calls)
    for i in members:
        start = ts[i]
        while k < n_calls and lts[calls[k]] < start:  # launch calls before this operator
            at = lts[calls[k]]
            while ends and ends[-1] <= at:  # operators that ended before the call
                c = stack.pop()
                ends.pop()
                total_dev[c] += self_dev[c]
                if stack:
                    total_dev[stack[-1]] += total_dev[c]
            if stack:
                self_dev[stack[-1]] += device[calls[k]]
            k += 1
        end = start + dur[i]
        # close what ended before this operator starts, or does not hold it (a sibling)
        while ends and (start - _NEST_SLACK_US >= ends[-1] or end > ends[-1] + _NEST_SLACK_US):
            c = stack.pop()
            ends.pop()
            total_dev[c] += self_dev[c]
            if stack:
                total_dev[stack[-1]] += total_dev[c]
        if stack:
            child_us[stack[-1]] += dur[i]
        stack.append(i)
        ends.append(end)
    for j in calls[k:n_calls]:
        at = lts[j]
        while ends and ends[-1] <= at:
            c = stack.pop()
            ends.pop()
            total_dev[c] += self_dev[c]
            if stack:
                total_dev[stack[-1]] += total_dev[c]
        if stack:
            self_dev[stack[-1]] += device[j]
    while stack:
        c = stack.pop()
        total_dev[c] += self_dev[c]
        if stack:
            total_dev[stack[-1]] += total_dev[c]


def _aggregate(
    rt: RankTrace, by_thread: dict[int, list[int]], child_us: array[float],
    self_dev: array[float], total_dev: array[float], top: int,
) -> tuple[OperatorStat, ...]:
    names, dur = rt.op_name, rt.op_dur
    size = len(rt.names)
    calls = [0] * size  # by name id
    host_total, host_self, dev_total, dev_self = ([0.0] * size for _ in range(4))
    for members in by_thread.values():
        for i in members:
            nid, d = names[i], dur[i]
            own = d - child_us[i]
            calls[nid] += 1
            host_total[nid] += d
            host_self[nid] += own if own > 0.0 else 0.0
            dev_total[nid] += total_dev[i]
            dev_self[nid] += self_dev[i]
    by_name = {nid: (calls[nid], host_total[nid], host_self[nid], dev_total[nid], dev_self[nid])
               for nid in range(size) if calls[nid]}
    ranked = sorted(by_name.items(), key=lambda kv: (-kv[1][4], -kv[1][2], rt.names[kv[0]]))
    return tuple(
        OperatorStat(name=rt.names[n], calls=int(r[0]), host_total_us=r[1], host_self_us=r[2],
                     device_total_us=r[3], device_self_us=r[4])
        for n, r in ranked[:top])
