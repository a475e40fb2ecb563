"""PerfTrainerCallback with a real Hugging Face Trainer on CPU, and PerfMonitor under Accelerate.

The model is a 2-layer GPT-2 built from a config (no download; HF_HUB_OFFLINE=1). Data wait is
compared with the time the dataset's ``__getitem__`` really spent (a planted sleep, measured).
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from perfcallback import PerfMonitor  # noqa: E402
from perfcallback.integrations.transformers import PerfTrainerCallback  # noqa: E402

from _helpers import read_events  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SEQ, VOCAB = 16, 64
TOLERANCE = 0.25


class SlowTokens(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; each ``__getitem__`` sleeps ``sleep_s`` and records what it took."""

    def __init__(self, n: int, sleep_s: float = 0.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.sleep_s, self.spent = sleep_s, [0.0]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.sleep_s:
            t0 = time.perf_counter()
            time.sleep(self.sleep_s)
            self.spent[0] += time.perf_counter() - t0
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class SlowAdamW(torch.optim.AdamW):
    """AdamW with a planted 5 ms per step, well above Accelerate's own wrapper overhead."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        time.sleep(0.005)
        return super().step(closure)


def tiny_gpt2() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def make_trainer(tmp_path: Path, perf: PerfTrainerCallback, train: Dataset[Any],
                 evaluation: Dataset[Any] | None = None, **args: Any) -> Any:
    defaults: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=30,
        dataloader_num_workers=0, report_to="none", save_strategy="no", logging_steps=10,
        disable_tqdm=True, use_cpu=True, seed=0,
    )
    defaults.update(args)
    return transformers.Trainer(model=tiny_gpt2(), args=transformers.TrainingArguments(**defaults),
                                train_dataset=train, eval_dataset=evaluation, callbacks=[perf])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slow_dataset_data_wait_and_finding(tmp_path: Path) -> None:
    data = SlowTokens(30 * 8, sleep_s=0.002)  # 16 ms of planted loading per batch
    perf = PerfTrainerCallback(warmup_steps=0, window_steps=10, log_recommendations=False,
                               profile=False)  # profiled steps would leave the figures
    trainer = make_trainer(tmp_path, perf, data, report_to=["tensorboard"])
    trainer.train()
    report = perf.report()
    assert report.steps == trainer.state.global_step == 30
    truth = data.spent[0] / 30  # every batch's loading, per optimizer update
    assert report.breakdown["data"] == pytest.approx(truth, rel=TOLERANCE), (report.breakdown, truth)
    for phase in ("forward", "backward", "optimizer"):
        assert report.breakdown[phase] > 0, report.breakdown
    finding = next(r for r in report.recommendations if r.rule == "dataloader.stall")
    assert "num_workers=0" in finding.message, finding.message
    # Scalars sit next to the Trainer's own TensorBoard output, and the wrappers are gone.
    tb_dir = next(c.logging_dir for c in trainer.callback_handler.callbacks
                  if type(c).__name__ == "TensorBoardCallback")
    tags = read_events(tb_dir).Tags()["scalars"]
    assert "perf/step_ms" in tags and any(t.startswith("train/") for t in tags), tags
    assert (Path(tb_dir) / "perf_report.json").is_file()
    for name in ("get_batch_samples", "compute_loss", "evaluate"):
        assert name not in vars(trainer), name
    assert "backward" not in vars(trainer.accelerator)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_accumulation_one_step_per_update_and_evaluation_apart(tmp_path: Path) -> None:
    train, evaluation = SlowTokens(12 * 2 * 4, sleep_s=0.001), SlowTokens(32, sleep_s=0.004)
    perf = PerfTrainerCallback(warmup_steps=0, window_steps=4, log_recommendations=False)
    trainer = make_trainer(tmp_path, perf, train, evaluation, per_device_train_batch_size=4,
                           gradient_accumulation_steps=2, max_steps=12, eval_strategy="steps",
                           eval_steps=4, per_device_eval_batch_size=8)
    trainer.train()
    report = perf.report()
    assert report.steps == trainer.state.global_step == 12
    rate = report.throughput
    assert rate["samples_per_s"] / rate["steps_per_s"] == pytest.approx(8, rel=0.01)  # 2 x 4
    assert report.breakdown["data"] == pytest.approx(train.spent[0] / 12, rel=TOLERANCE)
    val = perf._session.recorder.validation_summary()  # type: ignore[union-attr]
    assert val["runs"] == 3
    assert val["total_s"] >= evaluation.spent[0]  # every evaluation batch's loading in it ...
    step_total = report.breakdown["step"] * report.steps
    assert step_total < val["total_s"] + 12 * 0.2  # ... and none of it in the steps
    assert report.breakdown["step"] < 0.5 * val["mean_s"] + 0.05


def test_report_before_train_raises() -> None:
    with pytest.raises(RuntimeError, match=r"trainer\.train"):
        PerfTrainerCallback().report()
    with pytest.raises(TypeError, match="unknown perfcallback option"):
        PerfTrainerCallback(warmup=3)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_accelerate_raw_loop_with_perf_monitor() -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = tiny_gpt2()
    optimizer = SlowAdamW(model.parameters(), lr=1e-3)
    data = SlowTokens(20 * 8, sleep_s=0.001)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    spent = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    with PerfMonitor(model=model, optimizer=optimizer, warmup_steps=0,
                     log_recommendations=False) as perf:
        for batch in perf.wrap_loader(loader):
            with perf.step():
                t0 = time.perf_counter()
                loss = model(**batch).loss
                t1 = time.perf_counter()
                accelerator.backward(loss)
                t2 = time.perf_counter()
                optimizer.step()
                t3 = time.perf_counter()
                optimizer.zero_grad()
            spent["forward"] += t1 - t0
            spent["backward"] += t2 - t1
            spent["optimizer"] += t3 - t2
    report = perf.report()
    assert report.steps == 20
    assert report.breakdown["data"] == pytest.approx(data.spent[0] / 20, rel=TOLERANCE)
    for phase, total in spent.items():
        assert report.breakdown[phase] == pytest.approx(total / 20, rel=TOLERANCE), phase


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(200)
def test_torchrun_two_ranks_each_measure_rank_zero_writes(tmp_path: Path) -> None:
    from _helpers import free_port

    worker = Path(__file__).with_name("_hf_torchrun_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(worker), str(tmp_path)]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                          timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["distributed"] and info["world_size"] == 2 and info["rank"] == r
        assert info["steps"] == info["global_step"] == 10
    files = sorted(p.name for p in (tmp_path / "perf").iterdir())
    assert "perf_report.json" in files and "perf_report.rank1.json" not in files, files


class _BrokenCallback(PerfTrainerCallback):
    """A fault inside the callback's fetch wrapper: an internal error in the middle of train()."""

    def _close_step(self) -> None:
        if self._session is not None and self._session.recorder.steps_seen >= 3:
            raise RuntimeError("planted perfcallback bug")
        super()._close_step()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_internal_error_fails_open_and_training_goes_on(tmp_path: Path) -> None:
    perf = _BrokenCallback(warmup_steps=0, log_recommendations=False, profile=False)
    trainer = make_trainer(tmp_path, perf, SlowTokens(12 * 8), max_steps=12)
    trainer.train()
    assert trainer.state.global_step == 12  # training finished
    report = perf.report()
    assert "planted perfcallback bug" in report.disabled["transformers_callback"]
    assert report.steps == 3  # measured until the fault, then switched off
    assert "get_batch_samples" not in vars(trainer) and "compute_loss" not in vars(trainer)
