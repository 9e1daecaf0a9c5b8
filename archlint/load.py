"""Import a model file in isolation and find out what in it to lint.

``isolated_import`` imports a file the way pytest's default "prepend" import mode imports
test files: under its dotted package name (never ``__main__``), with its package's base
directory and the project root in front of ``sys.path``. On exit it puts ``sys.path`` and
``sys.modules`` back, so that files linted one after another in one process (two different
``models/resnet.py``, say) never see each other's modules.

``discover`` lists the models of the file with zero configuration: ``nn.Module`` classes
whose constructor needs no arguments, and factory functions recognised *statically* (a
``main()`` that trains must never be called just because it takes no arguments).
``build_all`` builds them and keeps only the top-level models.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
import sys
import tokenize
import traceback
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

import torch
from torch import nn

from archlint import metainit
from archlint.files import dir_prefix, environment_roots
from archlint.graph import Span
from archlint.memory import default_memory_budget, format_size

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


def _innermost_line_in(exc: BaseException, abspath: str) -> int | None:
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
    line = _innermost_line_in(exc, abspath) or 1
    prefix = "cannot import the file: "
    return LoadError(prefix + describe_exception(exc, abspath), Span.whole_line(span_path, line, lines))


# --------------------------------------------------------------------------------------
# What to lint


@dataclass
class ModelEntry:
    """One model of the file: how to build it and where it is defined."""

    name: str
    kind: str  # "class" | "factory" | "explicit"
    # The class/def name on its class/def line (explicit: the built model's class, else line 1).
    span: Span
    builder: Callable[[], Any] = field(repr=False, compare=False)
    inputs: str | None = None
    # The class or factory function it was discovered from (None for explicit entries).
    target: Any = field(default=None, repr=False, compare=False)
    # Built by a call the file itself shows (archlint.source_builds): that call and where it
    # is ("VGG('VGG11') (from test() at line 141)"), and the per-sample shape ("3,32,32") of
    # the input made next to it, if any.
    built_as: str | None = None
    input_shape: str | None = None

    def build(self) -> nn.Module:
        model = self.builder()
        if not isinstance(model, nn.Module):
            raise BuildError(f"{self.name} gave a {type(model).__name__}, not an nn.Module")
        return model


@dataclass
class ClassNeedingArgs:
    """A model class of the file whose constructor has required parameters, or a function
    of the file with required parameters that returns a model (``cls`` None)."""

    cls: type | None
    span: Span
    missing: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or (self.cls.__name__ if self.cls is not None else "")


@dataclass
class Discovery:
    entries: list[ModelEntry]
    # Candidates for ARC903, already without the classes that are only components of other
    # classes of the file; ``build_all`` drops the ones a built model contains.
    needs_args: list[ClassNeedingArgs] = field(default_factory=list)
    module: ModuleType | None = None
    path: str | None = None
    # Factory name -> the names of the factories it calls: a factory that another built
    # factory calls builds a part, not a top-level model.
    factory_calls: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class BuiltModel:
    entry: ModelEntry
    model: nn.Module
    # Bytes of the model's parameters and buffers, from its meta-device build (None when
    # the constructor does not run on the meta device).
    size: int | None = None
    # Set when the model exists on the meta device only, because a real build would not fit
    # the memory budget: why. The static pass runs on it; the verification pass cannot.
    meta_reason: str | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def span(self) -> Span:
        return self.entry.span


@dataclass
class NotBuilt:
    """A top-level model that could not be built (ARC903)."""

    name: str
    span: Span
    missing: list[str]
    message: str
    # "Type: text" when the constructor or factory raised; None when it just needs arguments.
    error: str | None = None
    # The line of the linted file where it raised, if any.
    error_line: int | None = None


class _SourceIndex:
    """The file's top-level classes and functions by name, with the spans of their names.

    Built on ``sourcemap.index_for``: the file's one parse, shared with the source map.
    """

    def __init__(self, path: str):
        from archlint import sourcemap

        self.path = path
        index = sourcemap.index_for(path)
        if index is None or index.tree is None:
            # Python imported it, so the file changed since, or cannot be read any more.
            error = index.syntax_error if index is not None else None
            message = f"cannot parse the file: {error.msg}" if error is not None else "cannot read the file"
            raise LoadError(message, Span(path, (error.lineno if error is not None else None) or 1))
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        # The span of each class's / function's name, by name.
        self.spans: dict[str, Span] = {}
        for node in _module_level_defs(index.tree):
            # A later redefinition wins, as at run time.
            (self.classes if isinstance(node, ast.ClassDef) else self.functions)[node.name] = node
            self.spans[node.name] = index.name_span(node)


def _module_level_defs(module: ast.Module) -> Iterator[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """Classes and functions defined at module level, also inside if/try/with blocks."""
    blocks = (ast.If, ast.Try, ast.With, ast.AsyncWith, *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))
    stack: list[ast.stmt] = list(reversed(module.body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, blocks):
            children = list(node.body)
            for handler in getattr(node, "handlers", ()):
                children += handler.body
            children += getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            stack.extend(reversed(children))


def _required_params(func: Callable[..., Any], skip_first: bool = False) -> list[str] | None:
    """Names of the parameters that have no default; None when the signature is unknowable."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    if skip_first:
        params = params[1:]
    return [
        p.name for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _is_model_class(cls: Any) -> bool:
    # A subclass that does not define forward (a mixin, a base class) is not a model.
    return (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.forward is not nn.Module.forward
        and not inspect.isabstract(cls)
    )


def discover(module: ModuleType, path: str) -> Discovery:
    """The models defined in ``module`` (imported from ``path``), without running any code
    of the file except attribute look-ups."""
    index = _SourceIndex(path)
    entries: list[ModelEntry] = []
    needs_args: list[ClassNeedingArgs] = []
    components = _component_classes(index, module)
    for name, node in index.classes.items():
        cls = vars(module).get(name)
        if not _is_model_class(cls) or cls.__module__ != module.__name__ or cls.__qualname__ != name:
            continue
        span = index.spans[name]
        missing = _required_params(cls.__init__, skip_first=True)
        if missing is None:
            continue
        if name in components:
            continue
        if not missing:
            entries.append(ModelEntry(name, "class", span, builder=cls, target=cls))
        else:
            needs_args.append(ClassNeedingArgs(cls, span, missing))
    factory_calls = _factories(index, module)
    for name in factory_calls:
        func = vars(module)[name]
        entries.append(ModelEntry(name, "factory", index.spans[name], builder=func, target=func))
    for name, missing in _factories_needing_args(index, module).items():
        needs_args.append(ClassNeedingArgs(None, index.spans[name], missing, name=name))
        # Its blocks are configured with it, not on their own.
        needs_args = [c for c in needs_args if c.cls is None or c.name not in _names_in(index.functions[name])]
    entries.sort(key=lambda e: (e.span.line, e.span.col))
    # Builds the file shows for what needs arguments (test(), __main__, defaults...).
    from archlint import source_builds

    entries, needs_args = source_builds.apply(index, module, path, entries, needs_args, factory_calls)
    return Discovery(entries, needs_args, module, path, factory_calls)


def _names_in(node: ast.AST) -> set[str]:
    """The names a definition's body refers to (``Block``, ``blocks.Block``, ``self.Block``)."""
    names = set()
    for sub in (n for stmt in getattr(node, "body", []) for n in ast.walk(stmt)):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
    return names


def _factories_needing_args(index: _SourceIndex, module: ModuleType) -> dict[str, list[str]]:
    """Top-level functions with required parameters that end in ``return Model(...)`` (a
    model class not of this file: MLP-Mixer's ``def MLPMixer(*, dim, depth, ...): return
    nn.Sequential(...)``)
    and that nothing else of the file calls (a ``conv3x3(in_planes, out_planes)`` helper is
    part of the blocks that use it): models to configure, with their missing arguments.
    They are not called."""
    used = set().union(*(_names_in(n) for n in (*index.classes.values(), *index.functions.values())))
    out: dict[str, list[str]] = {}
    for name, node in index.functions.items():
        func = vars(module).get(name)
        if name in used or not inspect.isfunction(func) or func.__module__ != module.__name__ or func.__qualname__ != name:
            continue
        last = node.body[-1] if node.body else None
        if not (isinstance(last, ast.Return) and isinstance(last.value, ast.Call)):
            continue
        parts = _dotted(last.value.func)
        target: Any = vars(module).get(parts[0]) if parts else None
        for attr in (parts or [])[1:]:
            target = getattr(target, attr, None)
        missing = _required_params(func)
        # A wrapper of a class of this file adds nothing to that class's own ARC903.
        if _is_model_class(target) and target.__module__ != module.__name__ and missing:
            out[name] = missing
    return out


def _component_classes(index: _SourceIndex, module: ModuleType) -> set[str]:
    """Names of this file's classes that another model class of the file refers to in its
    body, reached from a model class that no other refers to: building blocks, checked as
    part of that model (or configured with it), not on their own. (Without such a root, as
    in classes that refer to each other, none is a block: something is always checked.)"""
    refers: dict[str, set[str]] = {}
    for name, node in index.classes.items():
        if not _is_model_class(vars(module).get(name)):
            continue
        names = set()
        for sub in (n for stmt in node.body for n in ast.walk(stmt)):
            if isinstance(sub, ast.Name):
                names.add(sub.id)
            elif isinstance(sub, ast.Attribute):  # blocks.Block, self.Block
                names.add(sub.attr)
        refers[name] = {n for n in names & set(index.classes) if n != name}
    referred = set().union(*refers.values()) if refers else set()
    blocks: set[str] = set()
    todo = [n for name in refers if name not in referred for n in refers[name]]
    while todo:
        name = todo.pop()
        if name not in blocks:
            blocks.add(name)
            todo.extend(refers.get(name, ()))
    return blocks


# Calling these builds a plain value and runs no user code.
_SAFE_CALLABLES = (dict, list, tuple, set, frozenset, int, float, bool, str, range, slice, functools.partial)


def _factories(index: _SourceIndex, module: ModuleType) -> dict[str, set[str]]:
    """Top-level functions that are recognisably model factories, by their source alone,
    each with the names of the factories it calls.

    A factory takes no required arguments and its body is only assignments and a final
    ``return``, where every call is to a model class, a config class or another factory.
    That is what makes calling it safe: a ``main()`` that trains or writes files never
    qualifies, however few arguments it takes.
    """
    candidates: dict[str, tuple[Any, list[ast.Call], set[str]]] = {}
    for name, node in index.functions.items():
        func = vars(module).get(name)
        if not inspect.isfunction(func) or func.__qualname__ != name or func.__module__ != module.__name__:
            continue
        if node.decorator_list or isinstance(node, ast.AsyncFunctionDef) or not _no_required_params(node.args):
            continue
        body = _simple_body(node)
        if body is None:
            continue
        local_names = {p.arg for p in _all_params(node.args)}
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                local_names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                local_names.add(stmt.target.id)
        calls = [n for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Call)]
        candidates[name] = (func, calls, local_names)

    # A factory may call another factory, defined above or below it: grow to a fixed point.
    found: dict[str, Any] = {}
    changed = True
    while changed:
        changed = False
        for name, (func, calls, local_names) in candidates.items():
            if name in found:
                continue
            factory_funcs = set(map(id, found.values()))
            if all(_safe_callee(c.func, module, local_names, factory_funcs) for c in calls):
                found[name] = func
                changed = True
    calls_of: dict[str, set[str]] = {}
    for name in found:
        callees = (_dotted(c.func) for c in candidates[name][1])
        calls_of[name] = {p[0] for p in callees if p is not None and len(p) == 1 and p[0] in found}
    return calls_of


def _all_params(params: ast.arguments) -> list[ast.arg]:
    out = [*params.posonlyargs, *params.args, *params.kwonlyargs]
    out += [star for star in (params.vararg, params.kwarg) if star is not None]
    return out


def _no_required_params(params: ast.arguments) -> bool:
    # *args and **kwargs are fine: they can be left empty. Positional defaults belong to
    # the last positional parameters; a keyword-only one without a default has None.
    positional = len(params.posonlyargs) + len(params.args)
    return len(params.defaults) == positional and all(d is not None for d in params.kw_defaults)


def _simple_body(node: ast.FunctionDef) -> list[ast.stmt] | None:
    """The body's statements if they are [docstring], assignments..., return <expr>."""
    small = list(node.body)
    if small and isinstance(small[0], ast.Expr) and isinstance(small[0].value, ast.Constant) and isinstance(small[0].value.value, str):
        small = small[1:]
    if not small or not isinstance(small[-1], ast.Return) or small[-1].value is None:
        return None
    for stmt in small[:-1]:
        if isinstance(stmt, ast.Assign):
            if not all(isinstance(t, (ast.Name, ast.Attribute)) for t in stmt.targets):
                return None
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is None or not isinstance(stmt.target, (ast.Name, ast.Attribute)):
                return None
        else:
            return None
    return small


def _dotted(expr: ast.expr) -> list[str] | None:
    if isinstance(expr, ast.Name):
        return [expr.id]
    if isinstance(expr, ast.Attribute):
        base = _dotted(expr.value)
        return base + [expr.attr] if base is not None else None
    return None


def _safe_callee(expr: ast.expr, module: ModuleType, local_names: set[str], factory_ids: set[int]) -> bool:
    """Whether a call to ``expr`` provably only constructs a model or config object."""
    parts = _dotted(expr)
    if parts is None or parts[0] in local_names:
        return False
    # getattr_static: resolving the name must not run a property or a module __getattr__.
    missing = object()
    obj = vars(module).get(parts[0], getattr(builtins, parts[0], missing))
    for part in parts[1:]:
        obj = inspect.getattr_static(obj, part, missing)
    if obj is missing:
        return False
    if id(obj) in factory_ids:
        return True
    if not isinstance(obj, type):
        return False
    if issubclass(obj, nn.Module) or obj in _SAFE_CALLABLES:
        return True
    if type(obj) is not type:  # a metaclass __call__ could run anything
        return False
    if dataclasses.is_dataclass(obj) or (issubclass(obj, tuple) and hasattr(obj, "_fields")):
        return True
    # A plain attribute-holder config class: nothing of its own runs on construction.
    return obj.__init__ is object.__init__ and obj.__new__ is object.__new__


# --------------------------------------------------------------------------------------
# Explicit entries (--model / [[tool.archlint.models]] build)


def explicit_entry(module: ModuleType, path: str, build: str, inputs: str | None = None) -> ModelEntry:
    """A model entry from a ``build`` string evaluated in the module's namespace.

    ``build`` is an expression (``ResNet(depth=56)``) or statements that assign ``model``.
    Its name and span become the built model's class (and that class's line, if the class is
    defined in this file) once it is built.
    """
    text = build.strip()
    try:
        code, is_expr = compile(text, "<build>", "eval"), True
    except SyntaxError:
        try:
            code, is_expr = compile(text, "<build>", "exec"), False
        except SyntaxError as exc:
            raise BuildError(f"build {text!r} is not valid Python: {exc.msg}") from exc
        if not _assigns_model(text):
            raise BuildError(f"build {text!r} is a list of statements that never assigns `model`")
    index = _SourceIndex(path)

    def builder() -> Any:
        namespace = dict(vars(module))  # a copy: the statements' variables stay out of the module
        namespace.setdefault("torch", torch)
        namespace.setdefault("nn", nn)
        if is_expr:
            model = eval(code, namespace)
        else:
            namespace.pop("model", None)
            exec(code, namespace)
            model = namespace.get("model")
        if not isinstance(model, nn.Module):
            raise BuildError(f"build {text!r} gave a {type(model).__name__}, not an nn.Module")
        cls = type(model)
        entry.name = cls.__name__
        if cls.__module__ == module.__name__:
            entry.span = index.spans.get(cls.__qualname__, entry.span)
        elif factory in index.functions:
            # A function of this file that assembles library modules (``def MLPMixer(...):
            # return nn.Sequential(...)``): findings name it and point at it, not at
            # "Sequential" on line 1.
            entry.name, entry.span = factory, index.spans[factory]
        return model

    factory = _called_function(text)

    entry = ModelEntry(text.splitlines()[0], "explicit", Span(path, 1, 0), builder=builder, inputs=inputs)
    return entry


def _called_function(text: str) -> str | None:
    """The name ``f`` of a build that calls it: ``f(...)`` or statements ending in
    ``model = f(...)``."""
    tree = ast.parse(text)
    body = tree.body
    value = None
    if len(body) == 1 and isinstance(body[0], ast.Expr):
        value = body[0].value
    else:
        for node in body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model" for t in node.targets):
                value = node.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
        return value.func.id
    return None


def _assigns_model(text: str) -> bool:
    for node in ast.parse(text).body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id == "model" and isinstance(sub.ctx, ast.Store):
                return True
    return False


# --------------------------------------------------------------------------------------
# Building


def build_all(discovery: Discovery, seed: int | None = None, memory_budget: int | None = None) -> tuple[list[BuiltModel], list[NotBuilt]]:
    """Build every entry and keep the top-level models.

    With ``seed``, each entry is built right after seeding torch's global RNG with it, so its
    random init is the same on every run whatever else the file builds; the caller's RNG
    state is restored afterwards.

    Each entry is first built on the meta device (no memory, ~10x faster than a real build
    of a ResNet-18) to learn its size; only a model within ``memory_budget`` bytes (default:
    ``default_memory_budget()``) is then built for real. A larger one stays on the meta
    device, with the reason in ``BuiltModel.meta_reason``.

    A class is dropped when another built model contains an instance of it (it is a
    block); a class that needs arguments is reported (ARC903) only when no built model
    contains or is an instance of it, so a class a factory builds is not reported.
    """
    budget = memory_budget if memory_budget is not None else default_memory_budget()
    built: list[BuiltModel] = []
    failed: list[tuple[ModelEntry, NotBuilt]] = []
    for entry in discovery.entries:
        try:
            built.append(_build(entry, budget, seed))
        except BuildError as exc:
            if entry.kind == "factory":
                continue  # a zero-argument function returning something else: not a model
            failed.append((entry, NotBuilt(entry.name, entry.span, [], str(exc), error=str(exc))))
        except (Exception, SystemExit) as exc:
            failed.append((entry, _raised(entry, exc)))

    sub_types = [{type(m) for m in b.model.modules() if m is not b.model} for b in built]
    every_module = [m for b in built for m in b.model.modules()]
    called_by_built = {
        callee for b in built if b.entry.kind == "factory"
        for callee in discovery.factory_calls.get(b.entry.name, ())
    }

    top: list[BuiltModel] = []
    for i, b in enumerate(built):
        t = type(b.model)
        if b.entry.kind == "class" and any(t in types for j, types in enumerate(sub_types) if j != i):
            continue
        if b.entry.kind == "factory" and b.entry.name in called_by_built:
            continue
        top.append(b)

    not_built: list[NotBuilt] = []
    for entry, nb in failed:
        if entry.kind == "class" and any(isinstance(m, entry.target) for m in every_module):
            continue
        not_built.append(nb)
    for c in discovery.needs_args:
        if c.cls is not None and any(isinstance(m, c.cls) for m in every_module):
            continue
        not_built.append(_needs_args(c, discovery.path or c.span.path))
    not_built.sort(key=lambda n: (n.span.line, n.span.col))
    return top, not_built


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, shared (tied) tensors counted once."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def _seeded_build(entry: ModelEntry, seed: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return entry.build()


def _build(entry: ModelEntry, budget: int, seed: int | None = None) -> BuiltModel:
    meta = _build_on_meta(entry)
    if meta is None:
        return BuiltModel(entry, _seeded_build(entry, seed))
    size = model_bytes(meta)
    if size <= budget:
        del meta
        return BuiltModel(entry, _seeded_build(entry, seed), size=size)
    meta.to("meta")  # a tensor the constructor put on a device explicitly
    reason = (f"its parameters and buffers take {format_size(size)}, above the memory budget of "
              f"{format_size(budget)}: analysed on the meta device (shapes and init formulas), "
              f"not built or measured")
    return BuiltModel(entry, meta, size=size, meta_reason=reason)


def _build_on_meta(entry: ModelEntry) -> nn.Module | None:
    """The entry built under ``torch.device("meta")`` with its init statistics recorded, or
    None when its code does not work without real values (``.item()``, ``.tolist()``...):
    the real build then reports whatever is wrong."""
    try:
        with warnings.catch_warnings(), metainit.record_init() as recorder, torch.device("meta"):
            warnings.simplefilter("ignore")  # the real build warns, once
            model = entry.build()
    except (Exception, SystemExit):
        return None
    metainit.attach(model, recorder)
    return model


def _needs_args(c: ClassNeedingArgs, path: str) -> NotBuilt:
    name = c.name
    call = f"{name}({', '.join(f'{p}=...' for p in c.missing)})"
    s = "s" if len(c.missing) > 1 else ""
    what = "its constructor needs" if c.cls is not None else "it needs"
    message = (
        f"{name} was not built: {what} argument{s} {', '.join(c.missing)}; "
        f'configure it with --model "{call}" or a [[tool.archlint.models]] entry with '
        f'path = "{_display(path, project_root(path))}" and build = "{call}"'
    )
    return NotBuilt(name, c.span, list(c.missing), message)


def _raised(entry: ModelEntry, exc: BaseException) -> NotBuilt:
    path = entry.span.path
    error = describe_exception(exc, path)
    line = _innermost_line_in(exc, path)
    where = f" at line {line}" if line else ""
    call = entry.built_as or (f"{entry.name}()" if entry.kind != "explicit" else f"build {entry.name!r}")
    message = f"{entry.name} was not built: {call} raised{where}: {error}"
    return NotBuilt(entry.name, entry.span, [], message, error=error, error_line=line)
