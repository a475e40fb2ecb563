"""PerfCallback under Lightning's DeepSpeedStrategy, on CPU.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA: ``setup_environment`` raises
for a CPU accelerator, ``setup_distributed`` validates CUDA device indices, and it hands
``root_device.index`` (``None`` on CPU) to ``deepspeed.initialize`` as the local rank. The test
strategy below undoes exactly those three assumptions and nothing else, so the Trainer runs the
real strategy, precision plugin and DeepSpeed engine (ZeRO 2, gloo) on CPU.

The fit runs in a subprocess (this file as a script): DeepSpeed keeps its process groups per
process, and the strategy leaves its group initialised after ``fit``.
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

pytest.importorskip("deepspeed")
L = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402

FORWARD_S, OPTIMIZER_S, STEPS = 0.004, 0.010, 30


class SlowAdamW(torch.optim.AdamW):
    """AdamW whose step costs ``OPTIMIZER_S`` more, recording what the sleep really took."""

    spent = 0.0

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        t0 = time.perf_counter()
        time.sleep(OPTIMIZER_S)
        SlowAdamW.spent += time.perf_counter() - t0
        return super().step(closure)


class PlantedModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(FORWARD_S)
        return self.layer(batch[0]).pow(2).mean()  # type: ignore[no-any-return]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return SlowAdamW(self.parameters(), lr=1e-3)


def _fit(out: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from perfcallback.integrations.lightning import PerfCallback

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):  # type: ignore[misc]
        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)  # the parent's, without the CUDA-only check

        def setup_distributed(self) -> None:
            self.set_world_ranks()  # without the CUDA device-index check
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", self.local_rank)  # DeepSpeed reads the index as local rank

    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(torch.randn(8 * STEPS, 16))
    perf = PerfCallback(warmup_steps=0, window_steps=10, log_recommendations=False,
                        tensorboard=False, profile=False)
    strategy = CPUDeepSpeedStrategy(process_group_backend="gloo", config={
        "train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
    })
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, max_steps=STEPS,
                        callbacks=[perf], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(PlantedModule(), torch.utils.data.DataLoader(data, batch_size=8))
    report = perf.report()
    out.write_text(json.dumps({
        "engine": type(trainer.strategy.model).__name__,
        "report": report.to_dict(),
        "optimizer_sleep_s": SlowAdamW.spent / STEPS,
    }))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_deepspeed_strategy_phases_and_optimizer_finding(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, __file__, str(out)], env=env, check=True, timeout=180,
                   cwd=tmp_path, capture_output=True)
    result = json.loads(out.read_text())
    assert result["engine"] == "DeepSpeedEngine"
    report = result["report"]
    assert report["steps"] == STEPS
    breakdown = report["breakdown"]
    # engine.step() wraps the planted update: within 25% (ZeRO's own bookkeeping on top).
    assert breakdown["optimizer"] == pytest.approx(result["optimizer_sleep_s"], rel=0.25)
    assert breakdown["forward"] >= FORWARD_S
    assert breakdown["backward"] > 0
    finding = next(r for r in report["recommendations"] if r["rule"] == "optimizer.dominant")
    assert finding["message"].startswith("engine.step() takes"), finding["message"]
    assert finding["evidence"]["zero_stage"] == 2
    assert finding["evidence"]["class"] == "SlowAdamW"


if __name__ == "__main__":
    _fit(Path(sys.argv[1]))
