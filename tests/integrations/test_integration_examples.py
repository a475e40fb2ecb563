"""The DeepSpeed and Hugging Face Trainer examples run on CPU and find what they plant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_deepspeed_example_finds_the_optimizer(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    out = run_example("deepspeed_example.py", "--steps", "30", cwd=tmp_path)
    assert "optimizer.dominant: engine.step() takes" in out, out[-2000:]
    assert "DeepSpeed optimizer updates: 30" in out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hf_trainer_example_finds_the_data_stall(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = run_example("hf_trainer_example.py", "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert "'dataloader.stall'" in out.split("findings:")[-1], out[-2000:]
