"""DDP on CPU with 2 gloo processes, one of them slow, under PerfMonitor; rank zero names it.

Rank 1 sleeps ``--slow-ms`` in the phase given by ``--slow-phase`` (data, forward or backward) on
every step. DDP's all-reduce makes both ranks' steps equally long, yet rank zero's report names
rank 1 and the phase, and shows every rank's figures.

    python examples/distributed_gloo.py --logdir runs/ddp [--slow-phase backward] [--slow-ms 20]
    tensorboard --logdir runs/ddp        # perf/ranks/<rank>/... scalars, the PERF tab's ranks view
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import socket
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from perfcallback import PerfMonitor


class SleepInBackward(torch.autograd.Function):
    """Identity whose backward sleeps: stands in for a rank with a slower GPU or heavier inputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        time.sleep(ctx.seconds)
        return grad, None


class Net(torch.nn.Module):
    def __init__(self, slow_forward_s: float, slow_backward_s: float) -> None:
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(32, 128), torch.nn.Linear(128, 10)
        self.slow_forward_s, self.slow_backward_s = slow_forward_s, slow_backward_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.slow_forward_s)
        h = torch.relu(self.l1(x))
        if self.slow_backward_s:
            h = SleepInBackward.apply(h, self.slow_backward_s)
        return self.l2(h)


def batches(n: int, slow_s: float) -> Any:
    g = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(n):
        time.sleep(slow_s)  # a rank whose input pipeline is slower
        yield torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g)


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING if rank else logging.INFO, format="%(message)s")
    slow = args.slow_ms / 1e3 if rank == 1 else 0.0
    model = DDP(Net(slow if args.slow_phase == "forward" else 0.0,
                    slow if args.slow_phase == "backward" else 0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = batches(args.steps, slow if args.slow_phase == "data" else 0.0)
    with PerfMonitor(model=model, optimizer=opt, logdir=args.logdir, window_steps=10,
                     profile=False) as perf:
        for x, y in perf.wrap_loader(data):
            with perf.step():
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
    if rank == 0:
        print(perf.report())
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", default="runs/ddp")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--slow-phase", choices=["data", "forward", "backward"],
                        default="backward")
    parser.add_argument("--slow-ms", type=float, default=20.0)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(args, port), nprocs=2, start_method="spawn")


if __name__ == "__main__":
    main()
