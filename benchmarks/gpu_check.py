"""The GPU checks a CPU-only session cannot run, in one go (< 10 minutes on one GPU).

Run on a machine with CUDA, from the repository root, with the dev venv:

    .venv/bin/python benchmarks/gpu_check.py [--quick] [--out gpu_check]

Steps (each with its own time limit; a failing step is reported and the others still run):

1. ``pytest -m gpu``: the CUDA tests (events, allocator, NVML against torch, no hidden syncs).
2. A profiled run with ``torch.compile`` and bf16 autocast under ``PerfMonitor``: no graph break
   added by the monitor, no internal error, a trace captured and analysed, device breakdown and
   NVML figures present, ``precision.fp32_matmul`` silent.
3. MFU against a hand count: a stack of square ``Linear`` layers, whose training FLOPs are
   ``6 * batch * width**2 * layers`` (2 forward + 4 backward per multiply-add); the monitor's
   ``flops_per_step`` must match within 5% and MFU must lie in (0, 1].
4. NVML against ``nvidia-smi``: memory total, SM clock maximum and power limit agree.
5. The GPU overhead benchmark: a step of >= 20 ms, monitored vs not, paired and interleaved; the
   target is at most 0.5 % (ratio <= 1.005).
6. DDP on 2 processes (NCCL) with ``PerfMonitor`` on each rank, when there are >= 2 GPUs.

A compact summary is printed at the end and written to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: int) -> tuple[bool, str]:
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout}s"
    tail = (out.stdout + out.stderr).strip().splitlines()[-15:]
    return out.returncode == 0, "\n".join(tail)


def check_pytest_gpu(args: argparse.Namespace) -> dict[str, Any]:
    ok, tail = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                     "tests"], timeout=240)
    return {"ok": ok, "tail": tail}


def _model(width: int, layers: int) -> Any:
    import torch

    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False)
                                 for _ in range(layers)]).cuda()


def check_compile_bf16_profiled(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from perfcallback import PerfMonitor
    from perfcallback.profiling import ProfileOptions

    def breaks(monitored: bool, logdir: str) -> tuple[int, Any]:
        torch._dynamo.reset()
        counters.clear()
        model = _model(1024, 4)
        model.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randn(256, 1024, device="cuda")

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if not monitored:
            for _ in range(40):
                step()
            return sum(counters["graph_break"].values()), None
        with PerfMonitor(model=model, optimizer=opt, logdir=logdir, warmup_steps=5,
                         window_steps=10, profile=ProfileOptions(),
                         log_recommendations=False) as perf:
            for _ in perf.wrap_loader(range(80)):
                with perf.step():
                    step()
        return sum(counters["graph_break"].values()), perf.report()

    with tempfile.TemporaryDirectory() as tmp:
        alone, _ = breaks(False, tmp)
        monitored, report = breaks(True, tmp)
        traces = sorted(str(p) for p in Path(tmp).glob("profiler/*/*.json*"))
    rules = {r.rule for r in report.recommendations}
    ok = (monitored == alone and not report.disabled and report.device_breakdown is not None
          and "precision.fp32_matmul" not in rules and bool(traces))
    return {"ok": ok, "graph_breaks_alone": alone, "graph_breaks_monitored": monitored,
            "disabled": report.disabled, "rules": sorted(rules), "traces": len(traces),
            "profiled_steps": report.profiled_steps, "gpu": report.gpu,
            "step_ms": report.breakdown["step"] * 1e3}


def check_mfu(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from perfcallback import PerfMonitor
    from perfcallback.telemetry.flops import peak_for

    width, layers, batch = 4096, 8, 2048
    model = _model(width, layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(batch, width, device="cuda")
    with PerfMonitor(model=model, optimizer=opt, warmup_steps=3, window_steps=10,
                     log_recommendations=False) as perf:
        for _ in perf.wrap_loader(range(43)):
            with perf.step(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x).float().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    report = perf.report()
    # The input needs no grad, so the first layer has no input-gradient matmul: 6x less 2x for it.
    hand = 6 * batch * width * width * layers - 2 * batch * width * width
    name = torch.cuda.get_device_name()
    counted = report.flops_per_step or 0.0
    ok = abs(counted - hand) <= 0.05 * hand and (report.mfu is None or 0 < report.mfu <= 1)
    return {"ok": ok, "device": name, "peak_row": getattr(peak_for(name), "source", None),
            "flops_hand": hand, "flops_counted": counted, "mfu": report.mfu,
            "tflops": report.throughput.get("tflops"), "step_ms": report.breakdown["step"] * 1e3}


def check_nvml_vs_smi(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from perfcallback.telemetry.nvml import NvmlSampler, torch_device_ids

    torch.zeros(1, device="cuda")
    sampler = NvmlSampler(lambda: torch_device_ids(0), interval_s=0.1)
    sampler.sample()
    time.sleep(1.0)
    sampler.sample()
    sampler.close()
    fig = sampler.latest
    query = "memory.total,clocks.max.sm,power.limit,utilization.gpu,temperature.gpu"
    uuid = str(torch_device_ids(0)[0])
    ok_smi, out = _run(["nvidia-smi", f"--id={uuid}", f"--query-gpu={query}",
                        "--format=csv,noheader,nounits"], timeout=30)
    smi: dict[str, float] = {}
    if ok_smi:
        values = [v.strip() for v in out.splitlines()[-1].split(",")]
        for key, v in zip(query.split(","), values, strict=False):
            with contextlib.suppress(ValueError):
                smi[key] = float(v)
    agree = (
        abs(fig.get("nvml_mem_total_bytes", 0) / 2**20 - smi.get("memory.total", -1)) <= 2
        and abs(fig.get("nvml_sm_clock_max_mhz", 0) - smi.get("clocks.max.sm", -1)) <= 1
        and abs(fig.get("nvml_power_limit_w", 0) - smi.get("power.limit", -1)) <= 1
    )
    return {"ok": bool(fig) and agree, "nvml": fig, "nvidia_smi": smi}


def check_overhead(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from perfcallback import PerfMonitor

    model = _model(4096, 12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    x = torch.randn(2048, 4096, device="cuda")

    def step() -> None:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def block(monitored: bool, n: int = 30) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if monitored:
            with PerfMonitor(model=model, optimizer=opt, log_recommendations=False) as perf:
                for _ in perf.wrap_loader(range(n)):
                    with perf.step():
                        step()
        else:
            for _ in range(n):
                step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    block(False, 5)
    block(True, 5)
    ratios, base = [], []
    for i in range(args.rounds):
        order = [False, True] if i % 2 else [True, False]
        t = {m: block(m) for m in order}
        ratios.append(t[True] / t[False])
        base.append(t[False])
    ratio = statistics.median(ratios)
    return {"ok": ratio <= 1.005, "step_ms": statistics.median(base) * 1e3, "ratio": ratio,
            "ratios": [round(r, 4) for r in ratios]}


_DDP_CHILD = r'''
import os, torch, torch.distributed as dist
from perfcallback import PerfMonitor
dist.init_process_group("nccl")
rank = dist.get_rank(); torch.cuda.set_device(rank)
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(4)]).cuda(), device_ids=[rank])
opt = torch.optim.SGD(model.parameters(), lr=1e-4)
x = torch.randn(512, 2048, device="cuda")
with PerfMonitor(model=model, optimizer=opt, warmup_steps=3, window_steps=10,
                 log_recommendations=False) as perf:
    for _ in perf.wrap_loader(range(33)):
        with perf.step():
            model(x).square().mean().backward(); opt.step(); opt.zero_grad()
r = perf.report()
print(f"RANK{rank} steps={r.steps} disabled={r.disabled} device={r.device_breakdown is not None} "
      f"gpu={bool(r.gpu)} mfu={r.mfu}")
dist.destroy_process_group()
'''


def check_ddp(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if torch.cuda.device_count() < 2:
        return {"ok": True, "skipped": "fewer than 2 GPUs"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_DDP_CHILD)
    ok, tail = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                     f.name], timeout=180)
    os.unlink(f.name)
    ranks = [line for line in tail.splitlines() if line.startswith("RANK")]
    ok = ok and len(ranks) == 2 and all("disabled={}" in r and "steps=30" in r for r in ranks)
    return {"ok": ok, "ranks": ranks, "tail": tail if not ok else ""}


CHECKS = {
    "pytest -m gpu": check_pytest_gpu,
    "compile + bf16 + profiler": check_compile_bf16_profiled,
    "MFU vs hand count": check_mfu,
    "NVML vs nvidia-smi": check_nvml_vs_smi,
    "overhead (>= 20 ms steps)": check_overhead,
    "DDP x2 (NCCL)": check_ddp,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check")
    parser.add_argument("--rounds", type=int, default=8, help="overhead benchmark rounds")
    parser.add_argument("--only", nargs="*", default=None, help="names of checks to run")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 2
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, check in CHECKS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.perf_counter()
        try:
            result = check(args)
        except Exception as exc:  # report and go on with the next check
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = result
        print(f"[{'PASS' if result['ok'] else 'FAIL'}] {name} ({result['seconds']} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str))
    print("\nsummary (details in", out / "summary.json", ")")
    for name, result in results.items():
        if isinstance(result, dict):
            brief = {k: v for k, v in result.items() if k not in ("tail", "gpu", "nvml", "rules")}
            print(f"  {name}: {json.dumps(brief, default=str)[:300]}")
    failed = [n for n, r in results.items() if isinstance(r, dict) and not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
