"""Train a small LightningModule on synthetic data with PerfCallback, then read its report.

The dataset does a little CPU work per sample (a stand-in for image decoding) and the DataLoader
runs in the main process, so there is something real to find. Adding PerfCallback to the
Trainer's callbacks is the only change to an ordinary Lightning script.

    python examples/lightning_example.py [--logdir runs/lightning] [--steps 100] [--workers 0]
    tensorboard --logdir runs/lightning
"""

from __future__ import annotations

import argparse
import logging
import time

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Dataset

from perfcallback import PerfCallback


class DecodedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random 3x32x32 "images"; each item costs ``decode_s`` of CPU time, like a JPEG decode."""

    def __init__(self, n: int, decode_s: float) -> None:
        self.n, self.decode_s = n, decode_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.decode_s:
            pass
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), torch.tensor(i % 10)


class SmallConvNet(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 8 * 8, 10),
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def make_logger(logdir: str) -> L.loggers.Logger:
    """TensorBoard when it is installed (the ``tensorboard`` extra), else CSV files."""
    try:
        return L.loggers.TensorBoardLogger(logdir, name="lightning_example")
    except ModuleNotFoundError:
        return L.loggers.CSVLogger(logdir, name="lightning_example")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/lightning")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--decode-ms", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    train = DecodedImages(args.steps * args.batch_size, args.decode_ms / 1e3)
    val = DecodedImages(4 * args.batch_size, args.decode_ms / 1e3)
    loaders = {"batch_size": args.batch_size, "num_workers": args.workers}
    perf = PerfCallback(window_steps=25)  # scalars go to the Trainer's logger every 25 steps
    trainer = L.Trainer(
        max_steps=args.steps,
        val_check_interval=40,  # validation is timed apart, never as part of a training step
        accelerator="cpu",
        logger=make_logger(args.logdir),
        callbacks=[perf],
        enable_model_summary=False,
    )
    trainer.fit(
        SmallConvNet(),
        DataLoader(train, shuffle=True, **loaders),
        DataLoader(val, **loaders),
    )

    # The same Report as PerfMonitor's; also saved as <log_dir>/perf_report.json.
    report = perf.report()
    step = report.breakdown["step"]
    shares = ", ".join(
        f"{p} {report.breakdown[p] / step:.0%}"
        for p in ("data", "forward", "backward", "optimizer")
    )
    print(f"\n{report.steps} steps, {step * 1e3:.1f} ms each: {shares}")
    for rec in report.recommendations:
        print(f"  {rec.one_line()}")
    print(f"\nOpen the run with:\n  tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
