"""The report's independent computations (each run's bootstrap, each pair's test) side by side, one per core.

numpy's loops and scipy's sparse products release the GIL, so threads run bootstraps in parallel.
OpenBLAS, though, starts its own threads inside each of ours for the small matrix products, and the
two sets fight over the cores: on 2 cores four runs' intervals took 3.2 s in two threads against
3.5 s one after another, and 1.8 s with BLAS held to one thread, as it is while a map runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

__all__ = ["available_cores", "map_in_threads"]

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """The cores this process may run on (a container's or a job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_in_threads(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(item) for item in items]``, in one thread per core, BLAS in one thread meanwhile."""
    items = list(items)
    workers = min(len(items), available_cores())
    if workers <= 1:
        return [function(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
