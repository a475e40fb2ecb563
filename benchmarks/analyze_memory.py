"""Peak memory of ``perfcallback analyze`` as a process on hostile and on large inputs.

Writes the inputs to a scratch folder (nothing is downloaded), runs the CLI once per input in a
fresh process and reports its exit status and peak RSS (``ru_maxrss`` of the child). The inputs:

- ``bomb``: 1 MB of gzip that inflates to 1 GiB of JSON (one event with a 1 GiB name);
- ``bomb_events``: gzip inflating to ~1 GiB of small, valid kernel events;
- ``big``: a realistic ~300 MB (decompressed) trace: host ops with arguments, launches, kernels;
- ``big_bad_early``: the same with a malformed event near the start;
- ``at_cap``: kernels and launch calls just under ``TraceLimits.max_events`` (the largest input
  that is analysed, not refused).

Usage::

    python benchmarks/analyze_memory.py [--scratch DIR] [--big-mb 300]

The bound it checks is the one stated in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

_KERNEL = "void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float>>"


def _write_bomb(path: Path) -> None:
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "')
        block = b"A" * 2**20
        for _ in range(1024):
            fh.write(block)
        fh.write(b'", "ts": 1, "dur": 1}]}')


def _events(n_steps: int, bad_early: bool) -> object:
    """Yield JSON lines of a plausible trace: per step one ProfilerStep, ops, launches, kernels."""
    ts = 1_000_000.0
    corr = 0
    for step in range(n_steps):
        yield json.dumps({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}",
                          "pid": 1, "tid": 1, "ts": ts, "dur": 10_000.0, "args": {}})
        for k in range(100):
            t = ts + k * 100.0
            corr += 1
            yield json.dumps({"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1,
                              "tid": 1, "ts": t, "dur": 20.0, "args": {
                                  "External id": corr, "Input Dims": [[64, 1024], [64, 1024]],
                                  "Input type": ["float", "float"], "Sequence number": corr}})
            yield json.dumps({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel",
                              "pid": 1, "tid": 1, "ts": t + 5, "dur": 5.0,
                              "args": {"correlation": corr, "cbid": 211}})
            yield json.dumps({"ph": "X", "cat": "kernel", "name": _KERNEL, "pid": 0, "tid": 7,
                              "ts": t + 15, "dur": 60.0, "args": {
                                  "stream": 7, "correlation": corr, "device": 0,
                                  "grid": [128, 1, 1], "block": [256, 1, 1]}})
            if bad_early and step == 0 and k == 1:
                yield '{"ph": "X", "cat": "kernel", "ts": 12 34}'
        ts += 10_000.0


def _write_trace(path: Path, target_mb: int, bad_early: bool = False) -> int:
    per_step = sum(len(e) + 2 for e in _events(1, False))
    steps = max(1, target_mb * 2**20 // per_step)
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write('{"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "Synthetic"}],\n'
                 '"traceEvents": [\n')
        first = True
        for line in _events(int(steps), bad_early):
            fh.write(line if first else ",\n" + line)
            first = False
        fh.write("\n]}\n")
    return int(steps)


def _write_bomb_events(path: Path) -> None:
    """~1 GiB of tiny valid kernel events (compresses ~300:1)."""
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b'{"traceEvents": [')
        ev = (b'{"ph":"X","cat":"kernel","name":"k","ts":1,"dur":1,"args":{"stream":7}},' * 4096)
        for _ in range(2**30 // len(ev)):
            fh.write(ev)
        fh.write(b'{"ph":"X","cat":"kernel","name":"k","ts":1,"dur":1,"args":{"stream":7}}]}')


def _write_at_cap(path: Path) -> None:
    """Kernels and their launch calls, just under ``TraceLimits.max_events``: the most columns a
    file may bring into the analysis."""
    from perfcallback.trace.parse import DEFAULT_LIMITS

    pairs = (DEFAULT_LIMITS.max_events - 1000) // 2
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write('{"traceEvents": [')
        for i in range(pairs):
            t = 1000.0 + 10 * i
            fh.write(f'{{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","ts":{t},'
                     f'"dur":2,"args":{{"correlation":{i}}}}},'
                     f'{{"ph":"X","cat":"kernel","name":"k{i % 1000}","ts":{t + 3},"dur":4,'
                     f'"args":{{"stream":{7 + i % 4},"correlation":{i}}}}},\n')
        fh.write('{"ph":"X","cat":"user_annotation","name":"ProfilerStep#1","ts":0,"dur":5}]}')


def _run(path: Path, *extra: str) -> tuple[int, float, float, str]:
    code = ("import resource, sys\n"
            "from perfcallback.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "analyze", str(path), "--json", *extra],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    peak_mib = int(lines[-1]) / 1024
    message = lines[0] if len(lines) > 1 else ""
    return proc.returncode, peak_mib, elapsed, message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/perfcallback-mem"))
    parser.add_argument("--big-mb", type=int, default=300, help="decompressed size of 'big'")
    parser.add_argument("--only", nargs="*", help="run only these inputs")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    inputs = {
        "bomb": (args.scratch / "bomb.json.gz", _write_bomb),
        "bomb_events": (args.scratch / "bomb_events.json.gz", _write_bomb_events),
        "big": (args.scratch / "big.json.gz", lambda p: _write_trace(p, args.big_mb)),
        "big_bad_early": (args.scratch / "big_bad.json.gz",
                          lambda p: _write_trace(p, args.big_mb, bad_early=True)),
        "at_cap": (args.scratch / "at_cap.json.gz", _write_at_cap),
    }
    print(f"{'input':<15}{'gz MB':>8}{'exit':>6}{'peak RSS MiB':>14}{'s':>7}  message")
    for name, (path, write) in inputs.items():
        if args.only and name not in args.only:
            continue
        if not path.exists():
            write(path)
        code, peak, elapsed, message = _run(path)
        print(f"{name:<15}{path.stat().st_size / 1e6:>8.1f}{code:>6}{peak:>14.0f}"
              f"{elapsed:>7.1f}  {message[:90]}")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this driver process: {baseline:.0f} MiB)")


if __name__ == "__main__":
    main()
