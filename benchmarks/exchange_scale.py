"""Cost of the cross-rank exchange at 2, 4 and 8 gloo processes, as ratios to the 2-rank run.

Each process runs a near-empty training loop under ``PerfMonitor`` (5-step windows, so the
exchange works as often as it can) and times, on its training thread, the cross-rank sink's
per-window work (building and handing over one summary). Rank zero also times its background
reader (one poll of every rank's key plus the comparison). The claim under test: the training
thread's cost per window does not grow with the world size.

    python benchmarks/exchange_scale.py [--worlds 2 4 8] [--steps 400]

On this 2-core machine 8 processes share 2 cores, so absolute times include scheduling noise; the
ratios are what to read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    from perfcallback import PerfMonitor
    from perfcallback.distributed import RankExchange
    from perfcallback.sinks.crossrank import CrossRankSink

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    publish_s: list[float] = []
    read_s: list[float] = []
    on_window, read_all = CrossRankSink.on_window, RankExchange._read_all

    def timed_window(self: Any, stats: Any) -> None:
        t0 = time.perf_counter()
        on_window(self, stats)
        publish_s.append(time.perf_counter() - t0)

    def timed_read(self: Any) -> None:
        t0 = time.perf_counter()
        read_all(self)
        read_s.append(time.perf_counter() - t0)

    CrossRankSink.on_window = timed_window  # type: ignore[method-assign]
    RankExchange._read_all = timed_read  # type: ignore[method-assign]
    model = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with PerfMonitor(model=model, warmup_steps=5, window_steps=5, profile=False,
                     tensorboard=False, log_recommendations=False) as perf:
        for _ in perf.wrap_loader(range(steps)):
            with perf.step():
                model(x).sum().backward()
            time.sleep(0.002)  # a step of a few ms, so windows come every ~15 ms
    ranks = perf.report().ranks
    Path(out, f"{world}-{rank}.json").write_text(json.dumps({
        "publish_us": statistics.median(publish_s) * 1e6,
        "read_ms": statistics.median(read_s) * 1e3 if read_s else None,
        "ranks_seen": len([k for k in ranks if k.isdigit()]),
    }))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for world in args.worlds:
            mp.start_processes(_worker, args=(world, _free_port(), args.steps, out),
                               nprocs=world, join=True, start_method="spawn")
            per_rank = [json.loads(Path(out, f"{world}-{r}.json").read_text())
                        for r in range(world)]
            rows.append((world, statistics.median(p["publish_us"] for p in per_rank),
                         per_rank[0]["read_ms"], per_rank[0]["ranks_seen"]))
    base = rows[0][1]
    from perfcallback.ranks import PAYLOAD_BYTES

    print(f"payload: {PAYLOAD_BYTES} bytes per rank per window")
    print(f"{'ranks':>5} {'train-thread us/window':>23} {'ratio':>6} {'rank-0 read ms/poll':>20} "
          f"{'ranks seen':>10}")
    for world, publish, read, seen in rows:
        read_text = f"{read:.3f}" if read is not None else "-"
        print(f"{world:>5} {publish:>23.1f} {publish / base:>6.2f} {read_text:>20} {seen:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
