"""The result cache: ``.archlint_cache/`` next to the nearest config (else in the current
directory), one JSON entry per checked file.

Checking a file imports torch, imports the file, builds and traces its models and sometimes
measures them; reading an entry costs a few file hashes. An entry is used only when all of
these are unchanged (content hashes, not mtimes, as the conventions note recommends):

- the bytes of the file and of every module of the project it imported (fx tracing runs
  their code; ``load.isolated_import`` reports which they were);
- the archlint version and the bytes of archlint's own code and rules, the torch version
  and the Python version;
- the resolved settings (``Settings`` as a whole: selection, verification, device, batch
  size, seed, inputs, model entries of this file, rule options...; not ``workers``, how many
  files the run analysed at once) and the current directory (messages name files relative
  to it).

Import failures (ARC900) are never stored: creating or installing the missing module fixes
them without touching any file the entry could know about.

This module imports neither torch nor the engine: a run where every file hits the cache
never imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from archlint import __version__
from archlint.config import Settings, find_config
from archlint.results import FileResult

log = logging.getLogger("archlint")

CACHE_DIR_NAME = ".archlint_cache"
# Bump when the layout of an entry changes.
FORMAT = 1
# https://bford.info/cachedir/: backup and archiving tools skip a folder holding this tag.
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by archlint.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
GITIGNORE = "# Automatically created by archlint.\n*\n"


def _sha256_file(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _own_code_hash() -> str:
    """The bytes of archlint's modules and rules: a rule edited in a development checkout
    must not be answered from entries its old version wrote."""
    import archlint
    import archlint.rules

    digest = hashlib.sha256()
    for folder in [*archlint.__path__, *archlint.rules.__path__]:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    file = os.path.join(root, name)
                    digest.update(os.path.relpath(file, folder).encode() + b"\0")
                    digest.update((_sha256_file(file) or "").encode() + b"\0")
    return digest.hexdigest()


def _torch_version() -> str:
    """torch's version file, read without importing torch (which takes seconds) or
    importlib.metadata (tens of milliseconds)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "absent"
    try:
        return Path(spec.origin).with_name("version.py").read_text(encoding="utf-8")
    except OSError:
        return f"unknown ({spec.origin})"


_ENVIRONMENT: str | None = None


def _environment() -> str:
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        _ENVIRONMENT = json.dumps([__version__, _own_code_hash(), _torch_version(), sys.version, sys.platform])
    return _ENVIRONMENT


def _settings_for(settings: Settings, path: str) -> Any:
    """The settings as plain data, with only this file's [[tool.archlint.models]] entries
    (editing another file's entry must not invalidate this one)."""
    data = dataclasses.asdict(settings)
    # How many files ran at once (--jobs) does not make a file's result: switching it keeps
    # the cache.
    data.pop("workers", None)
    if isinstance(data.get("models"), (list, tuple)):
        data["models"] = [m for m in data["models"] if not isinstance(m, dict) or m.get("path") == path]
    return data


class Cache:
    """Entries for the files of one run.

    ``cache_dir`` overrides the per-file location (``--cache-dir``). A cache that cannot be
    written (a read-only checkout) is reported once and then left alone: linting goes on.
    """

    def __init__(self, settings: Settings | dict[Path, Settings], cache_dir: str | os.PathLike | None = None):
        # One Settings for every file, or each file's own (from its nearest config).
        self.settings = settings
        self._resolved: dict[Path, Settings] | None = None
        self.cache_dir = Path(cache_dir).resolve() if cache_dir is not None else None
        self.cwd = os.getcwd()
        self._writable = True

    # Where an entry lives

    def dir_for(self, path: Path) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        found = find_config(path)
        return (found[0].parent if found else Path(self.cwd)) / CACHE_DIR_NAME

    def _entry_path(self, path: str) -> Path:
        # One entry per checked file: a new result for the file replaces the old one.
        name = hashlib.sha256(path.encode()).hexdigest()[:32]
        return self.dir_for(Path(path)) / "entries" / f"{name}.json"

    def _key(self, path: str, source_hash: str) -> str:
        payload = json.dumps(
            [FORMAT, _environment(), path, source_hash, self.cwd, _settings_for(self._settings_of(path), path)],
            sort_keys=True,
            default=repr,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _settings_of(self, path: str) -> Settings:
        if isinstance(self.settings, dict):
            if self._resolved is None:
                # Keyed by the paths as given (possibly relative); entries use resolved paths.
                self._resolved = {Path(p).resolve(): s for p, s in self.settings.items()}
            return self._resolved[Path(path).resolve()]
        return self.settings

    # Reading and writing

    def get(self, path: str | os.PathLike) -> FileResult | None:
        """The stored outcome for ``path``, or None when there is none that is still valid.
        A corrupt entry counts as none (the next ``put`` rewrites it)."""
        path = str(Path(path).resolve())
        source_hash = _sha256_file(path)
        if source_hash is None:
            return None
        entry_path = self._entry_path(path)
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.debug("ignoring unreadable cache entry %s: %s", entry_path, exc)
            return None
        try:
            if entry["key"] != self._key(path, source_hash):
                return None
            if any(_sha256_file(dep) != digest for dep, digest in entry["deps"].items()):
                return None
            return FileResult.from_dict(entry, from_cache=True)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.debug("ignoring corrupt cache entry %s: %s", entry_path, exc)
            return None

    def put(self, path: str | os.PathLike, result: FileResult) -> None:
        """Store ``result`` for ``path``, keyed on the file and the local modules it
        imported. Import failures are not stored (see the module docstring)."""
        if not self._writable or any(f.code == "ARC900" for f in result.findings):
            return
        local_modules = result.local_modules
        path = str(Path(path).resolve())
        source_hash = _sha256_file(path)
        deps = {dep: _sha256_file(dep) for dep in sorted(set(local_modules)) if dep != os.path.realpath(path)}
        if source_hash is None or None in deps.values():
            return  # a file vanished while it was checked: nothing stable to key on
        try:
            text = json.dumps({"key": self._key(path, source_hash), "deps": deps, **result.to_dict(), "path": path}, indent=1)
        except (TypeError, ValueError) as exc:
            # A rule put something into Finding.data that JSON cannot hold: run it again
            # next time rather than store a lossy copy.
            log.debug("not caching %s: %s", path, exc)
            return
        entry_path = self._entry_path(path)
        try:
            _prepare(entry_path.parent.parent)
            entry_path.parent.mkdir(exist_ok=True)
            _atomic_write(entry_path, text)
        except OSError as exc:
            self._writable = False
            log.warning("cannot write the cache in %s (%s); going on without it", entry_path.parent.parent, exc)


def _prepare(cache_dir: Path) -> None:
    """Create the cache folder with its .gitignore and CACHEDIR.TAG (as ruff and mypy do)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((".gitignore", GITIGNORE), ("CACHEDIR.TAG", CACHEDIR_TAG)):
        if not (cache_dir / name).is_file():
            _atomic_write(cache_dir / name, text)


def _atomic_write(target: Path, text: str) -> None:
    """Write a temporary file beside ``target`` and rename it over: a reader (another
    archlint run) sees the old entry or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------
# archlint clean


def is_cache_dir(path: Path) -> bool:
    """Whether ``path`` is a cache folder archlint made (only those are ever deleted, so a
    mistyped --cache-dir cannot remove a project)."""
    try:
        tag = (path / "CACHEDIR.TAG").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return tag.startswith("Signature: 8a477f597d28d172789f06886806bc55") and "archlint" in tag


def _caches_below(root: Path) -> Iterator[Path]:
    from archlint.files import _SKIP_DIRS, _is_venv

    for folder, dirs, _files in os.walk(root):
        if CACHE_DIR_NAME in dirs:
            yield Path(folder) / CACHE_DIR_NAME
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in _SKIP_DIRS and not _is_venv(Path(folder) / d)
        )


def cache_dirs(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The cache folders of the current project: ``cache_dir`` if given, else the one next to
    the nearest config, in the current directory and in folders below it."""
    if cache_dir is not None:
        candidates = [Path(cache_dir).resolve()]
    else:
        cwd = Path.cwd()
        found = find_config(cwd)
        candidates = [found[0].parent / CACHE_DIR_NAME] if found else []
        candidates += list(_caches_below(cwd))
    return [d for d in dict.fromkeys(candidates) if d.is_dir() and is_cache_dir(d)]


def clean(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the project's cache folders; returns what was removed."""
    removed = []
    for folder in cache_dirs(cache_dir):
        shutil.rmtree(folder)
        removed.append(folder)
    return removed
