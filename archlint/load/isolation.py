"""Import a model file in isolation, and say where an import failed.

``isolated_import`` imports a file the way pytest's default "prepend" import mode imports
test files: under its dotted package name (never ``__main__``), with its package's base
directory and the project root in front of ``sys.path``. On exit it puts ``sys.path`` and
``sys.modules`` back, so that files linted one after another in one process (two different
``models/resnet.py``, say) never see each other's modules.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import sys
import tokenize
import traceback
from types import ModuleType
from typing import Any, Iterator

import torch

from archlint.files import dir_prefix, environment_roots
from archlint.graph import Span



PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


class LoadError(Exception):
    """The file could not be imported; ``span`` is the line in the linted file to blame."""

    def __init__(self, message: str, span: Span):
        super().__init__(message)
        self.message = message
        self.span = span


class BuildError(Exception):
    """An explicit ``--model``/``build`` entry is malformed or does not give an nn.Module."""




# --------------------------------------------------------------------------------------
# Import in isolation


_ENVIRONMENT_ROOTS = environment_roots()


def module_name_for(path: str) -> tuple[str, str]:
    """The dotted module name of ``path`` and the directory it is importable from.

    Walks up while the directory is a package (has ``__init__.py``), as pytest does:
    ``pkg/sub/model.py`` is ``pkg.sub.model``, importable from the parent of ``pkg``.
    """
    path = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [] if stem == "__init__" else [stem]
    directory = os.path.dirname(path)
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        parts.insert(0, os.path.basename(directory))
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return ".".join(parts), directory


def project_root(path: str) -> str | None:
    """The nearest directory at or above ``path``'s folder that looks like a project root."""
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        if any(os.path.exists(os.path.join(directory, m)) for m in PROJECT_MARKERS):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _locations(module: Any) -> list[str]:
    """Files and folders a module was loaded from (a namespace package has only folders)."""
    found = []
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        found.append(file)
    try:
        found.extend(p for p in getattr(module, "__path__", None) or () if isinstance(p, str))
    except Exception:  # an exotic __path__ that fails to iterate tells us nothing
        pass
    return found


def _under(location: str, prefixes: tuple[str, ...]) -> bool:
    real = os.path.realpath(location)
    return any(os.path.join(real, "").startswith(p) for p in prefixes)


def _local_imports(path: str, dirs: tuple[str, ...]) -> set[str]:
    """Top-level names the file imports absolutely that resolve to a file in ``dirs``.

    If one of those names is already in sys.modules from elsewhere, the import would reuse
    that module instead of the project's own: it has to be moved aside too.
    """
    try:
        tree = ast.parse(_read_source(path))
    except (SyntaxError, ValueError, OSError):
        return set()  # the import itself reports the problem
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {
        n for n in names
        if any(os.path.isdir(os.path.join(d, n)) or os.path.isfile(os.path.join(d, n + ".py")) for d in dirs)
    }


@contextlib.contextmanager
def isolated_import(path: str | os.PathLike, imported: list[str] | None = None) -> Iterator[ModuleType]:
    """Import the file at ``path`` as a module and undo every trace of it on exit.

    Raises ``LoadError`` (with the line of ``path`` to blame) when the import fails.
    Exceptions raised inside the ``with`` block pass through unchanged. On exit, ``imported``
    (if given) receives the files of the project's own modules that were imported meanwhile,
    the file itself included: what the results depend on besides installed packages.
    """
    span_path = str(path)
    abspath = os.path.abspath(path)
    if not os.path.isfile(abspath):
        raise LoadError(f"no such file: {span_path}", Span(span_path, 1))
    name, basedir = module_name_for(abspath)
    root = project_root(abspath)
    dirs = tuple(dict.fromkeys(d for d in (basedir, root) if d))
    tree = tuple(dir_prefix(d) for d in dirs)

    def ours(name: str, module: Any) -> bool:
        # archlint's own modules (imported lazily while linting a file of archlint's own
        # repository) are never the user's.
        if name == "archlint" or name.startswith("archlint."):
            return False
        locations = _locations(module)
        return any(_under(loc, tree) for loc in locations) and not any(
            _under(loc, _ENVIRONMENT_ROOTS) for loc in locations
        )

    aside: dict[str, Any] = {}
    saved_path = list(sys.path)
    saved_bytecode = sys.dont_write_bytecode
    before = set(sys.modules)
    try:
        # A same-named module from elsewhere (another project's `models`) would be reused
        # instead of this project's: park it, with its submodules, for the duration.
        for top in {name.split(".")[0]} | _local_imports(abspath, dirs):
            existing = sys.modules.get(top)
            if existing is not None and not ours(top, existing):
                for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                    aside[key] = sys.modules.pop(key)
        sys.path[:0] = dirs
        # No __pycache__ litter in the user's tree, and no stale .pyc when a file is
        # rewritten within the same second (tests, editors).
        sys.dont_write_bytecode = True
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            raise _load_error(exc, abspath, span_path) from exc
        module_file = getattr(module, "__file__", None)
        if not module_file or os.path.realpath(module_file) != os.path.realpath(abspath):
            raise LoadError(
                f"module name {name!r} resolves to {module_file or 'a namespace package'} "
                f"instead of this file; rename one of them",
                Span(span_path, 1),
            )
        yield module
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = saved_bytecode
        for key in set(sys.modules) - before:
            if ours(key, sys.modules[key]):
                file = getattr(sys.modules[key], "__file__", None)
                if imported is not None and isinstance(file, str):
                    imported.append(os.path.realpath(file))
                del sys.modules[key]
        sys.modules.update(aside)


@contextlib.contextmanager
def preserved_torch_globals() -> Iterator[None]:
    """Put back the process-wide torch settings a model file may change at import, in its
    constructor or in forward (default dtype and device, grad mode, threads, deterministic
    algorithms, anomaly detection, the CPU RNG), so they never leak into archlint's own
    work after the file or into the next file."""
    dtype = torch.get_default_dtype()
    device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
    grad = torch.is_grad_enabled()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    anomaly = torch.is_anomaly_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            # Each setter only when the value changed: use_deterministic_algorithms imports
            # torch's compiler stack (about 2 s) on its first call.
            if torch.get_default_dtype() != dtype:
                torch.set_default_dtype(dtype)
            if device is not None and torch.get_default_device() != device:
                torch.set_default_device(device)
            torch.set_grad_enabled(grad)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != (deterministic, warn_only):
                torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            if torch.is_anomaly_enabled() != anomaly:
                torch.set_anomaly_enabled(anomaly)


def _read_source(path: str) -> str:
    with tokenize.open(path) as f:  # honours a PEP 263 coding line
        return f.read()


def _display(path: str, start: str | None = None) -> str:
    """A short name for a file in a message: from site-packages for installed code
    (``torch/nn/modules/linear.py``), else relative to ``start`` (the cwd) when inside it."""
    real = os.path.realpath(path)
    for root in _ENVIRONMENT_ROOTS:
        if real.startswith(root):
            return real[len(root):]
    rel = os.path.relpath(path, start)
    return path if rel.startswith("..") else rel


def innermost_line_in(exc: BaseException, abspath: str) -> int | None:
    """The line of the innermost traceback frame that runs code of ``abspath``."""
    real = os.path.realpath(abspath)
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if f.lineno and os.path.realpath(f.filename) == real]
    return lines[-1] if lines else None


def _failure_site(exc: BaseException) -> tuple[str, int] | None:
    """Where the exception really happened: the offending file for a SyntaxError, else the
    deepest traceback frame that is a real file (not importlib's frozen bootstrap)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno or 1
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    return (frames[-1].filename, frames[-1].lineno or 1) if frames else None


def describe_exception(exc: BaseException, abspath: str) -> str:
    """``Type: text``, plus the file and line it came from when that is not ``abspath``."""
    if isinstance(exc, SystemExit):
        text = f"SystemExit: the code called sys.exit({exc.code!r})"
    elif isinstance(exc, SyntaxError):
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    site_ = _failure_site(exc)
    if site_ and os.path.realpath(site_[0]) != os.path.realpath(abspath):
        text += f" (in {_display(site_[0])}:{site_[1]})"
    return text


def _load_error(exc: BaseException, abspath: str, span_path: str) -> LoadError:
    try:
        lines = _read_source(abspath).splitlines()
    except (OSError, SyntaxError, ValueError):
        lines = []
    if isinstance(exc, SyntaxError) and exc.filename and os.path.realpath(exc.filename) == os.path.realpath(abspath):
        line = exc.lineno or 1
        col = max((exc.offset or 1) - 1, 0)
        end_col = exc.end_offset - 1 if exc.end_lineno == line and exc.end_offset and exc.end_offset - 1 > col else None
        return LoadError(f"{type(exc).__name__}: {exc.msg}", Span(span_path, line, col, line, end_col))
    line = innermost_line_in(exc, abspath) or 1
    prefix = "cannot import the file: "
    return LoadError(prefix + describe_exception(exc, abspath), Span.whole_line(span_path, line, lines))


