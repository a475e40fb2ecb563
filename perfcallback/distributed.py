"""Rank and world size under torch.distributed (1 process, rank 0, when it is not initialised).

Only local queries live here today; no collective is called. Cross-rank comparison (gathering
window summaries) will be added here, and only here, as "collective: every rank must call".
"""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0
