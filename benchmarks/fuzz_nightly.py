"""The fuzz test at nightly scale: many more random architectures, new ones every night.

    python benchmarks/fuzz_nightly.py [--examples 2000] [--verify-examples 200] [--seed N]

Runs tests/test_fuzz.py with ARCHLINT_FUZZ_EXAMPLES / ARCHLINT_FUZZ_VERIFY_EXAMPLES raised
and hypothesis's derandomisation off, from a seed it prints (random unless given): rerun
with the same --seed to replay a failure. Prints examples per second and exits with
pytest's status. Not a timed test: CI runs the 100-example default.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--verify-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    env = {
        **os.environ,
        "ARCHLINT_FUZZ_EXAMPLES": str(args.examples),
        "ARCHLINT_FUZZ_VERIFY_EXAMPLES": str(args.verify_examples),
        "ARCHLINT_FUZZ_RANDOM": "1",
    }
    print(f"fuzz_nightly: seed {seed}, {args.examples} static + {args.verify_examples} verified examples", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py",
         f"--hypothesis-seed={seed}", "--hypothesis-show-statistics"],
        cwd=REPO, env=env,
    )
    elapsed = time.perf_counter() - start
    total = args.examples + args.verify_examples
    print(f"fuzz_nightly: {total} examples in {elapsed:.0f}s ({total / elapsed:.1f}/s), seed {seed}, exit {proc.returncode}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
