"""Cross-rank comparison: each rank's window summary, and what rank zero concludes from all of them.

Pure Python (no torch, no I/O): :mod:`perfcallback.distributed` moves :class:`RankSummary` bytes
between ranks; this module packs them and compares them.

Design notes:
- **Work, not step time.** Under DDP every rank's step takes as long as the slowest one's: the
  others wait for it in the gradient all-reduce at the end of backward. So step times (and, when
  the slow phase is backward, even backward times) are equal across ranks. What differs is the
  *work* each rank does per step: its step time minus its exposed gradient-sync wait. The rank
  with the most work is the straggler; the phase where its work exceeds the others' median most
  is where it is slow; the others lose the difference of their wait and its wait on every step.
- **Backward work** is the backward phase minus the sync wait, so a slow backward that DDP masks
  shows up where a slow forward or data fetch does.
- **Persistence.** One noisy window proves nothing; :class:`StragglerHistory` keeps which rank was
  slowest in each of the last rounds, and the finding quotes it ("rank 3 slowest in 9 of 10").
"""

from __future__ import annotations

import statistics
import struct
from collections import deque
from collections.abc import Mapping

from perfcallback._record import field, record
from perfcallback.stats import BACKWARD as _BACKWARD
from perfcallback.stats import PHASE_NAMES as PHASES

# Fixed-size wire format: the bytes per rank per window do not depend on the model or the run.
_FORMAT = struct.Struct("<4sHiiii" + "d" * 22)
_MAGIC = b"pcb1"
PAYLOAD_BYTES = _FORMAT.size


@record
class RankSummary:
    """One rank's figures for its latest window and its whole run so far (seconds per step)."""

    rank: int
    window: int  # windows completed on that rank
    first_step: int
    last_step: int
    steps: int  # steps in the window
    step_s: float
    step_p50_s: float
    step_p90_s: float
    phase_s: tuple[float, ...]  # PHASES order, window means
    comm_exposed_s: float  # window mean of the gradient-sync wait inside backward
    comm_floor_s: float  # its 25th percentile: the wait that recurs every step
    memory_peak_bytes: float  # host RSS or CUDA peak, the larger
    run_steps: int = 0
    run_phase_s: tuple[float, ...] = (0.0,) * 5  # whole-run means, PHASES order
    run_step_s: float = 0.0
    run_comm_exposed_s: float = 0.0
    last_capture_step: int = 0  # last step of this rank's latest profiler capture (0: none)
    finished: bool = False
    sent_at: float = 0.0  # sender's wall clock (time.time())

    def pack(self) -> bytes:
        """The fixed-size bytes sent through the store."""
        return _FORMAT.pack(
            _MAGIC, int(self.finished), self.rank, self.window, self.first_step, self.last_step,
            float(self.steps), self.step_s, self.step_p50_s, self.step_p90_s, *self.phase_s,
            self.comm_exposed_s, self.memory_peak_bytes, float(self.run_steps),
            *self.run_phase_s, self.run_step_s, self.run_comm_exposed_s,
            float(self.last_capture_step), self.sent_at, self.comm_floor_s,
        )

    @classmethod
    def unpack(cls, data: bytes) -> RankSummary | None:
        """Decode :meth:`pack`'s bytes; ``None`` for anything else (never raises)."""
        if len(data) != PAYLOAD_BYTES or not data.startswith(_MAGIC):
            return None
        v = _FORMAT.unpack(data)
        f = v[6:]
        return cls(
            finished=bool(v[1]), rank=v[2], window=v[3], first_step=v[4], last_step=v[5],
            steps=int(f[0]), step_s=f[1], step_p50_s=f[2], step_p90_s=f[3],
            phase_s=tuple(f[4:9]), comm_exposed_s=f[9], memory_peak_bytes=f[10],
            run_steps=int(f[11]), run_phase_s=tuple(f[12:17]), run_step_s=f[17],
            run_comm_exposed_s=f[18], last_capture_step=int(f[19]), sent_at=f[20],
            comm_floor_s=f[21],
        )

    def work_s(self) -> tuple[float, ...]:
        """Per-phase work: the phases with the gradient-sync wait taken out of backward."""
        work = list(self.phase_s)
        work[_BACKWARD] = max(0.0, work[_BACKWARD] - self.comm_exposed_s)
        return tuple(work)

    def to_dict(self, missing: bool = False) -> dict[str, object]:
        """This rank's entry in ``Report.to_dict()["ranks"]``: whole-run breakdown (the same keys
        as ``Report.breakdown``), exposed communication, and its latest window."""
        breakdown = dict(zip(PHASES, self.run_phase_s, strict=True))
        breakdown["step"] = self.run_step_s
        return {
            "steps": self.run_steps,
            "breakdown": breakdown,
            "comm_exposed_s": self.run_comm_exposed_s,
            "window": {
                "first_step": self.first_step,
                "last_step": self.last_step,
                "step_s": self.step_s,
                "step_p50_s": self.step_p50_s,
                "step_p90_s": self.step_p90_s,
                "phase_s": dict(zip(PHASES, self.phase_s, strict=True)),
                "comm_exposed_s": self.comm_exposed_s,
                "comm_floor_s": self.comm_floor_s,
            },
            "memory_peak_bytes": self.memory_peak_bytes,
            "finished": self.finished,
            "missing": missing,
        }


@record
class CrossRank:
    """Rank zero's view of every rank, and the straggler analysis of their latest windows.

    Attributes:
        world_size: Ranks in the job.
        ranks: The latest summary of each rank heard from.
        missing: Ranks not heard from within the timeout (late, finished early, or dead).
        slowest_rank: The rank with the most work per step (``None`` with fewer than 2 compared).
        slow_phase: The phase where the slowest rank's work exceeds the others' median most.
        spread_s: Work per step of the slowest rank minus that of the fastest.
        spread_pct: ``spread_s`` as a percentage of the mean step time.
        phase_excess_s: Slowest rank's work minus the others' median, per phase.
        others_wait_s: What the other ranks lose per step waiting for it (their sync wait minus
            its own).
        min_comm_floor_s: The smallest recurring sync wait (25th percentile over the window) of
            any compared rank: communication that neither a straggler nor the ranks' step-to-step
            jitter explains (the slowest rank waits for the network only).
        slowest_count, rounds: The slowest rank was slowest in ``slowest_count`` of the last
            ``rounds`` comparisons.
        comparable: False when a profiler capture overlapped the compared windows (a capture
            slows the rank that runs it; such rounds are not judged).
    """

    world_size: int
    ranks: dict[int, RankSummary] = field(default_factory=dict)
    missing: tuple[int, ...] = ()
    slowest_rank: int | None = None
    slow_phase: str | None = None
    spread_s: float = 0.0
    spread_pct: float = 0.0
    phase_excess_s: dict[str, float] = field(default_factory=dict)
    others_wait_s: float = 0.0
    min_comm_floor_s: float | None = None
    mean_step_s: float = 0.0
    slowest_count: int = 0
    rounds: int = 0
    comparable: bool = True

    def to_report(self) -> dict[str, dict[str, object]]:
        """``Report.to_dict()["ranks"]``: one entry per rank, keyed by the rank as a string."""
        out: dict[str, dict[str, object]] = {
            str(r): s.to_dict(missing=r in self.missing) for r, s in sorted(self.ranks.items())
        }
        for r in self.missing:
            out.setdefault(str(r), {"missing": True})
        out["straggler"] = {
            "slowest_rank": self.slowest_rank,
            "slow_phase": self.slow_phase,
            "spread_s": self.spread_s,
            "spread_pct": self.spread_pct,
            "phase_excess_s": dict(self.phase_excess_s),
            "others_wait_s": self.others_wait_s,
            "slowest_count": self.slowest_count,
            "rounds": self.rounds,
            "missing": list(self.missing),
        }
        return out


class StragglerHistory:
    """Which rank was slowest in each of the last ``size`` comparison rounds (one per window)."""

    def __init__(self, size: int = 10) -> None:
        self._rounds: deque[int] = deque(maxlen=size)
        self._last_round = -1

    def add(self, round_id: int, slowest: int) -> None:
        """Record ``slowest`` for ``round_id``; a round already recorded is not counted again."""
        if round_id > self._last_round:
            self._last_round = round_id
            self._rounds.append(slowest)

    def count(self, rank: int) -> tuple[int, int]:
        """``(rounds where rank was slowest, rounds kept)``."""
        return sum(1 for r in self._rounds if r == rank), len(self._rounds)


def compare_ranks(
    world_size: int,
    summaries: Mapping[int, RankSummary],
    missing: tuple[int, ...],
    history: StragglerHistory | None = None,
) -> CrossRank:
    """Compare the latest window of every rank heard from (see the module notes).

    Ranks that finished are listed but not compared; nor is a round whose windows overlap a
    profiler capture on any rank.
    """
    # keyed by the rank the summary came from (its key), whatever the payload says
    active = [s for r, s in sorted(summaries.items())
              if not s.finished and r not in missing and s.rank == r]
    base = CrossRank(world_size=world_size, ranks=dict(summaries), missing=missing)
    if len(active) < 2:
        return base
    first = min(s.first_step for s in active)
    comparable = all(s.last_capture_step < first for s in summaries.values())
    mean_step = statistics.fmean(s.step_s for s in active)
    work = {s.rank: sum(s.work_s()) for s in active}
    slowest = max(work, key=lambda r: work[r])
    fastest = min(work, key=lambda r: work[r])
    others = [s for s in active if s.rank != slowest]
    slow = summaries[slowest]
    excess = {
        name: slow.work_s()[i] - statistics.median(o.work_s()[i] for o in others)
        for i, name in enumerate(PHASES)
    }
    count, rounds = 0, 0
    if history is not None and comparable:
        history.add(min(s.window for s in active), slowest)
        count, rounds = history.count(slowest)
    spread = work[slowest] - work[fastest]
    return CrossRank(
        world_size=world_size,
        ranks=dict(summaries),
        missing=missing,
        slowest_rank=slowest,
        slow_phase=max(excess, key=lambda p: excess[p]),
        spread_s=spread,
        spread_pct=100.0 * spread / mean_step if mean_step > 0 else 0.0,
        phase_excess_s=excess,
        others_wait_s=max(0.0, statistics.fmean(
            o.comm_exposed_s - slow.comm_exposed_s for o in others)),
        min_comm_floor_s=min(s.comm_floor_s for s in active),
        mean_step_s=mean_step,
        slowest_count=count,
        rounds=rounds,
        comparable=comparable,
    )
