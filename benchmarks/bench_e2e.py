"""End-to-end wall time of `archlint check` on a CIFAR ResNet-18 file, interpreter start-up
and torch import included, with and without the verification pass.

    python benchmarks/bench_e2e.py [--repeats 3]

Also times `python -c "import torch"` in the same run, so the share archlint adds is visible,
and a forced measurement (`archlint.measure.measure` on the same model at the default batch)
because a clean ResNet-18 has no findings for the verification pass to confirm.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "models" / "resnet18_cifar.py"


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "archlint check (verify on)": [sys.executable, "-m", "archlint", "check", str(MODEL), "-q"],
        "archlint check --no-verify": [sys.executable, "-m", "archlint", "check", str(MODEL), "-q", "--no-verify"],
        "forced measurement (batch 128)": [sys.executable, "-c", (
            "import torch, time, importlib.util as u; torch.set_num_threads(1);"
            f"s=u.spec_from_file_location('r18', {str(MODEL)!r}); m=u.module_from_spec(s); s.loader.exec_module(m);"
            "from archlint.measure import measure; net=m.ResNet18(); t=time.perf_counter(); measure(net);"
            "print(time.perf_counter()-t)"
        )],
    }
    results = {}
    for name, cmd in cases.items():
        results[name] = statistics.median(wall(cmd) for _ in range(args.repeats))
    base = results["python -c 'import torch'"]
    print(f"| case | median wall (s) of {args.repeats} | vs import torch |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
