"""What building every model on the meta device first costs (archlint.load.build_all), on
the CIFAR ResNet-18 file, side by side with a plain build, in one process.

    python benchmarks/bench_meta_build.py [--repeats 20]

"plain" calls the factory; "meta + real" is what build_all does for a model within the
memory budget: the meta build with init recording (to learn the size), then the real build.
Medians over the repeats; one thread, as on a shared CI machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from archlint import load, memory
from archlint.load import building

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "architectures" / "good_resnet18_cifar.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with load.isolated_import(MODEL) as module:
        (entry,) = [e for e in load.discover(module, str(MODEL)).entries if e.name == "ResNet18"]
        times: dict[str, list[float]] = {"plain": [], "meta only": [], "meta + real": []}
        for _ in range(args.repeats):
            for case, run in (
                ("plain", entry.build),
                ("meta only", lambda: building._build_on_meta(entry)),
                ("meta + real", lambda: building._build(entry, memory.default_memory_budget())),
            ):
                start = time.perf_counter()
                run()
                times[case].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    print(f"ResNet-18 build, median of {args.repeats}:")
    for case, values in times.items():
        med = statistics.median(values)
        print(f"  {case:12s} {med * 1000:7.1f} ms  ({med / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
