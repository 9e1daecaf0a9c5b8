"""archlint.worker: limits, the JSON round trip of findings, and what the parent does when a
worker misbehaves. The hostile corpus end to end is in test_hostile.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from archlint import memory, worker
from archlint.config import Settings
from archlint.graph import Span
from archlint.rule import Finding
from conftest import FIXTURES, REPO

HOSTILE = FIXTURES / "hostile"


def test_findings_survive_the_json_round_trip():
    class Opaque:
        pass

    f = Finding(
        code="ARC900", message="m", span=Span("/x.py", 3, 4, 3, 9), severity="error",
        status="predicted", name="model-import-failed", predicted=float("inf"), measured=2.5,
        reason="r", data={"segment": ("a", "b"), "opaque": Opaque()},
    )
    back = Finding.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back.span == f.span
    assert (back.code, back.message, back.status, back.predicted, back.measured, back.reason) == (
        "ARC900", "m", "predicted", float("inf"), 2.5, "r")
    # Tuples come back as lists; what JSON cannot carry is dropped rather than pickled.
    assert back.data == {"segment": ["a", "b"]}


@pytest.fixture(scope="module")
def isolated():
    with worker.Isolated(timeout=60, memory_limit=memory.parse_size("1GiB")) as iso:
        yield iso


def test_isolated_gives_what_in_process_gives(isolated):
    for path in (FIXTURES / "ARC904" / "bad_wrong_flatten_size.py", FIXTURES / "ARC903" / "bad_needs_arguments.py"):
        settings = Settings(verify=False)
        assert isolated.analyse(path, settings) == worker.analyse_in_process(path, settings)


def test_findings_before_a_crash_are_kept(isolated, tmp_path):
    path = tmp_path / "two.py"
    path.write_text(textwrap.dedent('''
        import ctypes
        import torch.nn as nn


        class Gated(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                if x.sum() > 0:  # data-dependent: fx cannot trace it (ARC901)
                    return self.fc(x)
                return x


        class Crasher(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                ctypes.string_at(0)
                return self.fc(x)
    '''))
    report = isolated.analyse(path, Settings(verify=False))
    # Gated was analysed (ARC901) before Crasher killed the worker: its finding is kept.
    assert [(f.code, f.span.line) for f in report.findings] == [("ARC901", 6), ("ARC904", 23)]
    assert "SIGSEGV" in report.findings[1].message and report.findings[1].model == "Crasher"
    assert report.failure and "SIGSEGV" in report.failure  # a cache must not keep this report
    assert report.n_models == 2  # both were run ("0 models" in the summary was wrong)


def test_a_bug_in_archlint_inside_the_worker_is_an_internal_error(isolated):
    # Settings archlint itself cannot use: the engine raises (TypeError or AttributeError)
    # in its own code in the worker, once it selects rules or findings for a traced model.
    path = FIXTURES / "ARC901" / "bad_data_dependent_branch.py"
    with pytest.raises(worker.WorkerError, match="Error"):
        isolated.analyse(path, Settings(select=None, rule_options=None, verify=False))


def test_resident_memory_above_the_limit_stops_the_worker():
    # With a CUDA device the address-space cap is not set (it breaks the driver): polling
    # the resident set is what stops the memory hog, here at import time.
    with worker.Isolated(timeout=60, memory_limit=memory.parse_size("768MiB")) as iso:
        report = iso.analyse(HOSTILE / "import_memory_hog.py", Settings(device="cuda", verify=False))
    (f,) = report.findings
    assert f.code == "ARC900" and "more than archlint's limit of 768 MiB" in f.message, f.message
    assert f.span.line == 6


def test_the_parent_never_imports_torch():
    code = (
        "import sys\nfrom archlint.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n    raise\n"
    )
    target = FIXTURES / "ARC903" / "bad_needs_arguments.py"
    proc = subprocess.run([sys.executable, "-c", code, "check", str(target), "--no-verify"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "ARC903" in proc.stdout


def _session_processes(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def _as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground process has it. A test run started as a background
    job of a non-interactive shell (``pytest &``) has SIGINT ignored, and a child inherits
    that: archlint then rightly ignores the Ctrl-C (these tests failed in such runs only)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly():
    proc = subprocess.Popen(
        [sys.executable, "-m", "archlint", "check", str(HOSTILE / "import_infinite_loop.py"), "--timeout", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        assert "checking" in proc.stderr.readline()  # the worker is being started
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert out == ""
    # The worker and the fork server are gone too.
    deadline = time.monotonic() + 10
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_processes(proc.pid) == []


def test_a_death_during_verification_keeps_the_findings_as_predicted(tmp_path):
    # The worker reported the model's findings as pending verification, then died.
    path = tmp_path / "net.py"
    path.write_text("import torch\n")
    pending = Finding(code="ARC101", message="too nonlinear", span=Span(str(path), 1), status="predicted", predicted=9.0)
    state = worker._State(stage="measure", model="Net", line=1, pending=[pending])
    report = worker._crashed(str(path), Settings(), state, "crashed: killed by SIGSEGV (Segmentation fault)", None)
    f, note = report.findings
    assert (f.code, f.status, f.predicted) == ("ARC101", "predicted", 9.0)
    assert f.reason == "not verified: the measurement crashed: killed by SIGSEGV (Segmentation fault)"
    # ...and the results say that Net was not measured, in every format.
    assert note.code == "ARC905" and note.status is None and "Net was not measured" in note.message


def test_limit_options_are_validated_and_documented():
    from click.testing import CliRunner

    from archlint import cli

    target = str(FIXTURES / "ARC903" / "bad_needs_arguments.py")
    bad = CliRunner().invoke(cli.main, ["check", target, "--memory-limit", "lots"])
    assert bad.exit_code == 2 and "--memory-limit" in bad.stderr and "lots" in bad.stderr
    assert CliRunner().invoke(cli.main, ["check", target, "--timeout", "0"]).exit_code == 2
    help_text = CliRunner().invoke(cli.main, ["check", "--help"]).stdout
    assert "--timeout" in help_text and "--memory-limit" in help_text and "--no-isolation" not in help_text


FAULTS_OF_REUSED_BLOCKS = """
import resource, sys, torch
from archlint import memory, worker
if sys.argv[1] == "tuned":
    worker.keep_freed_memory()
torch.empty(100 << 18).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(100 << 18).fill_(1.0)  # 100 MiB, freed at once
    small = [str(i) for i in range(1000)]  # small allocations in between, as in real work
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_analysing_processes_reuse_large_freed_blocks():
    # Ten 100 MiB tensors, one after the other: glibc's default maps each afresh (a page
    # fault per 4 KiB page, 25600 each); archlint's processes take most from the heap (a
    # small allocation landing in a freed block can make the heap grow once more).
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSED_BLOCKS, mode], capture_output=True, text=True,
                             check=True, cwd=REPO)
        return int(out.stdout)

    default = faults("default")
    assert default > 200000
    assert faults("tuned") < default / 3


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except (OSError, TypeError):
        return False


TOP_OF_THE_HEAP = """
import ctypes, resource
from archlint import memory, worker
worker.keep_freed_memory()
_, hard = resource.getrlimit(resource.RLIMIT_DATA)
resource.setrlimit(resource.RLIMIT_DATA, (8 << 30, hard))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
room = memory.data_room()
block = libc.malloc(400 << 20)  # from the heap's top, nothing allocated after it
ctypes.memset(block, 1, 400 << 20)
libc.free(block)
print(memory.heap_kept(), room - memory.data_room())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(),
                    reason="glibc 2.33 or later (mallopt, mallinfo2)")
def test_the_heaps_kept_top_counts_as_room_under_the_cap():
    # 400 MiB freed at the top of the heap stay there (given back before: more than 256 MiB),
    # and count as room: under RLIMIT_DATA they are the process's, and its later models may
    # plan with them (memory.data_room, measurement_room).
    out = subprocess.run([sys.executable, "-c", TOP_OF_THE_HEAP], capture_output=True, text=True, check=True, cwd=REPO)
    kept, room_lost = map(int, out.stdout.split())
    assert kept >= 400 << 20
    assert room_lost < 16 << 20


def test_fork_server_leaves_the_working_directory_off_sys_path(monkeypatch):
    # The fork server is `python -c`: without PYTHONSAFEPATH its sys.path starts with the
    # working directory, and run from a checkout of archlint it imported the source tree's
    # archlint (no archlint.rules) instead of the installed one. The parent's environment is
    # left as it was.
    from multiprocessing import forkserver

    seen = {}
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.setattr(forkserver, "ensure_running", lambda: seen.update(os.environ))
    worker._start_forkserver()
    assert seen["PYTHONSAFEPATH"] == "1" and seen["OPENBLAS_NUM_THREADS"] == "1"
    assert "PYTHONSAFEPATH" not in os.environ and worker.ADDED_ENVIRONMENT not in os.environ


CTRL_C_WHILE_THE_FORK_SERVER_STARTS = """
import os, signal, time
from multiprocessing import forkserver, resource_tracker
from archlint import memory, worker

def ctrl_c_during_start():  # what forkserver.ensure_running does, and a Ctrl-C
    resource_tracker.ensure_running()
    os.kill(os.getpid(), signal.SIGINT)  # process-directed, as from a terminal
    time.sleep(0.05)

forkserver.ensure_running = ctrl_c_during_start
try:
    worker._start_forkserver()
    time.sleep(2.0)
    print("lost")
except KeyboardInterrupt:
    print("interrupted", signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_the_fork_server_starts_is_not_lost():
    # SIGINT is ignored while the servers start (so they inherit SIG_IGN); a Ctrl-C in that
    # window used to vanish, and archlint went on checking an endless import. Run in a
    # process of its own: like the archlint command, it has one thread (a process-directed
    # signal goes to a thread that does not block it, and pytest's process has two).
    run = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_THE_FORK_SERVER_STARTS], capture_output=True, text=True,
                         timeout=60, preexec_fn=_as_in_a_terminal)
    assert run.stdout.split() == ["interrupted", "False"], run.stderr


def test_model_code_sees_the_users_environment(isolated, tmp_path):
    path = tmp_path / "env_model.py"
    path.write_text(textwrap.dedent("""
        import os
        import signal
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                leaked = [k for k in ("PYTHONSAFEPATH", "ARCHLINT_FORKSERVER_ADDED") if k in os.environ]
                if leaked:
                    raise RuntimeError(f"archlint's fork-server variables leaked: {leaked}")
                if hasattr(signal, "pthread_sigmask") and signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []):
                    raise RuntimeError("SIGINT is still blocked, as it was while the fork server started")
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x)
    """))
    report = isolated.analyse(path, Settings(verify=False))
    assert [f.code for f in report.findings] == []


def test_a_crash_as_a_function_was_entered_points_at_the_line_that_called_it(tmp_path):
    """faulthandler shows a frame that overflowed the stack as it was entered at its def line:
    the line that was running is its caller's (the recursive call)."""
    model = tmp_path / "model.py"
    model.write_text("class Node:\n    @property\n    def again(self):\n        return self.again\n")
    dump = tmp_path / "stack"

    def dumped(*lines):
        frames = "".join(f'  File "{model}", line {n} in again\n' for n in lines)
        dump.write_text("Fatal Python error: Segmentation fault\n\nCurrent thread 0x1 (most recent call first):\n" + frames)
        return worker._stack_line(None, str(dump), str(model))

    assert dumped(4, 4, 4) == 4
    assert dumped(3, 4, 4) == 4  # entered: its def line
    assert dumped(2, 4, 4) == 4  # a decorated function shows its decorator's line
    assert dumped(3) == 3  # nothing else of the file on the stack: the def line is all there is
    assert dumped() is None
