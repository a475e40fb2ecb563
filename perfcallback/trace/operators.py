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
this pass adds about 70 bytes an operator (its index in a per-thread list, a sort key), freed when
it returns, less than a GPU event or launch call costs, so the bound of docs/reliability.md holds.
Each operator is counted as it leaves the stack of open operators, so nothing else is kept.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from perfcallback._record import record
from perfcallback.trace.events import GPU_KIND_SYNC, RankTrace

TOP_OPERATORS = 20
_NEST_SLACK_US = 1e-3  # one nanosecond: Kineto's resolution; covers rounding of ts + dur


@record
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
            members = by_thread.get(thread[i])
            if members is None:
                members = by_thread[thread[i]] = []
            members.append(i)
    if not by_thread:
        return ()
    device = _device_by_launch(rt, kept)
    launches: dict[int, list[int]] = {}
    for j in device:
        launches.setdefault(rt.launch_thread[j], []).append(j)
    totals = _Totals(len(rt.names))
    for th, members in by_thread.items():
        _sort_operators(members, rt.op_ts, rt.op_dur)
        calls = sorted(launches.get(th, ()), key=rt.launch_ts.__getitem__)
        _sweep(rt, members, calls, device, totals)
    return totals.top(rt.names, top)


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


class _Totals:
    """Per operator name (by name id): calls, host total/self, device total/self time."""

    __slots__ = ("calls", "dev_self", "dev_total", "host_self", "host_total")

    def __init__(self, names: int) -> None:
        self.calls = [0] * names
        self.host_total, self.host_self = [0.0] * names, [0.0] * names
        self.dev_total, self.dev_self = [0.0] * names, [0.0] * names

    def top(self, names: Sequence[str], top: int) -> tuple[OperatorStat, ...]:
        used = [n for n, c in enumerate(self.calls) if c]
        used.sort(key=lambda n: (-self.dev_self[n], -self.host_self[n], names[n]))
        return tuple(
            OperatorStat(name=names[n], calls=self.calls[n], host_total_us=self.host_total[n],
                         host_self_us=self.host_self[n], device_total_us=self.dev_total[n],
                         device_self_us=self.dev_self[n])
            for n in used[:top])


def _sweep(
    rt: RankTrace, members: list[int], calls: list[int], device: dict[int, float],
    totals: _Totals,
) -> None:
    """Nest one thread's sorted operators with a stack of open ones; give each launch call's GPU
    time to the innermost open operator. An operator is counted when it leaves the stack, when
    its children are known: so nothing is kept per operator beyond the stack."""
    ts, dur, names, lts = rt.op_ts, rt.op_dur, rt.op_name, rt.launch_ts
    n_calls, n_host_total, n_host_self = totals.calls, totals.host_total, totals.host_self
    n_dev_total, n_dev_self = totals.dev_total, totals.dev_self
    # the open operators, innermost last: index, end, children's time, own and children's GPU time
    s_op: list[int] = []
    s_end: list[float] = []
    s_child: list[float] = []
    s_own: list[float] = []
    s_below: list[float] = []

    def close() -> None:
        i = s_op.pop()
        s_end.pop()
        d, own = dur[i], s_own.pop()
        total, busy = s_below.pop() + own, d - s_child.pop()
        nid = names[i]
        n_calls[nid] += 1
        n_host_total[nid] += d
        n_host_self[nid] += busy if busy > 0.0 else 0.0
        n_dev_self[nid] += own
        n_dev_total[nid] += total
        if s_below:
            s_below[-1] += total

    k, last = 0, len(calls)
    for i in members:
        start = ts[i]
        while k < last and lts[calls[k]] < start:  # launch calls before this operator
            at = lts[calls[k]]
            while s_end and s_end[-1] <= at:  # operators that ended before the call
                close()
            if s_own:
                s_own[-1] += device[calls[k]]
            k += 1
        end = start + dur[i]
        # close what ended before this operator starts, or does not hold it (a sibling)
        while s_end and (start - _NEST_SLACK_US >= s_end[-1] or end > s_end[-1] + _NEST_SLACK_US):
            close()
        if s_child:
            s_child[-1] += dur[i]
        s_op.append(i)
        s_end.append(end)
        s_child.append(0.0)
        s_own.append(0.0)
        s_below.append(0.0)
    for j in calls[k:]:
        while s_end and s_end[-1] <= lts[j]:
            close()
        if s_own:
            s_own[-1] += device[j]
    while s_op:
        close()
