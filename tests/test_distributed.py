"""PerfMonitor under real torch.distributed (gloo, 2 processes): every rank measures itself,
rank zero alone logs and writes unless all_ranks=True."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _helpers import run_distributed, tiny_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(120)]


def _ddp_worker(rank: int, world_size: int, logdir: str, all_ranks: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from perfcallback import PerfMonitor

    model = DDP(tiny_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(12)]
    with PerfMonitor(model=model, optimizer=opt, logdir=logdir, warmup_steps=2, window_steps=5,
                     tensorboard=False, profile=False, all_ranks=all_ranks) as perf:
        for x, y in perf.wrap_loader(batches):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()  # all-reduce in here
                opt.step()
                opt.zero_grad()
    report = perf.report()
    # report() works on every rank; each rank leaves its own figures for the parent to check
    out = {"steps": report.steps, "rank": perf.recorder.context.rank,
           "world": perf.recorder.context.world_size, "breakdown": report.breakdown}
    Path(logdir, f"child{rank}.json").write_text(json.dumps(out))


@pytest.mark.parametrize("all_ranks", [False, True])
def test_every_rank_measures_and_rank_zero_writes(tmp_path: Path, all_ranks: bool) -> None:
    run_distributed(_ddp_worker, str(tmp_path), all_ranks)
    children = [json.loads((tmp_path / f"child{r}.json").read_text()) for r in (0, 1)]
    for r, child in enumerate(children):
        assert (child["rank"], child["world"], child["steps"]) == (r, 2, 10)
        b = child["breakdown"]
        assert b["forward"] > 0 and b["backward"] > 0 and b["optimizer"] > 0
    reports = sorted(p.name for p in tmp_path.glob("perf_report*.json"))
    expected = ["perf_report.json", "perf_report.rank1.json"] if all_ranks else ["perf_report.json"]
    assert reports == expected
    assert json.loads((tmp_path / "perf_report.json").read_text())["steps"] == 10
