"""Facts about the run that rules need besides the measurements: device, loader, optimizer, torch.

The monitor fills these in as it learns them (the loader when it is wrapped, the optimizer when it is
given); rules read them to tailor the fix to the user's actual settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(slots=True, kw_only=True)
class RunContext:
    """What the rules know about the environment. Mutable: facts arrive during the run."""

    device_type: str = "cpu"
    cpu_count: int = field(default_factory=lambda: len(os.sched_getaffinity(0))
                           if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    torch_version: str = torch.__version__
    world_size: int = 1
    rank: int = 0
    loader: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    compile_in_use: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def loader_facts(loader: object) -> dict[str, Any] | None:
    """DataLoader settings that rules quote back (``None`` for a plain iterable)."""
    if not isinstance(loader, torch.utils.data.DataLoader):
        return None
    return {
        "num_workers": loader.num_workers,
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "prefetch_factor": loader.prefetch_factor,
        "batch_size": loader.batch_size,
    }


def optimizer_facts(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer class and its foreach/fused settings, as rules need them."""
    defaults = getattr(optimizer, "defaults", {}) or {}
    return {
        "class": type(optimizer).__name__,
        "foreach": defaults.get("foreach"),
        "fused": defaults.get("fused"),
        "supports_foreach": "foreach" in defaults,
        "supports_fused": "fused" in defaults,
        "n_params": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        "n_tensors": sum(len(g["params"]) for g in optimizer.param_groups),
    }
