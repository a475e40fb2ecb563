"""Host-sync rules: the host blocked in device synchronisation inside the step.

The signal is ``sync_wait_pct`` (EXTRA_KEYS): the share of host step time spent inside
synchronising CUDA calls (``cudaStreamSynchronize``, ``cudaMemcpy`` device-to-host, ...), filled
in by trace analysis of a profiled window. It exists only for CUDA runs, so the rule never fires on
CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

from perfcallback.context import RunContext
from perfcallback.rules import Finding, rule
from perfcallback.rules.thresholds import grade
from perfcallback.stats import WindowStats


@rule("host_sync.blocking", category="host_sync", needs="sync_wait_pct")
def blocking_sync(stats: WindowStats, ctx: RunContext, th: Mapping[str, float]) -> Finding | None:
    """The host waits for the device inside the step (``.item()``, ``.cpu()``, ...)."""
    pct = stats.extra.get("sync_wait_pct")
    if pct is None:
        return None
    share = pct / 100.0
    severity = grade(share, "host_sync.blocking", th)
    if severity is None:
        return None
    message = (
        f"The host is blocked waiting for the GPU {share:.0%} of each step, so it cannot queue the "
        "next kernels. Remove synchronising calls from the step: .item(), .cpu(), .tolist(), "
        "print(tensor), `if tensor:`, torch.nonzero/masked indexing, torch.cuda.synchronize(). "
        "Keep metrics on the device and read them every N steps; "
        "torch.cuda.set_sync_debug_mode('warn') reports each synchronising call."
    )
    evidence = {"sync_wait_pct": pct, "step_s": stats.step_s}
    return Finding(severity=severity, message=message, evidence=evidence, est_gain=share)
