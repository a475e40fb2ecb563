"""Write a TensorBoard logdir that shows everything perfcallback puts there.

A small CNN trains on synthetic images. Midway the "decoding" of each sample gets expensive (a data
stall), then cheap again. The monitor writes ``perf/...`` scalars, the recommendations table (Text
tab) as the dataloader finding appears and resolves, one scheduled profiler trace early on, and a
triggered one from the slow part (PyTorch Profiler tab).

    python examples/tensorboard_demo.py --logdir runs/tb_demo
    tensorboard --logdir runs/tb_demo
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from perfcallback import PerfMonitor


class SyntheticImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random 3x32x32 images; each item costs ``decode_s`` of CPU time (settable mid-run)."""

    def __init__(self, n: int) -> None:
        self.n, self.decode_s = n, 0.0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.decode_s:  # a busy stand-in for JPEG decoding
            pass
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), torch.tensor(i % 10)


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10),
    )


def write_demo_logdir(logdir: str | Path, *, steps: int = 300, batch_size: int = 16,
                      stall_ms: float = 1.0, window_steps: int = 20) -> PerfMonitor:
    """Train for ``steps`` steps; the middle third waits ``stall_ms`` per sample for data."""
    torch.manual_seed(0)
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = SyntheticImages(steps * batch_size)
    loader = DataLoader(data, batch_size=batch_size, num_workers=0)
    stall = range(steps // 3, 2 * steps // 3)
    with PerfMonitor(model=model, optimizer=opt, logdir=logdir, window_steps=window_steps) as perf:
        for i, (x, y) in enumerate(perf.wrap_loader(loader)):
            with perf.step():
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            # The next batches decode slowly in the middle third of the run.
            data.decode_s = stall_ms / 1e3 if i + 1 in stall else 0.0
    return perf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/tb_demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--stall-ms", type=float, default=1.0, help="data cost per sample")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    perf = write_demo_logdir(args.logdir, steps=args.steps, stall_ms=args.stall_ms)
    print(perf.report())
    print(f"\nNow run:  tensorboard --logdir {args.logdir}")
    print("  SCALARS: perf/...  TEXT: perf/recommendations  PYTORCH_PROFILER: the traces")


if __name__ == "__main__":
    main()
