"""Shared test helpers: tiny models, loaders with planted costs, a deterministic clock, gloo runs."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def tiny_model(width: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, 4)
    )


class SyntheticDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``n`` random (x, y) pairs; each ``__getitem__`` sleeps ``sleep_s`` (a planted data cost)."""

    def __init__(self, n: int = 256, sleep_s: float = 0.0, features: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, features, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.x[i], self.y[i]


def make_loader(n: int = 256, batch_size: int = 8, sleep_s: float = 0.0, **kw: Any) -> DataLoader:
    """A DataLoader over :class:`SyntheticDataset`; a batch takes ``batch_size * sleep_s`` to load."""
    return DataLoader(SyntheticDataset(n, sleep_s), batch_size=batch_size, **kw)


class FakeClock:
    """A clock that only moves when told: ``clock.advance(0.01)``; call it to read the time."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist_entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes on 127.0.0.1.

    ``fn`` must be importable (module level). Raises if any process fails.
    """
    import torch.multiprocessing as mp

    mp.start_processes(
        _dist_entry,
        args=(fn, world_size, free_port(), args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def read_events(logdir: Path | str) -> Any:
    """TensorBoard's own reader (EventAccumulator) over ``logdir``, every event kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def texts(acc: Any, tag: str) -> list[tuple[int, str]]:
    """``(step, markdown)`` of a Text-dashboard tag, as TensorBoard stores it."""
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
