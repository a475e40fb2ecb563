"""Train a tiny GPT-2 (built from a config: no download) with the Hugging Face Trainer and
PerfTrainerCallback, then print the report.

The dataset "tokenizes" in ``__getitem__`` (a planted 2 ms per sample) and the Trainer loads in
the main process (``dataloader_num_workers=0``), so the callback finds the data stall and
quotes the loader's settings. With tensorboard installed, the perf scalars sit next to the
Trainer's own in ``runs/hf_trainer/runs/<date>``.

    python examples/hf_trainer_example.py [--workers 0] [--accumulation 2]
    tensorboard --logdir runs/hf_trainer
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; say so to the Hub client

import torch
import transformers
from torch.utils.data import Dataset

from perfcallback.integrations.transformers import PerfTrainerCallback

SEQ, VOCAB = 32, 256


class SlowTokens(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; each item costs ``tokenize_s`` (a stand-in for tokenization)."""

    def __init__(self, n: int, tokenize_s: float) -> None:
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0))
        self.tokenize_s = tokenize_s

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time.sleep(self.tokenize_s)
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/hf_trainer")
    parser.add_argument("--steps", type=int, default=60, help="optimizer updates")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--accumulation", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=64, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=args.accumulation, dataloader_num_workers=args.workers,
        report_to=["tensorboard"] if tensorboard else "none", logging_steps=20,
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    perf = PerfTrainerCallback(warmup_steps=5, window_steps=10)
    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=training_args,
        train_dataset=SlowTokens(8 * args.steps * args.accumulation, tokenize_s=0.002),
        callbacks=[perf],
    )
    trainer.train()  # the callback logs its summary table at train end
    report = perf.report()  # the same Report as PerfMonitor's
    data_ms, step_ms = report.breakdown["data"] * 1e3, report.breakdown["step"] * 1e3
    print(f"data wait {data_ms:.1f} ms of {step_ms:.1f} ms per optimizer update; "
          f"findings: {[r.rule for r in report.recommendations]}")


if __name__ == "__main__":
    main()
