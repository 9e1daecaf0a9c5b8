"""Run a command and wait for every process it started, so that ``/usr/bin/time`` counts
their CPU time too (Linux).

``archlint check`` analyses files in children of a multiprocessing fork server, which the
CLI never waits for: it ends when the CLI does, orphaned. ``/usr/bin/time`` only counts the
processes it (transitively) waited for, so it reported a few tenths of a second of CPU for a
run whose workers used minutes. Run as a child subreaper, this process inherits the
orphans and waits for them: ``/usr/bin/time -v python benchmarks/reap.py archlint check ...``.

Exits with the command's status.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit("usage: python benchmarks/reap.py COMMAND [ARGS...]")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    status = subprocess.call(argv)
    while True:  # the orphans it left (the fork server, the resource tracker)
        try:
            os.wait()
        except ChildProcessError:
            return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
