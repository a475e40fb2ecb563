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

Memory: the columns are bounded by ``TraceLimits.max_events``; this pass adds a few arrays of the
same length, freed when it returns.
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
    ops = [i for i, ts in enumerate(rt.op_ts) if launch_from <= ts < launch_to]
    if not ops:
        return ()
    device = _device_by_launch(rt, kept)
    parent, child_us, self_dev, order = _nest(rt, ops, device)
    total_dev = array("d", self_dev)
    for i in reversed(order):  # children come after their parents: fold totals upwards
        p = parent[i]
        if p >= 0:
            total_dev[p] += total_dev[i]
    return _aggregate(rt, ops, child_us, self_dev, total_dev, top)


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
    rt: RankTrace, ops: Sequence[int], device: dict[int, float]
) -> tuple[array[int], array[float], array[float], list[int]]:
    """One sweep per thread over operators and launch calls, with a stack of open operators.

    Returns each operator's parent (-1: none), its direct children's summed duration and its
    device self time, indexed like ``rt.op_*``, and the operators in sweep order (a parent
    before its children).
    """
    n = len(rt.op_ts)
    parent = array("q", [-1]) * n
    child_us = array("d", [0.0]) * n
    self_dev = array("d", [0.0]) * n
    ts, dur, thread = rt.op_ts, rt.op_dur, rt.op_thread
    # (thread, time, 0 = operator / 1 = launch, -duration, index): at equal times an operator
    # opens before a launch it holds, and a longer operator before a shorter one inside it.
    items = [(thread[i], ts[i], 0, -dur[i], i) for i in ops]
    lts, lthread = rt.launch_ts, rt.launch_thread
    items += [(lthread[j], lts[j], 1, 0.0, j) for j in device]
    items.sort()
    stack: list[int] = []
    ends: list[float] = []
    order: list[int] = []
    current = -1
    for th, start, is_launch, _, i in items:
        if th != current:
            stack.clear()
            ends.clear()
            current = th
        while ends and (ends[-1] <= start if is_launch else start - _NEST_SLACK_US >= ends[-1]):
            stack.pop()
            ends.pop()
        if is_launch:
            if stack:
                self_dev[stack[-1]] += device[i]
            continue
        end = start + dur[i]
        while ends and end > ends[-1] + _NEST_SLACK_US:  # not inside the open one: a sibling
            stack.pop()
            ends.pop()
        if stack:
            parent[i] = stack[-1]
            child_us[stack[-1]] += dur[i]
        stack.append(i)
        ends.append(end)
        order.append(i)
    return parent, child_us, self_dev, order


def _aggregate(
    rt: RankTrace, ops: Sequence[int], child_us: array[float], self_dev: array[float],
    total_dev: array[float], top: int,
) -> tuple[OperatorStat, ...]:
    by_name: dict[int, list[float]] = {}  # name -> [calls, host total, host self, dev tot, self]
    names, dur = rt.op_name, rt.op_dur
    for i in ops:
        row = by_name.get(names[i])
        if row is None:
            row = by_name[names[i]] = [0, 0.0, 0.0, 0.0, 0.0]
        row[0] += 1
        row[1] += dur[i]
        row[2] += max(0.0, dur[i] - child_us[i])
        row[3] += total_dev[i]
        row[4] += self_dev[i]
    ranked = sorted(by_name.items(), key=lambda kv: (-kv[1][4], -kv[1][2], rt.names[kv[0]]))
    return tuple(
        OperatorStat(name=rt.names[n], calls=int(r[0]), host_total_us=r[1], host_self_us=r[2],
                     device_total_us=r[3], device_self_us=r[4])
        for n, r in ranked[:top])
