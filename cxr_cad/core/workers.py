"""How many worker processes a job may use."""

from __future__ import annotations

import os

__all__ = ["default_workers"]


def default_workers(cap: int = 8) -> int:
    """CPUs this process may run on (its affinity mask, else the CPU count), at most ``cap``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(cap, n))
