"""Which files to lint. Imports nothing heavy: a run over files that never mention torch
must not pay for importing it."""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import site
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

# A file that never mentions torch or nn.Module cannot define a model.
_MENTIONS_TORCH = re.compile(r"\btorch\b|\bnn\.Module\b")
# Directories never worth walking into (virtual environments, caches, build output).
_SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "site-packages", ".archlint_cache"}


def dir_prefix(path: str) -> str:
    """``path`` resolved, with a trailing separator: a prefix that matches only what is inside."""
    return os.path.join(os.path.realpath(path), "")


@functools.lru_cache(maxsize=None)
def environment_roots() -> tuple[str, ...]:
    """Where installed code lives (the standard library, site-packages, distribution and user
    site directories), longest first: never the user's code, never theirs to change.

    Import isolation never deletes modules from there (a virtualenv inside the project root
    is common, and deleting torch's lazily imported submodules would give torch two copies of
    its own classes), and a finding never points at a line there.
    """
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    # Distribution pythons (Debian's dist-packages) keep packages outside sysconfig's paths.
    roots.update(getattr(site, "getsitepackages", lambda: [])())
    roots.add(site.getusersitepackages())
    return tuple(sorted((dir_prefix(r) for r in roots), key=len, reverse=True))


def mentions_torch(source: str) -> bool:
    return bool(_MENTIONS_TORCH.search(source))


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").exists()


def iter_python_files(paths: list[str]) -> Iterator[Path]:
    """Files named on the command line as given; directories walked for ``*.py``, sorted."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(
                    d for d in dirs
                    if not d.startswith(".") and d not in _SKIP_DIRS and not _is_venv(Path(root) / d)
                )
                for name in sorted(files):
                    if name.endswith(".py"):
                        yield Path(root) / name
        else:
            yield path


def read_source(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def is_excluded(path: Path, patterns: Iterable[str], base: Path) -> bool:
    """Whether ``path`` matches one of the ``exclude`` glob patterns, as ruff matches them:
    a pattern without ``/`` (``generated``, ``*_pb2.py``) matches the name of the file or of
    any folder above it up to ``base``; a pattern with ``/`` (``legacy/*.py``) matches the
    path relative to ``base`` (the folder of the config that gave it, or the current
    directory for the command line)."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    ancestry = []
    for p in [path, *path.parents]:
        if p == base:
            break
        ancestry.append(p)
    for pattern in patterns:
        pattern = pattern.strip().rstrip("/")
        if "/" in pattern:
            full = os.path.normpath(os.path.join(str(base), pattern))
            if any(fnmatch.fnmatchcase(str(p), full) for p in ancestry):
                return True
        elif any(fnmatch.fnmatchcase(p.name, pattern) for p in ancestry):
            return True
    return False
