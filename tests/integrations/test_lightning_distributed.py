"""PerfCallback under Lightning's DDP strategies (2 gloo processes on CPU): the slow rank named with
its phase on rank zero, and every rank's figures in rank zero's report.

Run as a script (``python test_lightning_distributed.py OUT STRATEGY``) this module is the worker
that Lightning's launcher starts on every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

L = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(240)]

SLOW_S = 0.025  # planted forward cost on rank 1


class SlowOnRankOne(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 4))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_rank == 1:
            time.sleep(SLOW_S)
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _main(out: str, strategy: str) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from perfcallback import PerfCallback

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(512, 16, generator=g), torch.randint(0, 4, (512,),
                                                                          generator=g))
    cb = PerfCallback(warmup_steps=2, window_steps=5, logdir=f"{out}/perf", profile=False,
                      log_recommendations=False)
    trainer = L.Trainer(callbacks=[cb], strategy=strategy, accelerator="cpu", devices=2,
                        max_steps=42, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SlowOnRankOne(), DataLoader(data, batch_size=4))


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_lightning_ddp_names_the_slow_rank_and_phase(tmp_path: Path, strategy: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), strategy], env=env,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "perf" / "perf_report.json").read_text())
    found = next((r for r in report["recommendations"] if r["rule"] == "straggler.slow_rank"),
                 None)
    assert found is not None, report["recommendations"]
    assert found["evidence"]["slowest_rank"] == 1
    assert found["evidence"]["slow_phase"] == "forward"
    assert sorted(k for k in report["ranks"] if k.isdigit()) == ["0", "1"]
    assert report["ranks"]["1"]["breakdown"]["forward"] > report["ranks"]["0"]["breakdown"][
        "forward"] + 0.5 * SLOW_S
    # rank zero waits for rank one inside backward: exposed sync wait, not "other"
    assert report["ranks"]["0"]["comm_exposed_s"] > 0.5 * SLOW_S


if __name__ == "__main__" and len(sys.argv) == 3:
    _main(sys.argv[1], sys.argv[2])
