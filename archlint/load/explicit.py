"""Explicit entries: ``--model EXPR`` and ``[[tool.archlint.models]] build``, which replace
discovery for their file."""

from __future__ import annotations

import ast
from types import ModuleType
from typing import Any

import torch
from torch import nn

from archlint.graph import Span
from archlint.load.discovery import ModelEntry, _SourceIndex
from archlint.load.isolation import BuildError


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


