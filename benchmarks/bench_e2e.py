"""End-to-end time of `archlint check` on a CIFAR ResNet-18 file, interpreter start-up and
torch import included, with and without the verification pass, and where the time goes.

    python benchmarks/bench_e2e.py [--repeats 5]

Each case runs in a fresh interpreter, interleaved with the others so that machine noise hits
all of them alike; the table gives the median wall-clock and the median CPU time (user +
system of the child: on a shared machine the steadier of the two). It also times
`python -c "import torch"` (the floor archlint cannot go below) and a full measurement
(`archlint.measure` on the same model at the default batch). A clean ResNet-18 has no static
findings, so `check` gives it the screening measurement (one batch, no population pass, the
nodes the rules read), not the full one.

The phase breakdown runs `archlint check --no-verify --no-isolation` once more in a child
that wraps the engine's steps with timers (their sum is not the wall time: the interpreter's own start and
exit are outside them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "architectures" / "good_resnet18_cifar.py"

# Runs in the child: time each step of one `archlint check`, print them as JSON.
PHASES = r"""
import functools, json, sys, time
start = time.perf_counter()
marks = {}
def timed(owner, name, label):
    func = getattr(owner, name)
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            marks[label] = marks.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)
t = time.perf_counter()
import archlint.cli
marks["import archlint.cli (click, config)"] = time.perf_counter() - t
t = time.perf_counter()
import torch
marks["import torch"] = time.perf_counter() - t
t = time.perf_counter()
from archlint import engine, load, sourcemap, trace, ops
marks["import archlint's engine modules"] = time.perf_counter() - t
timed(load, "isolated_import", "  (not used)")
timed(sourcemap, "SourceIndex", "parse the file (ast), once for discovery and spans")
timed(load, "discover", "discover models")
timed(load, "build_all", "build the model (user code: ResNet18())")
timed(engine, "_example_inputs", "example inputs (infer from the first layer)")
timed(trace, "_run_recording_values", "trace: run the fx graph once (shapes, dtypes)")
timed(ops, "param_infos", "trace: parameter statistics")
timed(trace, "trace", "trace total (fx, run, nodes, spans)")
timed(engine, "_predict", "mean-field prediction")
timed(engine, "_run_rules", "rules")
timed(engine, "check_file", "check_file total")
try:
    archlint.cli.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
marks.pop("  (not used)", None)
marks["in-process total (after interpreter start-up)"] = time.perf_counter() - start
print(json.dumps({"marks": marks, "end": time.time()}))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, proc


def phases() -> None:
    # In one process (--no-isolation), so that the timers see the engine's steps.
    cmd = [sys.executable, "-c", PHASES, "check", str(MODEL), "-q", "--no-verify", "--no-cache", "--no-isolation"]
    started = time.time()
    _, _, proc = run(cmd)
    ended = time.time()
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    marks = data["marks"]
    marks["interpreter exit (after main returned)"] = ended - data["end"]
    print("\n### Where the time goes (`archlint check --no-verify`, one run, seconds)\n")
    print("| phase | seconds |")
    print("|---|---|")
    for label, seconds in marks.items():
        print(f"| {label} | {seconds:.3f} |")
    print(f"| wall-clock of the whole child process | {ended - started:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # --no-cache: every repeat must do the work (a second run is otherwise a cache hit).
    check = [sys.executable, "-m", "archlint", "check", str(MODEL), "-q", "--no-cache"]
    cases = {
        "`python -c pass` (interpreter start-up)": [sys.executable, "-c", "pass"],
        "`python -c 'import torch'`": [sys.executable, "-c", "import torch"],
        "`archlint check` (verify on: a screening measurement)": check,
        "`archlint check --no-verify`": check + ["--no-verify"],
        # OpenMP's worker threads spin after each parallel region; on a shared machine they
        # take the core from the main thread (see docs/speed.md).
        "`OMP_WAIT_POLICY=PASSIVE archlint check --no-verify`": (check + ["--no-verify"], {"OMP_WAIT_POLICY": "PASSIVE"}),
        "full measurement, batch 128 (`archlint.measure(model)`, in the process)": [sys.executable, "-c", (
            "import torch, importlib.util as u; torch.set_num_threads(1);"
            f"s=u.spec_from_file_location('r18', {str(MODEL)!r}); m=u.module_from_spec(s); s.loader.exec_module(m);"
            "import archlint; archlint.measure(m.ResNet18())"
        )],
    }
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, cmd in cases.items():
            wall, cpu, _ = run(*cmd) if isinstance(cmd, tuple) else run(cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    torch_wall = statistics.median(walls["`python -c 'import torch'`"])
    print(f"| case | median wall-clock (s) of {args.repeats} | median CPU (s) | wall vs import torch |")
    print("|---|---|---|---|")
    for name in cases:
        wall = statistics.median(walls[name])
        print(f"| {name} | {wall:.2f} | {statistics.median(cpus[name]):.2f} | {wall / torch_wall:.2f}x |")
    print("\nper-run wall-clock (s): " + "; ".join(f"{n.split('`')[1]} {[round(v, 2) for v in w]}" for n, w in walls.items()))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other jobs share the machine)")
    phases()


if __name__ == "__main__":
    main()
