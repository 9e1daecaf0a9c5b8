"""Builds that the model file itself shows: ``VGG('VGG11')`` in its ``test()``.

Most public model files define a class that needs arguments and show, next to it, a valid
construction with literal arguments: in a ``test()`` or ``main()``, an
``if __name__ == "__main__":`` block, module-level code or a default argument value.
``find`` finds those calls in the file's syntax tree, never by running the code around them
(a ``test()`` that also trains, prints or writes files stays unrun): only the call
expression itself is evaluated, and only once the tree proves that it is made of

- literals, and tuples, lists, sets, dicts and arithmetic of them;
- names of the file's own top-level classes and functions, and names that resolve, without
  running anything, to a class or function (``nn.GELU``);
- calls of config or model classes (``GPTConfig(n_layer=2)``, ``SomeConfig()``) or of
  factories that ``archlint.load`` already proves safe, with such arguments.

The first such call per class (in source order) becomes its build; the input that the built
model is called on in the same function (``net(torch.randn(2, 3, 32, 32))``) gives its
example input shape.

``is_block`` is the other half: a class needing arguments that no build covers and that
looks like a building block is not worth an ARC903 (see that rule's documentation).
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

from torch import nn

from archlint.load import discovery

# Tensor constructors whose positional arguments (or one tuple) are the shape.
_INPUT_MAKERS = ("randn", "rand", "zeros", "ones", "empty")
# Class-name endings of parts of a model rather than models.
BLOCK_SUFFIXES = (
    "Block", "Layer", "Unit", "Cell", "Stage", "Bottleneck", "Stem", "Head", "Attention",
    "Transition", "Shortcut", "Downsample", "Upsample", "Embedding", "Norm", "Conv",
)
# Name parts of models: a class named like this is reported even if never built.
_MODEL_NAME_PARTS = ("Net", "Model", "Network", "former", "GPT", "Bert", "MLP", "Mixer")


@dataclass
class SourceBuild:
    """A construction of ``target`` found in the file, with literal arguments."""

    target: str
    call: ast.Call
    # The call as source text, and its line.
    text: str
    line: int
    # Where the call is: "test()", "Trainer.setup()", "the __main__ block", "module-level
    # code", "the defaults of train()".
    where: str
    # Other distinct builds of the same target found in the file.
    others: int = 0
    # The per-sample input shape ("3,32,32") of the input the model is called on in the
    # same function, if any.
    input_shape: str | None = None

    def describe(self) -> str:
        others = f"; {self.others} other build{'s' if self.others > 1 else ''} in the file" if self.others else ""
        return f"{self.text} (from {self.where} at line {self.line}{others})"

    def builder(self, module: ModuleType, path: str) -> Callable[[], Any]:
        """Evaluates the call, and only it, in a copy of the module's namespace. Compiled
        with the file's name and line, so that an exception points at the call's line."""
        code = compile(ast.Expression(body=self.call), path, "eval")

        def build() -> Any:
            return eval(code, dict(vars(module)))

        return build


def find(tree: ast.Module, module: ModuleType, targets: set[str], factories: set[str], path: str) -> dict[str, SourceBuild]:
    """The first safe construction of each name in ``targets`` (classes and functions of the
    file), skipping the bodies of the file's model classes (their parts, not builds) and of
    the ``factories`` already discovered (their builds are entries of their own)."""
    own = {n.name for n in discovery._module_level_defs(tree)}
    factory_ids = {id(vars(module)[f]) for f in factories if f in vars(module)}
    found: dict[str, SourceBuild] = {}
    texts: dict[str, set[str]] = {}
    scopes: dict[str, ast.AST] = {}
    for call, scope, where, local_names in _calls(tree, module, factories):
        parts = discovery._dotted(call.func)
        if parts is None or len(parts) != 1 or parts[0] not in targets or parts[0] in local_names:
            continue
        if not _Checker(module, own, local_names, factory_ids).safe_call_args(call):
            continue
        text = ast.unparse(call)
        texts.setdefault(parts[0], set()).add(text)
        if parts[0] not in found:
            found[parts[0]] = SourceBuild(parts[0], call, text, call.lineno, where)
            scopes[parts[0]] = scope
    for name, build in found.items():
        build.others = len(texts[name]) - 1
        build.input_shape = _input_for(build.call, _statements(scopes[name], tree))
    return found


def _statements(scope: ast.AST, tree: ast.Module) -> list[ast.stmt]:
    """The statements that run in ``scope``: a function's or main block's body; for the
    module, its top-level code outside definitions and the main block."""
    if scope is not tree:
        return list(scope.body) if isinstance(scope.body, list) else [ast.Expr(scope.body)]
    skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [s for s in tree.body if not isinstance(s, skip) and not _is_main_guard(s)]


def _input_for(build: ast.Call, statements: list[ast.stmt]) -> str | None:
    """The shape of the input the built model is called on in the same function:
    ``net = Net(...); x = torch.randn(2, 3, 32, 32); net(x)`` or ``Net(...)(torch.randn(...))``.
    Only an input that provably reaches the model: another tensor made there (a mask, a
    target) would give a wrong shape."""
    nodes = [n for stmt in statements for n in ast.walk(stmt)]
    model_names = {
        t.id for n in nodes if isinstance(n, ast.Assign) and n.value is build
        for t in n.targets if isinstance(t, ast.Name)
    }
    assigned: dict[str, list[ast.expr]] = {}
    for n in nodes:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            assigned.setdefault(n.targets[0].id, []).append(n.value)
    for n in nodes:
        calls_model = n.func is build or (isinstance(n.func, ast.Name) and n.func.id in model_names) if isinstance(n, ast.Call) else False
        if not calls_model or len(n.args) != 1 or n.keywords:
            continue
        arg = n.args[0]
        # The argument itself, or what its name was assigned (also wrapped: Variable(x)).
        for expr in [arg, *(assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [])]:
            for sub in ast.walk(expr):
                shape = _input_shape(sub) if isinstance(sub, ast.Call) else None
                if shape is not None:
                    return shape
    return None


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _stored_names(nodes: list[ast.AST]) -> set[str]:
    names = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                names.add(sub.id)
            elif isinstance(sub, ast.arg):
                names.add(sub.arg)
            elif isinstance(sub, (ast.Global, ast.Nonlocal)):
                names.difference_update(sub.names)
    return names


def _calls(tree: ast.Module, module: ModuleType, skip_functions: set[str]) -> Iterator[tuple[ast.Call, ast.AST, str, set[str]]]:
    """Every call of the file in source order, with its scope (the function or main block
    it runs in), a label for it, and the names local to it (which the module namespace
    would resolve wrongly)."""

    def visit(node: ast.AST, scope: ast.AST, where: str, local_names: set[str], prefix: str) -> Iterator[tuple[ast.Call, ast.AST, str, set[str]]]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            name = getattr(node, "name", "<lambda>")
            label = f"the defaults of {prefix}{name}()"
            for d in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                yield from visit(d, scope, label, local_names, prefix)
            for d in getattr(node, "decorator_list", ()):
                yield from visit(d, scope, where, local_names, prefix)
            if not prefix and name in skip_functions:
                return
            body = node.body if isinstance(node.body, list) else [node.body]
            inner = local_names | _stored_names([node.args, *body])
            for stmt in body:
                yield from visit(stmt, node, f"{prefix}{name}()", inner, prefix)
            return
        if isinstance(node, ast.ClassDef):
            cls = vars(module).get(node.name)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                return  # its calls make its parts
            for stmt in node.body:
                yield from visit(stmt, scope, where, local_names, f"{prefix}{node.name}.")
            return
        if scope is tree and _is_main_guard(node):
            yield from visit(node.test, scope, where, local_names, prefix)
            for stmt in node.body:
                yield from visit(stmt, node, "the __main__ block", local_names, prefix)
            for stmt in node.orelse:
                yield from visit(stmt, scope, where, local_names, prefix)
            return
        if isinstance(node, ast.Call):
            yield node, scope, where, local_names
        for child in ast.iter_child_nodes(node):
            yield from visit(child, scope, where, local_names, prefix)

    for stmt in tree.body:
        yield from visit(stmt, tree, "module-level code", set(), "")


def _input_shape(call: ast.Call) -> str | None:
    """``torch.randn(2, 3, 32, 32)`` -> "3,32,32": the shape without its batch dimension."""
    parts = discovery._dotted(call.func)
    if parts is None or len(parts) != 2 or parts[0] != "torch" or parts[1] not in _INPUT_MAKERS:
        return None
    args = call.args
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        args = args[0].elts
    size = next((k.value for k in call.keywords if k.arg == "size"), None)
    if size is not None and not args and isinstance(size, (ast.Tuple, ast.List)):
        args = size.elts
    dims = [a.value for a in args if isinstance(a, ast.Constant) and type(a.value) is int and a.value > 0]
    if len(dims) != len(args) or not 2 <= len(dims) <= 5:
        return None
    return ",".join(map(str, dims[1:]))


class _Checker:
    """Whether an expression is made only of literals, names of the file's definitions (or
    other classes and functions resolved statically) and safe constructor calls."""

    def __init__(self, module: ModuleType, own: set[str], local_names: set[str], factory_ids: set[int]):
        self.module = module
        self.own = own
        self.local_names = local_names
        self.factory_ids = factory_ids

    def safe_call_args(self, call: ast.Call) -> bool:
        return all(self.safe(a) for a in call.args) and all(self.safe(k.value) for k in call.keywords)

    def safe(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return all(self.safe(e) for e in node.elts)
        if isinstance(node, ast.Starred):
            return self.safe(node.value)
        if isinstance(node, ast.Dict):
            return all(k is None or self.safe(k) for k in node.keys) and all(self.safe(v) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            return self._plain(node.operand)
        if isinstance(node, ast.BinOp):
            # Arithmetic and repetition of literals only: an operator on an object runs its code.
            return self._plain(node.left) and self._plain(node.right)
        if isinstance(node, (ast.Name, ast.Attribute)):
            return self._resolves(node)
        if isinstance(node, ast.Call):
            return discovery._safe_callee(node.func, self.module, self.local_names, self.factory_ids) and self.safe_call_args(node)
        return False

    def _plain(self, node: ast.AST) -> bool:
        """A literal value built from literals (no names: no user operator runs)."""
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, (ast.Tuple, ast.List)):
            return all(self._plain(e) for e in node.elts)
        if isinstance(node, ast.UnaryOp):
            return self._plain(node.operand)
        if isinstance(node, ast.BinOp):
            return self._plain(node.left) and self._plain(node.right)
        return False

    def _resolves(self, node: ast.Name | ast.Attribute) -> bool:
        parts = discovery._dotted(node)
        if parts is None or parts[0] in self.local_names:
            return False
        if len(parts) == 1 and parts[0] in self.own:
            return True
        # getattr_static: resolving must not run a property or a module __getattr__.
        missing = object()
        obj = vars(self.module).get(parts[0], missing)
        for part in parts[1:]:
            obj = inspect.getattr_static(obj, part, missing) if obj is not missing else missing
        return obj is not missing and (isinstance(obj, type) or inspect.isroutine(obj))


# --------------------------------------------------------------------------------------
# Discovery's hook


def apply(index: Any, module: ModuleType, path: str, entries: list[Any], needs_args: list[Any],
          factory_calls: dict[str, set[str]]) -> tuple[list[Any], list[Any]]:
    """``discover``'s entries and ARC903 candidates once the file's own builds are used:
    each class or function needing arguments that the file shows how to build becomes an
    entry (which reports ARC903 itself if that build raises), and a class that no build
    covers and that looks like a block leaves the candidates."""
    tree = _tree(path)
    if tree is None:
        return entries, needs_args
    # What a discovered factory builds is already checked: building it again from another
    # call would analyse the same model twice.
    in_factories = set().union(*(discovery._names_in(index.functions[f]) for f in factory_calls)) if factory_calls else set()
    functions = _factories_needing_args(index, module, set(factory_calls))
    # A function is called only when its body is provably safe, whatever its arguments.
    targets = {c.name for c in needs_args if c.cls is not None and c.name not in in_factories} | set(functions)
    builds = find(tree, module, targets, set(factory_calls), path)
    new_entries = []
    for name, build in builds.items():
        obj = vars(module)[name]
        kind = "class" if isinstance(obj, type) else "factory"
        new_entries.append(discovery.ModelEntry(
            name, kind, index.spans[name], builder=build.builder(module, path), target=obj,
            built_as=build.describe(), input_shape=build.input_shape,
        ))
    others_built = bool(entries or new_entries)
    kept = [
        c for c in needs_args
        if c.name not in builds and not (c.cls is not None and is_block(c.name, tree, path, others_built))
    ]
    return sorted(entries + new_entries, key=lambda e: (e.span.line, e.span.col)), kept


def _tree(path: str) -> ast.Module | None:
    from archlint import sourcemap

    index = sourcemap.index_for(path)
    return index.tree if index is not None else None


def _factories_needing_args(index: Any, module: ModuleType, factories: set[str]) -> dict[str, Any]:
    """Top-level functions with required parameters whose body passes ``discovery._factories``'
    test otherwise (assignments and a return, calling only model, config and factory
    classes): safe to call with literal arguments."""
    factory_ids = {id(vars(module)[f]) for f in factories if f in vars(module)}
    out = {}
    for name, node in index.functions.items():
        func = vars(module).get(name)
        if not inspect.isfunction(func) or func.__qualname__ != name or func.__module__ != module.__name__:
            continue
        if node.decorator_list or isinstance(node, ast.AsyncFunctionDef) or discovery._no_required_params(node.args):
            continue
        body = discovery._simple_body(node)
        if body is None:
            continue
        local_names = {p.arg for p in discovery._all_params(node.args)} | _stored_names(body)
        calls = [n for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Call)]
        if all(discovery._safe_callee(c.func, module, local_names, factory_ids) for c in calls):
            out[name] = func
    return out


# --------------------------------------------------------------------------------------
# Which classes needing arguments are parts, not models


def is_block(name: str, tree: ast.Module, path: str, others_built: bool) -> bool:
    """Whether a class needing arguments that no build covers looks like a building block
    rather than a top-level model: its name ends like a part (``*Block``, ``*Layer``...), a
    class of another file of its folder uses it, or nothing anywhere refers to it while the
    file's other models are built, and its name does not say model (``*Net``, ``*Model``...)."""
    if name.endswith(BLOCK_SUFFIXES):
        return True
    if name in _used_by_classes_elsewhere(os.path.realpath(path)):
        return True
    if any(part in name for part in _MODEL_NAME_PARTS):
        return False
    return others_built and not _referred_outside_own_class(name, tree)


def _referred_outside_own_class(name: str, tree: ast.Module) -> bool:
    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and child.name == name:
                continue
            yield child
            yield from walk(child)

    return any(
        (isinstance(n, ast.Name) and n.id == name) or (isinstance(n, ast.Attribute) and n.attr == name)
        for n in walk(tree)
    )


@functools.lru_cache(maxsize=64)
def _class_uses_in_folder(folder: str, stamp: tuple) -> dict[str, frozenset[str]]:
    """Per .py file of ``folder``: the names its class bodies refer to (minus the classes it
    defines itself). ``stamp`` (names, mtimes) keys the cache on the folder's content."""
    out = {}
    for file, _ in stamp:
        try:
            with open(os.path.join(folder, file), "rb") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            continue
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        used = set()
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for sub in (n for stmt in cls.body for n in ast.walk(stmt)):
                if isinstance(sub, ast.Name):
                    used.add(sub.id)
                elif isinstance(sub, ast.Attribute):
                    used.add(sub.attr)
        out[file] = frozenset(used - defined)
    return out


# A folder with more Python files than this is not searched (a flat scripts directory).
MAX_FOLDER_FILES = 200


def _used_by_classes_elsewhere(path: str) -> set[str]:
    """Names that a class of another file of the same folder uses in its body."""
    folder, own = os.path.split(path)
    try:
        files = sorted(f for f in os.listdir(folder) if f.endswith(".py") and f != own)
        if len(files) > MAX_FOLDER_FILES:
            return set()
        stamp = tuple((f, os.stat(os.path.join(folder, f)).st_mtime_ns) for f in files)
    except OSError:
        return set()
    return set().union(*_class_uses_in_folder(folder, stamp).values())
