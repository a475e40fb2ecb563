"""Overhead of PerfMonitor on a CPU training loop, against the same loop without it.

Variants run interleaved in one process (blocks of steps, in a shuffled order each round), so
machine noise hits every variant alike; the figure reported is the ratio of each variant's median
block time to the baseline's. torch.profiler is measured in the same run for scale: always on, and
on a schedule that records 5 of every 50 steps.

    python benchmarks/overhead.py [--rounds 15] [--steps 50] [--check 1.02]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch

from perfcallback import PerfMonitor

Batch = tuple[torch.Tensor, torch.Tensor]


def make_setup(
    width: int, batch: int, n_batches: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Batch]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = [(torch.randn(batch, 256), torch.randint(0, 10, (batch,))) for _ in range(n_batches)]
    return model, opt, data


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def block_baseline(model, opt, data) -> None:
    for x, y in data:
        train_step(model, opt, x, y)


def block_perfmonitor(model, opt, data) -> None:
    with PerfMonitor(model=model, optimizer=opt, log_recommendations=False) as perf:
        for x, y in perf.wrap_loader(data):
            with perf.step():
                train_step(model, opt, x, y)


def block_profiler_always(model, opt, data) -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        for x, y in data:
            train_step(model, opt, x, y)


def block_profiler_scheduled(model, opt, data) -> None:
    schedule = torch.profiler.schedule(wait=44, warmup=1, active=5, repeat=1)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=schedule,
        on_trace_ready=lambda prof: None,
    ) as prof:
        for x, y in data:
            train_step(model, opt, x, y)
            prof.step()


VARIANTS: dict[str, Callable[..., None]] = {
    "baseline": block_baseline,
    "perfcallback": block_perfmonitor,
    "torch.profiler (always on)": block_profiler_always,
    "torch.profiler (5 of 50 steps)": block_profiler_scheduled,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    # One intra-op thread by default: with two on a 2-core machine, OpenMP spin-waits add
    # milliseconds of jitter per step that swamp a 1% effect.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--check", type=float, default=None, help="exit 1 if perfcallback's ratio exceeds this"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, opt, data = make_setup(args.width, args.batch, args.steps)
    for fn in VARIANTS.values():  # warm-up: allocator, profiler initialisation
        fn(model, opt, data[:10])
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            VARIANTS[name](model, opt, data)
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["baseline"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps per variant"
    )
    print(f"{'variant':<32} {'ms/step':>9} {'ratio':>7}")
    ratios = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        ratios[name] = med / base
        print(f"{name:<32} {med * 1e3:>9.3f} {ratios[name]:>7.3f}")
    if args.check is not None and ratios["perfcallback"] > args.check:
        print(f"FAIL: perfcallback overhead ratio {ratios['perfcallback']:.3f} > {args.check}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
