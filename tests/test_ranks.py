"""The cross-rank comparison on its own (pure functions): wire format, straggler logic, history."""

from __future__ import annotations

from perfcallback.ranks import (
    PAYLOAD_BYTES,
    RankSummary,
    StragglerHistory,
    compare_ranks,
)


def summary(rank: int, phases: tuple[float, ...], comm: float, window: int = 3,
            **kw: object) -> RankSummary:
    step = sum(phases)
    return RankSummary(rank=rank, window=window, first_step=21, last_step=30, steps=10,
                       step_s=step, step_p50_s=step, step_p90_s=step, phase_s=phases,
                       comm_exposed_s=comm, comm_floor_s=comm, memory_peak_bytes=1e9,
                       run_steps=30, run_phase_s=phases, run_step_s=step, **kw)  # type: ignore[arg-type]


def test_the_payload_has_a_fixed_size_and_round_trips() -> None:
    s = summary(7, (0.001, 0.002, 0.010, 0.003, 0.0005), 0.004, finished=True, sent_at=12.5)
    data = s.pack()
    assert len(data) == PAYLOAD_BYTES < 256
    assert RankSummary.unpack(data) == s
    assert RankSummary.unpack(b"garbage") is None
    assert RankSummary.unpack(b"x" * PAYLOAD_BYTES) is None


def test_a_backward_straggler_masked_by_the_all_reduce_is_found() -> None:
    # Equal backward times (the all-reduce evens them out); rank 1 waits least: it is the slow one.
    fast = summary(0, (0.0, 0.002, 0.030, 0.001, 0.0), comm=0.021)
    slow = summary(1, (0.0, 0.002, 0.030, 0.001, 0.0), comm=0.001)
    history = StragglerHistory()
    for w in range(1, 4):
        cr = compare_ranks(2, {0: fast, 1: summary(1, slow.phase_s, 0.001, window=w)}, (),
                           history)
    assert cr.slowest_rank == 1 and cr.slow_phase == "backward"
    assert abs(cr.others_wait_s - 0.020) < 1e-9
    assert (cr.slowest_count, cr.rounds) == (3, 3)
    assert abs(cr.spread_pct - 100 * 0.020 / 0.033) < 1e-6
    assert cr.min_comm_floor_s == 0.001


def test_finished_missing_and_profiled_ranks_are_not_compared() -> None:
    a = summary(0, (0.0, 0.01, 0.01, 0.0, 0.0), 0.0)
    b = summary(1, (0.0, 0.02, 0.01, 0.0, 0.0), 0.0, finished=True)
    assert compare_ranks(2, {0: a, 1: b}, ()).slowest_rank is None
    c = summary(2, (0.0, 0.01, 0.01, 0.0, 0.0), 0.0)
    assert compare_ranks(3, {0: a, 2: c}, (1,)).missing == (1,)
    assert compare_ranks(2, {0: a, 1: a}, ()).slowest_rank is None  # a payload under another key
    captured = summary(1, (0.0, 0.02, 0.01, 0.0, 0.0), 0.0, last_capture_step=25)
    history = StragglerHistory()
    cr = compare_ranks(2, {0: a, 1: captured}, (), history)
    assert not cr.comparable and history.count(1) == (0, 0)
    report = cr.to_report()
    assert set(report) == {"0", "1", "straggler"}
    assert set(report["0"]["breakdown"]) == {"data", "forward", "backward", "optimizer", "other",
                                             "step"}


def test_history_counts_each_round_once() -> None:
    h = StragglerHistory(size=3)
    for round_id, rank in [(1, 2), (1, 2), (2, 2), (3, 0), (4, 2)]:
        h.add(round_id, rank)
    assert h.count(2) == (2, 3)
