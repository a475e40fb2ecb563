"""Train a small model on synthetic data with PerfMonitor, then print the report.

The dataset does a little CPU work per sample (a stand-in for image decoding) and the DataLoader
runs in the main process, so the monitor has something real to find.

    python examples/raw_loop.py --logdir runs/demo [--steps 300] [--workers 0]
    tensorboard --logdir runs/demo
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from torch.utils.data import DataLoader, Dataset

from perfcallback import PerfMonitor


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


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--decode-ms", type=float, default=0.2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dataset = DecodedImages(args.steps * args.batch_size, args.decode_ms / 1e3)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

    with PerfMonitor(model=model, optimizer=opt, logdir=args.logdir) as perf:
        for x, y in perf.wrap_loader(loader):
            with perf.step():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

    print(perf.report())
    print(
        f"\nWrote {args.logdir}/perf_report.json. Open the run with:\n"
        f"  tensorboard --logdir {args.logdir}"
    )


if __name__ == "__main__":
    main()
