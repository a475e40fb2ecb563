"""Dataloader rules: the training loop waiting for its next batch.

The signal is the ``data`` phase: time blocked in ``next()`` on the wrapped loader, measured on the
host for every step. The fix is quoted against the loader's actual settings (``RunContext.loader``)
and the cores this process may use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get, grade
from perfcallback.stats import WindowStats

_MAX_SUGGESTED_WORKERS = 8  # beyond ~8 workers per process, returns fade and shared memory grows


def suggested_workers(cpu_count: int | None) -> int:
    """Half the usable cores (the rest run the main process and its intra-op threads), 1..8.

    With the core count unknown (a trace analysed offline), the cap: the fix text then says
    "up to half the training host's cores" instead of quoting a number of cores.
    """
    if cpu_count is None:
        return _MAX_SUGGESTED_WORKERS
    return max(1, min(_MAX_SUGGESTED_WORKERS, cpu_count // 2))


@rule("dataloader.stall", category="dataloader")
def dataloader_stall(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """The loop waits for data for a real share of every step."""
    wait_s = stats.phase_s.get("data", 0.0)
    share = stats.share("data")
    if wait_s < get(th, "dataloader.stall.min_wait_s"):
        return None
    severity = grade(share, "dataloader.stall", th)
    if severity is None:
        return None
    evidence: dict[str, Any] = {
        "data_wait_s": wait_s,
        "step_s": stats.step_s,
        "data_share": share,
        "cpu_count": ctx.cpu_count,
    }
    if ctx.loader is not None:
        evidence.update({k: ctx.loader.get(k) for k in ("num_workers", "pin_memory")})
    message = f"Data wait is {share:.0%} of step time ({wait_s * 1e3:.1f} ms/step). " + _fix(ctx)
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)


def _fix(ctx: RunContext) -> str:
    """The concrete change, quoting the user's loader settings and core count."""
    target = suggested_workers(ctx.cpu_count)
    # offline, the analysing machine's cores say nothing about the training host's
    cores = (f"you have {ctx.cpu_count} cores" if ctx.cpu_count is not None
             else "at most half the training host's cores")
    your_cores = (f"your {ctx.cpu_count} cores" if ctx.cpu_count is not None
                  else "the training host's cores")
    cuda = ctx.device_type == "cuda"
    loader = ctx.loader
    if loader is None:
        return (
            "The batches do not come from a torch.utils.data.DataLoader: load them with "
            f"DataLoader(dataset, num_workers={target}, persistent_workers=True"
            + (", pin_memory=True" if cuda else "")
            + f") ({cores}) so batches are prepared while the model trains."
        )
    known = loader.get("num_workers")  # None: unknown (e.g. a trace shows only "workers > 0")
    workers = int(known or 0)
    settings = (f"DataLoader has num_workers={workers}" if known is not None
                else "DataLoader uses worker processes")
    if cuda and loader.get("pin_memory") is not None:
        settings += f" and pin_memory={loader['pin_memory']}"
    changes: list[str] = []
    if known is not None and workers < target:
        changes.append(f"num_workers={target}")
    if cuda and not loader.get("pin_memory"):
        changes.append("pin_memory=True")
    if loader.get("persistent_workers") is False:
        changes.append("persistent_workers=True")
    prefetch = loader.get("prefetch_factor")
    if workers > 0 and prefetch is not None and prefetch < 4:
        changes.append(f"prefetch_factor=4 (now {prefetch})")
    if known is None or workers >= target:
        tail = (
            f"Workers already use half or more of {your_cores}, so the per-sample work is "
            "too slow: pre-process or cache the dataset, decode/augment in batches (or on the "
            "GPU), and avoid per-item Python work in __getitem__ and collate_fn."
        )
        return f"{settings}. " + (f"Set {', '.join(changes)}. " if changes else "") + tail
    return f"{settings}. Set {', '.join(changes)} ({cores})."
