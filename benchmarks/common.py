"""What the measurement benchmarks share: the repository importable, one thread (the
machine is shared; ratios are measured side by side in one run), the sample size, synthetic
images and the timer.

    import common  # first, before anything imports torch's thread pool
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # after benchmarks/ itself, so exact.py and models.py resolve

from archlint.inputs import pink_noise  # noqa: E402

torch.set_num_threads(1)

# Samples per measurement: archlint's default batch.
N = 128


def images(n: int, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-size 1/f noise images (what archlint synthesises for image models), float32."""
    return pink_noise(n, 3, (32, 32), generator).float()


def timed_both(fn):
    """(wall-clock seconds, CPU seconds of this process, result). On a shared machine the
    CPU time is the steadier of the two: time the process waits for the CPU is not in it."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result
