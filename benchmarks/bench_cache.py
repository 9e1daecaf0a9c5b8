"""Wall time of `archlint check` on a CIFAR ResNet-18 file without and with a cache entry.

    python benchmarks/bench_cache.py [--repeats 3]

Each repeat copies the model to a fresh temporary project, runs `archlint check` there
(cold: no cache, so torch is imported and the model built and traced) and runs it again
(warm: the entry written by the first run), both as subprocesses, interpreter start-up
included. Prints the medians and their ratio, and checks that the warm run was really
answered from the cache and printed the same results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "architectures" / "good_resnet18_cifar.py"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("ARCHLINT_NO_CACHE", "ARCHLINT_CACHE_DIR")}
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="archlint-bench-") as tmp:
            project = Path(tmp)
            (project / "pyproject.toml").write_text("[tool.archlint]\n")
            shutil.copy(MODEL, project / "resnet18_cifar.py")
            cmd = [sys.executable, "-m", "archlint", "check", "resnet18_cifar.py"]
            seconds, first = timed(cmd, project, env)
            cold.append(seconds)
            seconds, second = timed(cmd, project, env)
            warm.append(seconds)
            if "from the cache" not in second.stderr or second.stdout != first.stdout:
                raise SystemExit(f"the second run was not answered from the cache:\n{second.stderr}")
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"| run | median wall (s) of {args.repeats} |")
    print("|---|---|")
    print(f"| cold (no cache entry) | {c:.2f} |")
    print(f"| warm (cache hit) | {w:.2f} |")
    print(f"\ncold / warm = {c / w:.1f}x")


if __name__ == "__main__":
    main()
