"""What to lint in an imported model file, found with zero configuration.

``discover`` lists ``nn.Module`` classes whose constructor needs no arguments, factory
functions recognised *statically* (a ``main()`` that trains must never be called just because
it takes no arguments), and builds the file itself shows (``archlint.load.source_builds``).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

from torch import nn

from archlint.graph import Span
from archlint.load.isolation import BuildError, LoadError


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
    # Built by a call the file itself shows (archlint.load.source_builds): that call and where it
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
    classes = {e.name for e in entries if e.kind == "class"}
    for name in factory_calls:
        if _default_build_of(index.functions[name]) in classes:
            # ``def make(): return Encoder()``: the class's own model, built the same way.
            # Checked once, as the class (twice, each finding would be reported twice).
            continue
        func = vars(module)[name]
        entries.append(ModelEntry(name, "factory", index.spans[name], builder=func, target=func))
    for name, missing in _factories_needing_args(index, module).items():
        needs_args.append(ClassNeedingArgs(None, index.spans[name], missing, name=name))
        # Its blocks are configured with it, not on their own.
        needs_args = [c for c in needs_args if c.cls is None or c.name not in _names_in(index.functions[name])]
    entries.sort(key=lambda e: (e.span.line, e.span.col))
    # Builds the file shows for what needs arguments (test(), __main__, defaults...).
    from archlint.load import source_builds

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


def _default_build_of(node: ast.FunctionDef) -> str | None:
    """The class a factory returns as its constructor builds it without arguments, and does
    nothing else: ``return Cls()``, or ``model = Cls()`` then ``return model``; else None."""
    body = _simple_body(node)

    def no_argument_call(expr: ast.expr | None) -> str | None:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and not expr.args and not expr.keywords:
            return expr.func.id
        return None

    if body is None:
        return None
    if len(body) == 1:
        return no_argument_call(body[0].value)
    if len(body) == 2 and isinstance(body[0], ast.Assign) and len(body[0].targets) == 1:
        target, returned = body[0].targets[0], body[1].value
        if isinstance(target, ast.Name) and isinstance(returned, ast.Name) and returned.id == target.id:
            return no_argument_call(body[0].value)
    return None


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


