"""Byte sizes and the memory archlint may use: one grammar, one notion of "available".

Two settings take sizes: ``--memory-limit`` (the cap on a worker process; ``none`` lifts
it) and ``--memory-budget`` (how large a model may be and still be built for real). Both are
read by ``parse_size`` and printed by ``format_size``, and both follow the container's
cgroup limit when there is one, so a run inside a 4 GiB container never plans for the
host's 64 GiB. With ``--jobs N`` the N workers running at once share both evenly
(``share``): together they stay within what one worker alone would use.

Importing this module is cheap (no torch): the CLI parses sizes before any worker exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
from pathlib import Path

# Decimal units (k, MB, G) are powers of 1000, binary ones (KiB, MiB) of 1024, as in ruff and
# most tools; a bare number (or scientific notation, "1e9") is bytes.
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([a-z]*)")
# "none"/"off" (or 0) lifts a limit where ``allow_none`` says it may be lifted.
_NO_LIMIT = ("none", "off", "0")

# cgroup v2, then v1: the limit and the current use of the container the process runs in.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)

# Parameters and buffers may take at most this share of the available memory: measuring
# needs room for a copy (float64 re-check, another device) and the activations besides.
MEMORY_FRACTION = 0.25


def parse_size(text: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """``"4GiB"``, ``"512 MB"``, ``"1e9"`` -> bytes. With ``allow_none``, ``"none"``/``"off"``/
    ``"0"`` -> None (no limit). Raises ValueError naming the text for anything else, and for
    sizes below ``minimum``."""
    value = text.strip().lower()
    if allow_none and value in _NO_LIMIT:
        return None
    match = _SIZE.fullmatch(value)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"{text!r} is not a size like 4GiB, 512MB or 1e9 (bytes)")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size < minimum:
        raise ValueError(f"{text!r} is below {format_size(minimum)}" if minimum > 1 else f"{text!r} must be positive")
    return size


def format_size(n: float) -> str:
    """Bytes in binary units, three significant digits: ``4 GiB``, ``512 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def _cgroup() -> tuple[int, int] | None:
    """(limit, current use) of this process's memory cgroup, when it has a limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        with contextlib.suppress(OSError, ValueError):
            raw = Path(limit_file).read_text().strip()
            if not raw.isdigit():  # "max": no limit at this level
                continue
            usage = 0
            with contextlib.suppress(OSError, ValueError):
                usage = int(Path(usage_file).read_text().strip())
            return int(raw), usage
    return None


def physical_memory() -> int | None:
    """The memory this machine (or its cgroup, in a container) has, in bytes."""
    total = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup()
    if cgroup is not None and (total is None or cgroup[0] < total):
        total = cgroup[0]
    return total


def available_memory() -> int:
    """Bytes available to new allocations: MemAvailable on Linux, and no more than what the
    container's cgroup limit leaves; plus the free top of this process's heap (heap_kept)."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 8 GiB
            available = 8 << 30
    cgroup = _cgroup()
    if cgroup is not None:
        available = min(available, max(cgroup[0] - cgroup[1], 0))
    return available + heap_kept()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_kept() -> int:
    """Bytes free at the top of this process's heap: kept, not given back, by an analysing
    process (worker.keep_freed_memory), and ready for its next allocations without counting
    again against its cap or the machine's memory. glibc 2.33 and later; 0 elsewhere."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError, TypeError):
        return 0
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().keepcost)


def data_room() -> int | None:
    """Bytes this process may still allocate under its RLIMIT_DATA soft limit (a worker's
    share of ``--memory-limit``: the cap is set there), None without such a limit or where
    its use cannot be read (``VmData`` of /proc/self/status: what Linux counts against it,
    less the free top of the heap, which new allocations reuse: heap_kept)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY:
        return None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return max(soft - int(line.split()[1]) * 1024 + heap_kept(), 0)
    return None


def values_size(shapes, traced_batch: int, rows: int, itemsize: int) -> float:
    """Bytes of values of these ``shapes`` (recorded with ``traced_batch`` rows) for ``rows``
    rows: the activations a measurement holds, estimated from the traced graph."""
    return sum(math.prod(shape) for shape in shapes) / traced_batch * rows * itemsize


def default_memory_limit() -> int | None:
    """Half the physical memory: room for the model, and the machine stays usable."""
    total = physical_memory()
    return total // 2 if total else None


def default_memory_budget(device: "str | object" = "cpu") -> int:
    """MEMORY_FRACTION of the available RAM, and of the free memory of the GPU the
    verification pass will use (a resolved ``torch.device``), whichever is smaller."""
    budget = MEMORY_FRACTION * available_memory()
    if getattr(device, "type", device) == "cuda":
        import torch

        budget = min(budget, MEMORY_FRACTION * torch.cuda.mem_get_info(getattr(device, "index", None))[0])
    return int(budget)


# How PyTorch's allocators and the C library say that memory ran out (CPU and CUDA).
_EXHAUSTED = ("can't allocate memory", "cannot allocate memory", "out of memory", "bad_alloc")
# What a user can do about it, said with every such error.
EXHAUSTED_HINT = ("it ran out of memory: raise --memory-limit, or analyse fewer files at once (--jobs), "
                  "whose workers share it")


def exhausted(exc: BaseException) -> bool:
    """Whether an exception says that memory ran out, not that the model or its inputs are
    wrong (PyTorch's allocators raise RuntimeErrors that say so)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(words in text for words in _EXHAUSTED)


def measurement_room(device: "str | object" = "cpu") -> int:
    """Bytes a measurement may hold at once: the memory budget's share of what is free and,
    on a CPU, half of what the process's own cap (``data_room``: a worker's share of
    ``--memory-limit``) still allows. Half: the heap keeps what a measurement frees (see
    worker.keep_freed_memory), and the file's later models need room too. A DenseNet-201's
    reverse pass on a batch of 32 rows held about 3 GB; in a worker capped at 6 GiB, the next
    model of its file could not allocate a convolution afterwards."""
    room = default_memory_budget(device)
    capped = data_room() if getattr(device, "type", device) == "cpu" else None
    return room if capped is None else min(room, capped // 2)


def share(size: int | None, workers: int) -> int | None:
    """One of ``workers`` concurrent analyses' part of ``size`` (a memory limit or budget they
    share evenly, so that together they stay within it); None (no limit) stays None."""
    return None if size is None else size // max(1, workers)
