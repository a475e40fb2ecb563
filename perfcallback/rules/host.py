"""Host rules: more busy CPU threads than cores, so torch's threads wait for each other.

Signals: ``intra_op_threads`` (``torch.get_num_threads()``), ``process_cpu_cores`` (CPU time of
this process per wall second) and ``load_avg_1m`` (the host's runnable threads), read once per
window; the cores this process may use (``os.sched_getaffinity``), DataLoader workers, and the
ranks on this node (``LOCAL_WORLD_SIZE``). Two ways to be oversubscribed: by configuration
(threads x ranks beyond the cores) and by a busy host (fewer cores free than threads). OpenMP
threads that spin-wait for a core held by someone else turn a 2x speed-up into a 4x slow-down
(measured here: a small CNN at 115 ms/step with 1 thread, 490 ms/step with 2 on a busy 2-core
host).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from perfcallback.context import RunContext
from perfcallback.report import Severity
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import get
from perfcallback.stats import WindowStats


def local_ranks(ctx: RunContext) -> int:
    """Processes of this job on this node (``LOCAL_WORLD_SIZE``, set by torchrun and Lightning)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@rule("host.cpu_oversubscribed", category="host", needs="intra_op_threads")
def cpu_oversubscribed(
    stats: WindowStats, ctx: RunContext, th: Mapping[str, float]
) -> Finding | None:
    """torch's intra-op threads, times the ranks on this node, exceed the cores free for them."""
    threads = stats.extra.get("intra_op_threads")
    if threads is None or threads <= 1:
        return None
    compute = stats.share("forward") + stats.share("backward") + stats.share("optimizer")
    if ctx.device_type == "cpu" and compute < get(th, "host.cpu_oversubscribed.min_compute_share"):
        return None  # the threads are not what the step waits for
    ranks = local_ranks(ctx)
    cores = ctx.cpu_count
    if cores is None:  # a trace analysed elsewhere: this machine's cores say nothing
        return None
    workers = int((ctx.loader or {}).get("num_workers") or 0)
    demand = threads * ranks
    free = float(cores)
    load, ours = stats.extra.get("load_avg_1m"), stats.extra.get("process_cpu_cores")
    if load is not None and ours is not None:
        others = max(0.0, load - ours * ranks)  # runnable threads that are not this job's
        free = max(1.0, min(float(cores), cores - others))
    ratio = demand / free
    if ratio <= get(th, "host.cpu_oversubscribed.ratio"):
        return None
    best = max(1, math.floor(free / ranks))
    severity: Severity = (
        "critical" if ratio >= get(th, "host.cpu_oversubscribed.critical_ratio") else "warning"
    )
    if ctx.device_type != "cpu":
        severity = "info"  # GPU runs spend little in intra-op CPU threads
    busy = "" if free >= cores else f", of which about {free:.1f} are free (load {load:.1f})"
    per = f" x {ranks} processes on this node" if ranks > 1 else ""
    message = (
        f"torch runs {threads:.0f} intra-op threads{per} on {cores} cores{busy}: the threads wait "
        f"for each other. Call torch.set_num_threads({best}) at start-up (or set "
        f"OMP_NUM_THREADS={best} before launching)"
        + (f"; the {workers} DataLoader workers need cores too" if workers else "")
        + "."
    )
    evidence: dict[str, Any] = {
        "intra_op_threads": threads, "local_ranks": ranks, "cores": cores, "free_cores": free,
        "dataloader_workers": workers, "oversubscription": ratio, "suggested_threads": best,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if load is not None:
        evidence["load_avg_1m"] = load
    if ours is not None:
        evidence["process_cpu_cores"] = ours
    return Finding(severity=severity, message=message, evidence=evidence,
                   est_gain=None)
