"""Analyse each file in a worker process, so that nothing the model code does can hurt the run.

archlint imports and runs other people's code. Each file is analysed by
``archlint.engine.check_file`` in a child process that:

- has a timeout (``--timeout``, default 120 s) on the time without progress: the child
  reports each stage (import, build, each model's forward pass and measurement), and a stage
  that lasts longer is stopped and reported, so an infinite loop is never waited for, while
  a file with many models is never stopped for its size. A measurement is sized to fit its
  own budget (``--measure-budget``, ``archlint.measure.budget``) and may take that on top;
- has a memory cap (``--memory-limit``, default half the physical memory): a model too
  large for the machine is stopped and reported, never swapped to death;
- has its file descriptor 1 pointed at stderr, so that whatever the model prints, from Python
  or from C, never reaches archlint's stdout (JSON stays valid); results come back as JSON
  over a separate pipe, so the parent never unpickles anything the model made;
- may die in any way (``sys.exit``, ``os._exit``, a segfault, the OOM killer): the parent
  turns the death into a diagnostic at the best known line (ARC900 while importing, ARC903
  while building, ARC904 while running the model) and goes on with the next file.

Children are forked from a ``forkserver`` that has already imported torch and the engine, so
a file costs a fork instead of a torch import (~2 s). Forking after torch has run anything is
unsafe (thread pools, CUDA), but the fork server never runs a tensor op: it only imports, and
OpenBLAS (pulled in by numpy) is kept from starting its thread pool there. The parent itself
never imports torch.

The memory cap is ``RLIMIT_DATA`` in the child (since Linux 4.7 it counts every private
writable mapping, so torch's allocator gets a clean "can't allocate memory" error, which the
engine reports at the allocating line) plus polling of the child's resident set from the
parent, which also covers CUDA builds, where an address-space limit would break the driver.
``RLIMIT_AS`` is not used: allocators and CUDA reserve far more address space than they use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import linecache
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from archlint import device
from archlint import rule as rules_api
from archlint.config import Settings
from archlint.files import read_source
from archlint.graph import Span
from archlint.memory import format_size
from archlint.results import FileResult
from archlint.rule import Finding

DEFAULT_TIMEOUT = 120.0
# How often the parent looks at the child's memory use (seconds).
POLL_INTERVAL = 0.1
# Modules the fork server imports once, so that each child starts with them loaded; the
# verification pass adds archlint.measure.api, the measurement itself (~0.2 s of import a
# --no-verify run should not pay; the package archlint.measure alone imports no torch).
PRELOAD = (
    "torch", "archlint.engine", "archlint.load", "archlint.trace", "archlint.sourcemap",
    "archlint.inputs", "archlint.predict", "archlint.state",
)


class WorkerError(RuntimeError):
    """A bug in archlint itself surfaced in the worker (the CLI exits 2 with its traceback)."""


def _rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (Linux; None elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------------------
# Findings across the process boundary (plain JSON: no pickles from the model's process)


def _send(conn: Any, message: dict[str, Any]) -> None:
    try:
        conn.send_bytes(json.dumps(message).encode())
    except OSError:  # the parent is gone (Ctrl-C): nobody is left to tell
        os.kill(os.getpid(), signal.SIGKILL)


def _die_with_parent() -> None:
    """Kill this child when archlint's process goes away, however it ends: a child forked
    by the fork server is not the parent's own, so nothing else would stop an endless loop."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="archlint-parent-watch", daemon=True).start()


# --------------------------------------------------------------------------------------
# The process that analyses (a child, or archlint's own with --no-isolation)


def prepare_process(workers: int = 1) -> None:
    """Threads and allocator of a process that analyses files, one of ``workers`` running at
    once: archlint's own processes only (``archlint.measure`` leaves the user's process as
    it is)."""
    import gc

    import torch

    from archlint import jobs

    torch.set_num_threads(jobs.torch_threads(workers))
    keep_freed_memory()
    # Everything imported so far (torch: about a million objects) lives until the process
    # ends; frozen, the collector stops walking it, and each full collection during the
    # analysis costs about 1 ms instead of 100 ms.
    gc.freeze()


# glibc serves blocks over its mmap threshold (at most 32 MiB) with fresh mappings and gives
# them back on free, so every such tensor costs page faults and the kernel's zeroing again.
# The verification pass allocates many (a CIFAR ResNet-18's probe tangents are ~100 MB each):
# that was a third of its CPU time. From the heap, freed blocks are reused.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_UP_TO = 1 << 30
# And the heap keeps its top: given back once 256 MiB of it were free (as before), what a
# pass freed was faulted in again by the next pass or measurement: 330,000 page faults in a
# measurement of the suite's MobileNetV2 blocks after one of its kind, a third of its CPU time
# on this project's machine (``python benchmarks/bench_cost.py --part heap``, and the suite).
# An analysing process ends with its file; until then what its heap keeps free at the top is
# counted as its room (memory.heap_kept).
_NEVER = -1


def keep_freed_memory() -> None:
    """Let the heap serve and keep large blocks (glibc; elsewhere nothing happens)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc and musl; absent on macOS and Windows
    except (AttributeError, OSError, TypeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _HEAP_UP_TO)
    mallopt(_M_TRIM_THRESHOLD, _NEVER)


# --------------------------------------------------------------------------------------
# The child


def _child(conn: Any, path: str, settings: Settings, memory_limit: int | None, dump_path: str, log_level: int) -> None:
    # Ctrl-C reaches the whole process group: the parent decides, the child just dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked when the fork server started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # The user's environment, without what the fork server needed (_start_forkserver).
    for key in os.environ.pop(ADDED_ENVIRONMENT, "").split(","):
        os.environ.pop(key, None)
    _die_with_parent()
    # Anything the model writes to stdout (print, or C code writing to fd 1) goes to stderr.
    sys.stdout.flush()
    os.dup2(2, 1)
    # Where the Python stack goes if the process crashes or hangs: the parent reads it to
    # point the diagnostic at the line of the user's file that was running.
    import faulthandler

    dump = open(dump_path, "w")
    faulthandler.enable(file=dump, all_threads=False)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=False)
    real_exit = os._exit

    def exit_with_stack(status: int) -> None:
        # os._exit unwinds nothing, so its line is only known if the stack is written first.
        dump.write(f"{_OS_EXIT}({status})\n")
        dump.flush()
        faulthandler.dump_traceback(file=dump, all_threads=False)
        real_exit(status)

    os._exit = exit_with_stack
    # On a terminal, a line first clears the parent's progress line (archlint.progress).
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    logging.basicConfig(level=log_level, format=clear + "archlint: %(message)s", stream=sys.stderr, force=True)

    from archlint import engine

    prepare_process(settings.workers)
    if memory_limit and not device.may_use_cuda(settings.device):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

    def progress(stage: str, model: str | None = None, span: Span | None = None,
                 findings: list[Finding] = (), pending: list[Finding] = ()) -> None:
        _send(conn, {
            "stage": stage, "model": model, "line": span.line if span else None,
            "findings": [f.to_dict() for f in findings],
            "pending": [f.to_dict() for f in pending],
        })

    try:
        result = engine.check_file(path, settings, progress=progress)
    except Exception:  # a bug in archlint: the CLI reports it as an internal error
        _send(conn, {"internal_error": traceback.format_exc()})
        return
    except BaseException as exc:  # SystemExit and friends raised by the model's code
        from archlint import load

        _send(conn, {"raised": load.describe_exception(exc, path), "line": load.innermost_line_in(exc, path)})
        return
    findings = _mention_memory_limit(result.findings, memory_limit)
    _send(conn, {"done": dataclasses.replace(result, findings=findings).to_dict()})


# The limit a message names is one worker's share of --memory-limit (archlint.jobs).
RAISE_LIMIT = "raise it with --memory-limit, or lower --jobs: the files analysed at once share it"
_ALLOC_FAILED = re.compile(r"can't allocate memory|not enough memory|MemoryError|out of memory", re.IGNORECASE)


def _mention_memory_limit(findings: list[Finding], memory_limit: int | None) -> list[Finding]:
    """An allocation that failed under the cap says so, and how to raise it."""
    if not memory_limit:
        return findings
    hint = f" (archlint's memory limit is {format_size(memory_limit)}; {RAISE_LIMIT})"
    return [dataclasses.replace(f, message=f.message + hint) if _ALLOC_FAILED.search(f.message) else f for f in findings]


# --------------------------------------------------------------------------------------
# The parent


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    # spawn where there is no forkserver (Windows): slower, each child imports torch.
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


@dataclass
class _State:
    """What the parent knows about the child's progress."""

    stage: str = "import"
    model: str | None = None
    line: int | None = None
    findings: list[Finding] = field(default_factory=list)
    pending: list[Finding] = field(default_factory=list)
    # Models the child started to run (their findings may be among the reported ones).
    models: frozenset[str] = frozenset()


class Isolated:
    """Runs ``engine.check_file`` for a file in a child process.

    ``analyse`` may be called from several threads at once (``--jobs``): each call has its own
    child. ``on_stage(path, stage, model)``, when set, hears each stage the child reports
    (``import``, ``build``, ``forward``, ``measure``, ``fix``), from the calling thread.

    Use as a context manager: on exit (also on Ctrl-C) the running children are killed. As
    with any use of multiprocessing's forkserver or spawn, a script that creates one must
    guard its entry point with ``if __name__ == "__main__":`` (the ``archlint`` command does).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, memory_limit: int | None = None, log_level: int = logging.INFO, verify: bool = True):
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.log_level = log_level
        self.on_stage: Callable[[str, str, str | None], None] | None = None
        self._ctx = _context()
        self._procs: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._preload = [*PRELOAD, "archlint.measure.api"] if verify else list(PRELOAD)
        self._started = False

    def __enter__(self) -> "Isolated":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill the running children; no new one starts after this."""
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, set()
        for proc in procs:
            _stop(proc)

    def start(self) -> None:
        """Start the fork server, if not yet done: call it from the main thread (it handles
        Ctrl-C there: ``_start_forkserver``) before analysing from other threads. ``analyse``
        calls it on the first file, not before: a run answered by a cache never imports torch."""
        with self._lock:
            if not self._started and self._ctx.get_start_method() == "forkserver":
                self._ctx.set_forkserver_preload(self._preload)
                _start_forkserver()
            self._started = True

    def analyse(self, path: str | Path, settings: Settings) -> FileResult:
        path = str(Path(path).resolve())  # as check_file names it in its findings
        self.start()
        fd, dump_path = tempfile.mkstemp(prefix="archlint-", suffix=".stack")
        os.close(fd)
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_child, args=(send, path, settings, self.memory_limit, dump_path, self.log_level),
            name=f"archlint {os.path.basename(path)}", daemon=True,
        )
        try:
            with self._lock:  # started and registered at once: close() sees every child
                if self._closed:
                    raise WorkerError("the workers were stopped")
                proc.start()
                self._procs.add(proc)
            send.close()
            return self._watch(proc, receive, path, settings, dump_path)
        finally:
            with self._lock:
                self._procs.discard(proc)
            _stop(proc)
            send.close()
            receive.close()
            with contextlib.suppress(OSError):
                os.unlink(dump_path)

    def _limit(self, state: _State, settings: Settings) -> tuple[float, str]:
        """How long the child may go without progress at its current stage, and how that
        reads in the message. A measurement takes its budget beside the timeout: it is sized
        to end within the budget (archlint.measure.budget), so only a hang outlasts both."""
        if state.stage != "measure" or not settings.verify:
            return self.timeout, ""
        from archlint.measure import budget

        allowed = settings.measure_budget if settings.measure_budget is not None else budget.DEFAULT_CPU
        return self.timeout + allowed, f" (the --timeout of {self.timeout:g} s beyond its measurement budget of {allowed:g} s)"

    def _watch(self, proc: Any, conn: Any, path: str, settings: Settings, dump_path: str) -> FileResult:
        state = _State()
        # The timeout is for a hang: it counts from the child's last progress message, so a
        # file of many models, each of which makes progress, is never stopped for its size.
        last_progress = time.monotonic()
        while True:
            limit, why = self._limit(state, settings)
            remaining = last_progress + limit - time.monotonic()
            if remaining <= 0:
                stack_line = _stack_line(proc, dump_path, path, ask=True)
                proc.kill()
                proc.join()
                cause = f"did not finish within {limit:g} s{why} and was stopped (an endless loop? raise the limit with --timeout)"
                return _crashed(path, settings, state, cause, stack_line)
            ready = multiprocessing.connection.wait([conn, proc.sentinel], timeout=min(POLL_INTERVAL, remaining))
            if conn in ready or conn.poll():
                try:
                    message = json.loads(conn.recv_bytes())
                except EOFError:
                    proc.join()
                    return _crashed(path, settings, state, _death_cause(proc.exitcode, dump_path), _stack_line(proc, dump_path, path))
                if "stage" in message:
                    last_progress = time.monotonic()
                    if self.on_stage is not None:
                        self.on_stage(path, message["stage"], message["model"])
                    state = _State(
                        message["stage"], message["model"], message["line"],
                        [Finding.from_dict(d) for d in message["findings"]],
                        [Finding.from_dict(d) for d in message["pending"]],
                        state.models | ({message["model"]} if message["model"] else set()),
                    )
                elif "done" in message:
                    return FileResult.from_dict(message["done"])
                elif "internal_error" in message:
                    raise WorkerError(f"while checking {path}:\n{message['internal_error']}")
                elif "raised" in message:
                    return _crashed(path, settings, state, f"raised {message['raised']}", message["line"])
                continue
            if proc.sentinel in ready:
                proc.join()
                return _crashed(path, settings, state, _death_cause(proc.exitcode, dump_path), _stack_line(proc, dump_path, path))
            rss = _rss(proc.pid) if self.memory_limit else None
            if rss is not None and rss > self.memory_limit:
                stack_line = _stack_line(proc, dump_path, path, ask=True)
                proc.kill()
                proc.join()
                cause = (f"used {format_size(rss)} of memory, more than archlint's limit of "
                         f"{format_size(self.memory_limit)}, and was stopped ({RAISE_LIMIT})")
                return _crashed(path, settings, state, cause, stack_line)


def _stop(proc: Any) -> None:
    if proc.pid is not None and proc.is_alive():
        proc.kill()
        proc.join(5)


def _start_forkserver() -> None:
    """Start the fork server, which imports torch once for the whole run.

    Its environment differs from the parent's in two variables (ADDED_ENVIRONMENT names
    them, and each child takes them out again, so the model's code sees the user's):
    - OpenBLAS starts a thread pool when numpy is imported; a fork server must stay
      single-threaded, so it is told to use one thread;
    - the fork server is ``python -c ...``, which puts the working directory first on
      sys.path, and Python 3.11 does not apply the parent's sys.path to it: run from a
      checkout of archlint itself, the preloaded modules came from the source tree (which has
      no archlint.rules) instead of the installed package. PYTHONSAFEPATH (3.11+) leaves the
      working directory out.
    A Ctrl-C while it imports torch would print a traceback from it: it is started with
    SIGINT ignored (inherited across exec; Python then installs no KeyboardInterrupt), and
    the parent, which gets the Ctrl-C too, stops everything. The parent must not lose a
    Ctrl-C that comes while it ignores SIGINT: SIGINT is also blocked meanwhile, so it stays
    pending (Linux keeps a blocked signal even when it is ignored) and arrives as
    KeyboardInterrupt once the handler is back. The fork server inherits the mask (harmless:
    it ignores SIGINT); the children it forks unblock SIGINT again (_child).
    """
    from multiprocessing import forkserver, resource_tracker

    added = [k for k in _FORKSERVER_ENVIRONMENT if k not in os.environ]
    os.environ.update({k: _FORKSERVER_ENVIRONMENT[k] for k in added}, **{ADDED_ENVIRONMENT: ",".join(added)})
    main_thread = threading.current_thread() is threading.main_thread()
    # The resource tracker starts first, outside the window: it blocks and unblocks SIGINT
    # around its own start, which would unblock ours (and then a Ctrl-C is ignored, lost).
    resource_tracker.ensure_running()
    blockable = main_thread and hasattr(signal, "pthread_sigmask")
    if blockable:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        forkserver.ensure_running()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old_handler)
        if blockable:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        for key in added + [ADDED_ENVIRONMENT]:
            os.environ.pop(key, None)


_FORKSERVER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
ADDED_ENVIRONMENT = "ARCHLINT_FORKSERVER_ADDED"


_OS_EXIT = "archlint: os._exit"


def _death_cause(exitcode: int | None, dump_path: str) -> str:
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode)
        what = signal.strsignal(sig) or sig.name
        note = " (out of memory? the system may have killed it)" if sig == signal.SIGKILL else ""
        return f"crashed: killed by {sig.name} ({what}){note}"
    if f"{_OS_EXIT}({exitcode})" in _read(dump_path):
        return f"ended the process with os._exit({exitcode})"
    return f"ended the process with exit status {exitcode}"


_FRAME = re.compile(r'^\s*File "(.+)", line (\d+)')


def _stack_line(proc: Any, dump_path: str, path: str, ask: bool = False) -> int | None:
    """The line of ``path`` the child was running, from faulthandler's dump.

    With ``ask``, the child (still alive) is first asked to dump its stack (SIGUSR1).
    """
    if ask and hasattr(signal, "SIGUSR1") and proc.is_alive():
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGUSR1)
        end = time.monotonic() + 1.0
        while time.monotonic() < end and "most recent call first" not in _read(dump_path):
            time.sleep(0.02)
        time.sleep(0.05)  # let the dump finish
    real = os.path.realpath(path)
    lines = [int(match.group(2)) for match in map(_FRAME.match, _read(dump_path).splitlines())  # most recent call first
             if match and os.path.realpath(match.group(1)) == real]
    # A function entered as the stack overflowed has run no line yet: its frame shows its
    # def (or decorator) line, and the line that was running is its caller's. (checkcache:
    # a long-lived parent, the editor server, sees the file change between runs.)
    linecache.checkcache(path)
    running = [n for n in lines if not linecache.getline(path, n).lstrip().startswith(("def ", "async def ", "@"))]
    return (running or lines or [None])[0]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _crashed(path: str, settings: Settings, state: _State, cause: str, stack_line: int | None) -> FileResult:
    """The findings the child reported before it died, plus the death as a diagnostic."""
    line = stack_line or state.line or 1
    span = Span.whole_line(path, line, (read_source(Path(path)) or "").splitlines())
    findings = list(state.findings)
    if state.stage == "fix":
        # The analysis was complete (its findings finalised); only proposing fixes died.
        logging.getLogger("archlint").warning("%s: no fixes: proposing them %s", path, cause)
        return FileResult(path, findings, n_models=len(state.models), failure=cause)
    if state.stage == "measure":
        # The model's findings were made; only their verification died with the process.
        model = state.model or "the model"
        findings += rules_api.settle(rules_api.not_verified(model, state.pending, f"the measurement {cause}", span))
    elif state.stage == "import":
        findings.append(rules_api.meta("ARC900", f"cannot import the file: importing it {cause}", span))
    elif state.stage == "build":
        findings.append(rules_api.meta("ARC903", f"the models were not built: building them {cause}", span))
    else:
        name = state.model or "the model"
        findings.append(rules_api.meta(
            "ARC904", f"{name}: running it on the example inputs {cause}", span, model=state.model,
        ))
    from archlint import suppress

    # The same finishing as a file that completes: selected, suppressions applied.
    kept = suppress.finalise(findings, path, settings, read_source(Path(path)))
    return FileResult(path, kept, n_models=len(state.models), failure=cause)


def analyse_in_process(path: str | Path, settings: Settings) -> FileResult:
    """The same analysis without a child process (library use, debugging, tests that
    monkeypatch the engine). Nothing is isolated: the model's code runs in this process."""
    from archlint import engine

    return engine.check_file(path, settings)


Analyse = Callable[[Path, Settings], FileResult]
