"""The monitor's own per-step cost, apart from the training step, optionally against another tree.

``overhead.py`` measures the monitor inside a real loop, where a shared machine's noise (tens of
microseconds per step on the 2-core development host) swamps differences of a few microseconds.
This script times the monitor's own code paths with everything else made as small as possible,
best of several repeats, so two versions of perfcallback can be compared in the same run:

- ``loop``: ``wrap_loader`` + ``perf.step()`` around an empty body (fetch, step, record, RSS);
- ``hooks``: the same with model and optimizer hooks on a one-layer model (every hook fires,
  backward and optimizer included), minus that model's own step time;
- ``window``: the once-per-window work (summary, probes, every rule, sinks), per window: a
  25-step window, and the default window as long as it gets on this loop (``per step`` counts
  that one).

    python benchmarks/hot_path.py                      # this tree
    python benchmarks/hot_path.py --compare /tmp/old   # also a tree holding an older perfcallback/

(``git archive <rev> perfcallback | tar -x -C /tmp/old`` makes such a tree.)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

STEPS = 500  # short blocks: the best of many finds a quiet spell on a shared host


def _load(tree: str | None) -> Any:
    """The ``perfcallback`` package from ``tree`` (``None``: the installed one), imported anew."""
    for name in [m for m in sys.modules if m == "perfcallback" or m.startswith("perfcallback.")]:
        del sys.modules[name]
    if tree is not None:
        sys.path.insert(0, tree)
    try:
        return importlib.import_module("perfcallback")
    finally:
        if tree is not None:
            sys.path.remove(tree)


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best / 1e3  # us


def measure(pc: Any, repeats: int) -> dict[str, float]:
    """Microseconds per step (``loop``, ``hooks``) and per window (``window``) for ``pc``."""
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(2, 4)
    items = [x] * STEPS

    def train() -> None:
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    def bare() -> None:
        for _ in items:
            train()

    def monitored(with_hooks: bool, body: Any) -> Any:
        def run() -> None:
            kwargs = {"model": model, "optimizer": opt} if with_hooks else {}
            perf = pc.PerfMonitor(log_recommendations=False, window_steps=10**6,
                                  buffer_steps=10**6, **kwargs)
            with perf:
                for _ in perf.wrap_loader(items):
                    with perf.step():
                        body()
        return run

    out = {
        "loop": _best(monitored(False, lambda: None), repeats) / STEPS,
        "hooks": (_best(monitored(True, train), repeats) - _best(bare, repeats)) / STEPS,
    }
    # one 25-step window (the shortest an automatic window gets), then the default window as it
    # is on this loop (an older tree: 25 steps), each over a full default ring
    for key, window_steps in (("window", 25), ("default window", None)):
        kwargs = {} if window_steps is None else {"window_steps": window_steps}
        perf = pc.PerfMonitor(log_recommendations=False, **kwargs)
        rec = perf.recorder
        with perf:
            for _ in perf.wrap_loader(range(1100)):
                with perf.step():
                    pass
            out[key] = _best(rec._process_window, repeats * 20)
            out[key + " steps"] = getattr(rec, "_win_len", rec.window_steps)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default=None, help="a tree holding another perfcallback/")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trees: dict[str, str | None] = {"this tree": None}
    if args.compare:
        trees = {f"{args.compare}": str(Path(args.compare).resolve()), **trees}
    results = {}
    for _ in range(2):  # two passes, alternating, keeping each figure's best
        for name, tree in trees.items():
            figures = measure(_load(tree), args.repeats)
            old = results.get(name, figures)
            results[name] = {k: min(v, old[k]) for k, v in figures.items()}
    print(f"{'tree':<24} {'loop us/step':>13} {'hooks us/step':>14} {'25-step window us':>18} "
          f"{'default window us':>18} {'per step':>9}")
    for name, r in results.items():
        steps = r["default window steps"]
        per_step = r["loop"] + r["hooks"] + r["default window"] / steps
        default = f"{r['default window']:.0f} ({steps:.0f} steps)"
        print(f"{name:<24} {r['loop']:>13.1f} {r['hooks']:>14.1f} {r['window']:>18.0f} "
              f"{default:>18} {per_step:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
