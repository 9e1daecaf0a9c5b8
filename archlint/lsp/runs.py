"""Runs of archlint on a document: one at a time per document, the newest wins.

A run is ``python -m archlint check FILE --output-format json`` in a child process (its own
session, so that killing it also kills the fork server and the worker under it), with the
interpreter the settings name. It checks the saved file: the model is imported from disk.

Phases of a run: the verified result from the cache if it is there (published at once);
otherwise the static pass (``--no-verify``) first, then the verified pass, which waits for
one of ``MAX_VERIFIED`` slots shared by the whole workspace (a bulk edit must not start fifty
model imports). Each document has a generation counter: a new run cancels the previous one
(its child is killed) and anything a superseded run still produces is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger("archlint.lsp")

MAX_VERIFIED = 2
# The editor waits for the user's model: shorter than the command line's 120 s.
DEFAULT_TIMEOUT = 60.0
DEBOUNCE = 0.5
# A run whose archlint child takes longer than this is killed. The child stops hangs itself
# (its --timeout counts from each stage of the analysis, so a file of many models may take
# longer than it, each model's measurement within its time budget); this only guards
# against a stuck interpreter.
STUCK_AFTER = 1800.0


@dataclass
class Config:
    """The server's settings (``initializationOptions`` and the ``archlint`` section of
    ``workspace/configuration``). Everything about the analysis itself (rule selection,
    inputs, models) stays in the project's ``[tool.archlint]``, found per file."""

    run: str = "onSave"  # "onSave" | "onType"
    verify: bool = True
    # Verified runs also propose and verify fixes (--show-fixes) for the code actions: a file
    # with a fixable finding then costs a check and a measurement of an edited copy more.
    fixes: bool = True
    device: str | None = None  # None: the config file's or archlint's default
    timeout: float = DEFAULT_TIMEOUT
    python: str | None = None  # None: the interpreter running the server

    @classmethod
    def merged(cls, *layers: Any) -> tuple["Config", list[str]]:
        """Later layers override earlier ones; a bad value is skipped and explained."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        names = {f.name: f for f in fields(cls)}
        for layer in layers:
            if not isinstance(layer, dict):
                continue
            if isinstance(layer.get("archlint"), dict):  # {"archlint": {...}} or flat
                layer = layer["archlint"]
            for key, value in layer.items():
                if key not in names or value is None:
                    continue
                problem = _check(key, value)
                if problem:
                    problems.append(f"setting archlint.{key}: {problem}; ignored")
                else:
                    values[key] = float(value) if key == "timeout" else value
        return cls(**values), problems


def _check(key: str, value: Any) -> str | None:
    if key == "run" and value not in ("onSave", "onType"):
        return f"{value!r} is not onSave or onType"
    if key in ("verify", "fixes") and not isinstance(value, bool):
        return f"{value!r} is not true or false"
    if key == "timeout" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        return f"{value!r} is not a positive number of seconds"
    if key in ("device", "python") and not isinstance(value, str):
        return f"{value!r} is not a string"
    return None


@dataclass
class Outcome:
    """What one pass produced: findings (JSON dicts of the command line), or why none."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def command(config: Config, path: str, verify: bool) -> list[str]:
    cmd = [config.python or sys.executable, "-m", "archlint", "check", path, "--output-format", "json",
           "--quiet", "--force-exclude", "--timeout", f"{config.timeout:g}"]
    if not verify:
        cmd.append("--no-verify")
    elif config.fixes:  # unverified fixes are only suggestions: never asked for statically
        cmd.append("--show-fixes")
    if config.device:
        cmd += ["--device", config.device]
    return cmd


async def check(config: Config, path: str, cwd: str, verify: bool) -> Outcome:
    """One pass over the saved file. Cancelling the task kills the child's whole session
    (archlint, its fork server and its worker)."""
    cmd = command(config, path, verify)
    log.info("running %s", " ".join(cmd))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        return Outcome(error=f"cannot start {cmd[0]}: {exc} (check the archlint.python setting)")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), max(STUCK_AFTER, config.timeout))
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
        return Outcome(error=f"archlint did not answer within {max(STUCK_AFTER, config.timeout):g} s and was stopped")
    except BaseException:  # cancelled (superseded, closed)
        _kill(proc)
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    finally:
        _kill(proc)  # the fork server may outlive archlint's own process
    stderr = err.decode(errors="replace").strip()
    if stderr:
        log.info("%s", stderr)
    if proc.returncode not in (0, 1):
        tail = stderr.splitlines()[-3:] if stderr else [f"exit status {proc.returncode}"]
        return Outcome(error="archlint could not check this file: " + " ".join(tail))
    try:
        return Outcome(json.loads(out))
    except ValueError:
        return Outcome(error=f"archlint gave no JSON (is archlint installed for {cmd[0]}?): {stderr[-300:]}")


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def warm_up() -> None:
    """Import what ``cached`` needs and hash archlint's own code once, before the first file
    is opened (about half a second the first lookup would otherwise add)."""
    from archlint import cache, cli  # noqa: F401
    from archlint.rule import registry

    registry()
    cache._environment()


def cached(config: Config, path: str, cwd: str, verify: bool = True) -> list[dict[str, Any]] | None:
    """The result (verified, or static with ``verify=False``) from archlint's cache, read here without starting a child: only
    when the child would run this same interpreter (the cache key holds the Python and torch
    versions) and would use the same settings (those the command line builds)."""
    if config.python and os.path.realpath(config.python) != os.path.realpath(sys.executable):
        return None
    if os.environ.get("ARCHLINT_NO_CACHE"):
        return None
    from archlint import cli
    from archlint.cache import Cache
    from archlint.config import UsageError
    from archlint.files import mentions_torch, read_source
    from archlint.output import json_format

    source = read_source(Path(path))
    if source is None or not mentions_torch(source):
        return None
    try:
        options = cli._cli_options(None, None, None, None, None, None, None, not verify, config.device, None, None, False)
        settings = cli._file_settings([Path(path)], options)
    except (UsageError, ValueError, OSError):
        return None  # a bad or unreadable config: the run reports it
    for file_settings in settings.values():
        file_settings.fixes = verify and config.fixes  # part of the entry's key, as ``command`` asks
    store = Cache(settings, os.environ.get("ARCHLINT_CACHE_DIR"))
    store.cwd = cwd  # as the child, which runs in ``cwd``, keys its entries
    outcome = store.get(path)
    if outcome is None:
        return None
    return [] if outcome.skipped else [json_format.finding_dict(f) for f in outcome.findings]


Publish = Callable[[str, int | None, str, Outcome], None]


@dataclass
class _Doc:
    generation: int = 0
    task: asyncio.Task | None = None
    version: int | None = None


class Scheduler:
    """Runs per document URI. ``publish(uri, version, phase, outcome)`` is called only for the
    newest run of a document; ``progress(uri, path)`` is an async context manager factory
    wrapped around the verified pass (the server's work-done progress)."""

    def __init__(self, publish: Publish, progress: Callable[[str, str, Callable[[], None]], Any]):
        self.publish = publish
        self.progress = progress
        self.docs: dict[str, _Doc] = {}
        self.verified_slots = asyncio.Semaphore(MAX_VERIFIED)

    def claim(self, uri: str, version: int | None) -> int:
        """Supersede the document's current run, at once (before the new run's settings
        are known): the newest request wins in the order requests arrived."""
        doc = self.docs.setdefault(uri, _Doc())
        self._cancel(doc)
        doc.generation += 1
        doc.version = version
        return doc.generation

    def start(self, uri: str, generation: int, path: str, cwd: str, config: Config, *, static: bool = True, verify: bool | None = None) -> asyncio.Task | None:
        """Start the run ``claim`` returned ``generation`` for, unless a newer one came."""
        doc = self.docs.get(uri)
        if doc is None or doc.generation != generation:
            return None
        verify = config.verify if verify is None else verify
        doc.task = asyncio.ensure_future(self._run(uri, doc, generation, path, cwd, config, static, verify))
        return doc.task

    def stop(self, uri: str) -> None:
        doc = self.docs.pop(uri, None)
        if doc is not None:
            doc.generation += 1
            self._cancel(doc)

    def _cancel(self, doc: _Doc) -> None:
        if doc.task is not None and not doc.task.done():
            doc.task.cancel()

    async def _run(self, uri: str, doc: _Doc, generation: int, path: str, cwd: str, config: Config, static: bool, verify: bool) -> None:
        def current() -> bool:
            return self.docs.get(uri) is doc and doc.generation == generation

        # The static pass starts at once, beside the cache lookup (which hashes files): a
        # hit stops it, a miss has not waited for the lookup.
        static_run = asyncio.ensure_future(check(config, path, cwd, verify=False)) if static or not verify else None
        try:
            hit = await asyncio.get_running_loop().run_in_executor(None, cached, config, path, cwd, verify)
            if hit is not None and current():
                self.publish(uri, doc.version, "verified" if verify else "static", Outcome(hit))
                return
            if static_run is not None:
                outcome = await static_run
                if not current():
                    return
                self.publish(uri, doc.version, "static", outcome)
                if outcome.error or any(f["code"] == "ARC900" for f in outcome.findings):
                    return  # nothing a verified pass could add
            if not verify:
                return
            async with self.verified_slots:
                if not current():
                    return
                task = asyncio.current_task()
                async with self.progress(uri, path, task.cancel if task else (lambda: None)):
                    outcome = await check(config, path, cwd, verify=True)
                if current():
                    self.publish(uri, doc.version, "verified", outcome)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not take the server down with it
            log.exception("archlint run of %s failed", path)
        finally:
            if static_run is not None and not static_run.done():
                static_run.cancel()  # kills its child
