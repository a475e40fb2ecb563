"""Overhead of PerfCallback on a CPU Lightning run, against the same Trainer without it.

Variants run interleaved in one process (one ``Trainer.fit`` per variant, in a shuffled order each
round), so machine noise hits every variant alike. Each fit's steady state is timed by a stopwatch
callback present in every variant: from the start of batch ``--skip`` to the end of the last batch,
so Trainer set-up, warm-up and report writing are left out. The figure reported is the ratio of
each variant's median ms/step to the baseline's. Lightning's own tools are measured in the same run
for scale, with their defaults: ``SimpleProfiler``, ``PyTorchProfiler`` and ``DeviceStatsMonitor``.
Every variant has a ``CSVLogger`` (``DeviceStatsMonitor`` needs a logger).

    python benchmarks/lightning_overhead.py [--rounds 9] [--steps 60] [--check 1.02]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import DeviceStatsMonitor
from lightning.pytorch.profilers import PyTorchProfiler, SimpleProfiler
from torch.utils.data import DataLoader, TensorDataset

from perfcallback import PerfCallback


class MLP(L.LightningModule):
    """The model of benchmarks/overhead.py: an MLP trained with AdamW."""

    def __init__(self, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(256, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, 10),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Stopwatch(L.Callback):
    """Wall time from the start of batch ``skip`` to the end of batch ``last`` (inclusive)."""

    def __init__(self, skip: int, last: int) -> None:
        self.skip, self.last = skip, last
        self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if idx == self.skip:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, b: Any, idx: int) -> None:
        if idx == self.last:
            self.t1 = time.perf_counter()


def variants(root: str) -> dict[str, Callable[[], dict[str, Any]]]:
    """Trainer arguments per variant (callbacks and profiler), built fresh for every fit."""
    return {
        "baseline": lambda: {},
        "PerfCallback": lambda: {"callbacks": [PerfCallback(log_recommendations=False)]},
        "SimpleProfiler": lambda: {"profiler": SimpleProfiler(dirpath=root, filename="simple")},
        "PyTorchProfiler": lambda: {"profiler": PyTorchProfiler(dirpath=root, filename="torch")},
        "DeviceStatsMonitor": lambda: {"callbacks": [DeviceStatsMonitor()]},
    }


def fit_once(
    extra: dict[str, Any], loader: DataLoader, args: argparse.Namespace, root: str
) -> float:
    """One fit of ``skip + steps`` steps; returns the steady-state seconds per step."""
    watch = Stopwatch(args.skip, args.skip + args.steps - 1)
    extra = dict(extra)
    callbacks = [watch, *extra.pop("callbacks", [])]
    trainer = L.Trainer(
        max_steps=args.skip + args.steps,
        accelerator="cpu",
        devices=1,
        logger=L.loggers.CSVLogger(root),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **extra,
    )
    trainer.fit(MLP(args.width), loader)
    return (watch.t1 - watch.t0) / args.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit")
    parser.add_argument("--skip", type=int, default=10, help="untimed leading steps per fit")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    # One intra-op thread: on a 2-core machine OpenMP spin-waits add jitter that swamps 1%.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--check", type=float, default=None, help="exit 1 if PerfCallback's ratio exceeds this"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    n = (args.skip + args.steps) * args.batch
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as root:
        table = variants(root)
        for make in table.values():  # warm-up: allocator, profiler and import initialisation
            fit_once(make(), loader, argparse.Namespace(**{**vars(args), "steps": 5}), root)
        times: dict[str, list[float]] = {name: [] for name in table}
        rng = random.Random(0)
        for _ in range(args.rounds):
            order = list(table)
            rng.shuffle(order)
            for name in order:
                times[name].append(fit_once(table[name](), loader, args, root))
    base = statistics.median(times["baseline"])
    print(
        f"lightning {L.__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.rounds} rounds x {args.steps} steps per variant"
    )
    print(f"{'variant':<22} {'ms/step':>9} {'ratio':>7}")
    ratios = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        ratios[name] = med / base
        print(f"{name:<22} {med * 1e3:>9.3f} {ratios[name]:>7.3f}")
    if args.check is not None and ratios["PerfCallback"] > args.check:
        print(f"FAIL: PerfCallback overhead ratio {ratios['PerfCallback']:.3f} > {args.check}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
