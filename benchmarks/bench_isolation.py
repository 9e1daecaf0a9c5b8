"""What per-file worker processes cost: `archlint check` isolated (the default) against
`--no-isolation` (everything in one process), interpreter start-up and torch import included.

    python benchmarks/bench_isolation.py [--repeats 5]

Runs are interleaved (isolated, in-process, isolated, ...) so that load from other jobs on
the machine hits both sides alike; prints medians side by side and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESNET = REPO / "fixtures" / "architectures" / "good_resnet18_cifar.py"
# Several small files: what a directory run pays per file.
MANY = sorted(str(p) for p in (REPO / "fixtures").glob("ARC9*/bad_*.py")) + [str(RESNET)]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    check = [sys.executable, "-m", "archlint", "check", "-q"]
    cases = {
        "resnet18, --no-verify": [*check, str(RESNET), "--no-verify"],
        "resnet18, verify on": [*check, str(RESNET)],
        f"{len(MANY)} files, --no-verify": [*check, *MANY, "--no-verify"],
    }
    print(f"python -c 'import torch': median {statistics.median(wall([sys.executable, '-c', 'import torch']) for _ in range(args.repeats)):.2f} s")
    print(f"| case | isolated (s) | --no-isolation (s) | ratio | (medians of {args.repeats}) |")
    print("|---|---|---|---|---|")
    for name, cmd in cases.items():
        isolated, inproc = [], []
        for _ in range(args.repeats):
            isolated.append(wall(cmd))
            inproc.append(wall([*cmd, "--no-isolation"]))
        a, b = statistics.median(isolated), statistics.median(inproc)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | |")


if __name__ == "__main__":
    main()
