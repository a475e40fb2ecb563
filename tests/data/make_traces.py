"""Write the small synthetic Kineto traces under tests/data/traces/ (re-runnable, deterministic).

Each scenario has a known answer, asserted in tests/trace/test_analysis.py:

- ``overlap_none``: 3 steps of 100 ms; per step a 50 ms compute kernel, then a 20 ms NCCL
  all-reduce on another stream. HTA's window (last step left out) spans 170 ms: idle 30 ms,
  compute 100 ms, non-compute 40 ms; comm/comp overlap 0 %.
- ``overlap_full``: as above but the all-reduce runs at 10-40 ms inside the 60 ms compute
  kernel: overlap 100 %.
- ``dataloader_bound``: DataLoader ``__next__`` (single process) fills the first 60 ms of each
  100 ms step, then 30 ms of compute: data loading share 60 %.
- ``two_ranks_late_allreduce``: two ranks; rank 1 computes 90 ms instead of 50, so it starts
  its all-reduce 40 ms late and rank 0 waits in its all-reduce 40 ms longer (48 ms against 8 ms
  per step); rank 1's steps are 104 ms against 100 ms.
- ``cpu_only``: host events only (steps and DataLoader), no GPU activity.
- ``bare_array``: the 2021 schema: a bare JSON array with ``Kernel``/``Runtime`` categories; one
  step, a 40 ms kernel in a 100 ms step.

Usage: ``python tests/data/make_traces.py`` (writes next to this file).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "traces"
T0 = 1_000_000.0  # trace start, microseconds
MS = 1000.0
COMPUTE = "void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>>"
ALLREDUCE = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"


class Trace:
    """Collects events with a running correlation id."""

    def __init__(self, rank: int | None = None, world: int | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.corr = 100
        self.rank, self.world = rank, world

    def cpu(self, name: str, ts: float, dur: float, cat: str = "user_annotation") -> None:
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1,
                            "ts": T0 + ts, "dur": dur, "args": {}})

    def kernel(self, name: str, launch: float, ts: float, dur: float, stream: int = 7) -> None:
        """A launch call at ``launch`` (5 us) and its kernel at ``ts`` on ``stream``."""
        self.corr += 1
        self.events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                            "pid": 1, "tid": 1, "ts": T0 + launch, "dur": 5.0,
                            "args": {"correlation": self.corr, "cbid": 211}})
        self.events.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream,
                            "ts": T0 + ts, "dur": dur,
                            "args": {"stream": stream, "correlation": self.corr, "device": 0}})
        self.events.append({"ph": "f", "id": self.corr, "pid": 0, "tid": stream,
                            "ts": T0 + ts, "cat": "ac2g", "name": "ac2g", "bp": "e"})

    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 1,
                               "deviceProperties": [{"id": 0, "name": "Synthetic GPU"}]}
        if self.rank is not None:
            doc["distributedInfo"] = {"backend": "nccl", "rank": self.rank,
                                      "world_size": self.world}
        doc["traceEvents"] = self.events
        doc["traceName"] = "synthetic"
        return doc


def steps(t: Trace, n: int = 3, step_ms: float = 100.0) -> None:
    for i in range(n):
        t.cpu(f"ProfilerStep#{i + 1}", i * step_ms * MS, step_ms * MS)


def overlap(comm_at: float, comm_ms: float, compute_ms: float) -> Trace:
    t = Trace()
    steps(t)
    for i in range(3):
        base = i * 100 * MS
        t.kernel(COMPUTE, base + 10, base, compute_ms * MS)
        t.kernel(ALLREDUCE, base + 20, base + comm_at * MS, comm_ms * MS, stream=20)
    return t


def dataloader_bound() -> Trace:
    t = Trace()
    steps(t)
    for i in range(3):
        base = i * 100 * MS
        t.cpu("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", base, 60 * MS)
        t.kernel(COMPUTE, base + 60 * MS, base + 60 * MS, 30 * MS)
    return t


def late_allreduce(rank: int) -> Trace:
    t = Trace(rank=rank, world=2)
    compute_ms = 50.0 if rank == 0 else 90.0
    step_ms = 100.0 if rank == 0 else 104.0
    for i in range(3):
        base = i * step_ms * MS
        t.cpu(f"ProfilerStep#{i + 1}", base, step_ms * MS)
        t.cpu("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", base, 1 * MS)
        t.kernel(COMPUTE, base + 1 * MS, base + 1 * MS, compute_ms * MS)
        # Both ranks leave the all-reduce together at 99 ms, once rank 1 has joined it.
        start = base + (1 + compute_ms) * MS
        t.kernel(ALLREDUCE, base + 2 * MS, start, base + 99 * MS - start, stream=20)
    return t


def cpu_only() -> Trace:
    t = Trace(rank=0, world=1)
    steps(t)
    for i in range(3):
        t.cpu("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", i * 100 * MS, 5 * MS)
        t.cpu("aten::addmm", i * 100 * MS + 10 * MS, 50 * MS, cat="cpu_op")
    return t


def bare_array() -> list[dict[str, Any]]:
    t = Trace()
    t.cpu("ProfilerStep#1", 0, 100 * MS, cat="Operator")
    t.kernel(COMPUTE, 10, 20 * MS, 40 * MS)
    for e in t.events:  # the 2021 schema's category names
        e["cat"] = {"cuda_runtime": "Runtime", "kernel": "Kernel"}.get(e["cat"], e["cat"])
    return t.events


def write(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1).encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text, mtime=0))
    else:
        path.write_bytes(text)
    assert path.stat().st_size < 50 * 1024, f"{path} is over 50 KB"


def main() -> None:
    write(OUT / "overlap_none" / "rank-0.json", overlap(50, 20, 50).doc())
    write(OUT / "overlap_full" / "rank-0.json.gz", overlap(10, 30, 60).doc())
    write(OUT / "dataloader_bound" / "rank-0.json.gz", dataloader_bound().doc())
    for rank in (0, 1):
        write(OUT / "two_ranks_late_allreduce" / f"rank-{rank}.json.gz",
              late_allreduce(rank).doc())
    write(OUT / "cpu_only" / "rank-0.json", cpu_only().doc())
    write(OUT / "bare_array" / "trace.json", bare_array())


if __name__ == "__main__":
    main()
