"""Several files at once (``archlint check --jobs N``): how many cores there are, and the
run itself.

Each file is still analysed in its own worker process (``archlint.worker``); the parent
runs N of them at once, one thread waiting on each (the waiting is all the parent does:
the analysis is in the children). Results are returned in the order of the files, so the
output does not depend on which worker finished first. The N workers share the memory
limit and the memory budget (``memory.share``) and the cores (``torch_threads``).

Imports neither torch nor the engine.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

# cgroup v2, then v1: the CPU quota of the container the process runs in.
_CPU_QUOTA_V2 = "/sys/fs/cgroup/cpu.max"
_CPU_QUOTA_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")
# A worker process uses at most this many threads for torch's operations: the models
# archlint measures are small enough that more threads mostly wait on each other.
MAX_TORCH_THREADS = 4

R = TypeVar("R")


def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup, in cores (None when there is none)."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = open(_CPU_QUOTA_V2).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota, period = (int(open(f).read().strip()) for f in _CPU_QUOTA_V1)
        return None if quota <= 0 else quota / period
    return None


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a batch scheduler's
    allocation) and its container's CPU quota, not the machine's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def torch_threads(workers: int = 1) -> int:
    """Threads for torch's operations in one of ``workers`` worker processes running at
    once: the cores are shared, since more threads than cores only wait on each other."""
    return max(1, min(MAX_TORCH_THREADS, usable_cpus() // max(1, workers)))


def run(paths: list[Path], one: Callable[[Path], R], jobs: int, stop: Callable[[], None] = lambda: None) -> dict[Path, R]:
    """``one(path)`` for every path, ``jobs`` at a time, as {path: result} in the order of
    ``paths``. With one job everything runs in this thread, one file after the other.

    If anything goes wrong (an internal error from ``one``, a Ctrl-C in this thread), the
    files not started are dropped and ``stop()`` is called to end those running (it kills
    their workers), before the exception goes on.
    """
    if jobs <= 1 or len(paths) <= 1:
        return {path: one(path) for path in paths}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="archlint-job")
    try:
        futures = {path: pool.submit(one, path) for path in paths}
        return {path: futures[path].result() for path in paths}
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop()
        raise
    finally:
        pool.shutdown(wait=True)
