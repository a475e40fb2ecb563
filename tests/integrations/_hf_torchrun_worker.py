"""One rank of the torchrun test in test_transformers.py: a tiny Trainer with PerfTrainerCallback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # test_transformers and tests/_helpers
from test_transformers import SlowTokens, make_trainer  # noqa: E402

from perfcallback.integrations.transformers import PerfTrainerCallback  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    perf = PerfTrainerCallback(logdir=out / "perf", warmup_steps=0, window_steps=5, profile=False,
                               log_recommendations=False)
    trainer = make_trainer(out, perf, SlowTokens(10 * 2 * 4, sleep_s=0.001),
                           per_device_train_batch_size=4, max_steps=10)
    trainer.train()
    rank = int(os.environ["RANK"])
    session = perf._session
    assert session is not None
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": session.rank, "world_size": session.world_size,
        "global_step": trainer.state.global_step, "steps": perf.report().steps,
        "distributed": torch.distributed.is_initialized(),
    }))
