"""libcst helpers shared by the fixers: find the code a finding points at, name a module
from the class that constructs it, and render edits that keep the file's formatting.

A fixer never guesses: when the construction is not one of the shapes below (an attribute
assignment ``self.x = nn.Y(...)``, or a positional element of an ``nn.Sequential(...)``
literal assigned to an attribute), it returns None and no fix is offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from archlint.graph import Span

# Scopes that run their body more than once: an edit inside one changes every module built
# there.
LOOPS = (cst.For, cst.While, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp, cst.Lambda)
CONTAINERS = ("Sequential", "ModuleList")


class Source:
    """One parsed file with positions and parents."""

    def __init__(self, text: str):
        self.text = text
        self.module = cst.parse_module(text)
        wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
        self.positions = wrapper.resolve(PositionProvider)
        self.parents = wrapper.resolve(ParentNodeProvider)
        self._by_range: dict[tuple[int, int, int, int], list[cst.CSTNode]] = {}
        for node, rng in self.positions.items():
            key = (rng.start.line, rng.start.column, rng.end.line, rng.end.column)
            self._by_range.setdefault(key, []).append(node)

    # -- finding nodes ---------------------------------------------------------------

    def at(self, span: Span | None, kind: type) -> cst.CSTNode | None:
        """The node of type ``kind`` whose range is exactly ``span``."""
        if span is None or span.end_line is None or span.end_col is None:
            return None
        for node in self._by_range.get((span.line, span.col, span.end_line, span.end_col), ()):
            if isinstance(node, kind):
                return node
        return None

    def call_at(self, span: Span | None) -> cst.Call | None:
        """The call a construction span points at: the span is the call itself, or the
        statement ``self.x = Call(...)`` whose value it is."""
        call = self.at(span, cst.Call)
        if call is not None:
            return call
        assign = self.at(span, cst.Assign)
        if assign is not None and isinstance(assign.value, cst.Call):
            return assign.value
        return None

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self.parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        cur = self.parents.get(node)
        while cur is not None:
            yield cur
            cur = self.parents.get(cur)

    def enclosing(self, node: cst.CSTNode, kind: type) -> cst.CSTNode | None:
        return next((a for a in self.ancestors(node) if isinstance(a, kind)), None)

    def in_loop(self, node: cst.CSTNode) -> bool:
        """Whether ``node`` runs more than once per call of its function (a loop or a
        comprehension between it and its function)."""
        for a in self.ancestors(node):
            if isinstance(a, cst.FunctionDef):
                return False
            if isinstance(a, LOOPS):
                return True
        return False

    def statement(self, node: cst.CSTNode) -> cst.SimpleStatementLine | None:
        return self.enclosing(node, cst.SimpleStatementLine)

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    # -- naming modules --------------------------------------------------------------

    def module_ref(self, call: cst.Call) -> "ModuleRef | None":
        """How the constructing method refers to the module ``call`` builds, and the
        statement after which code about it may go; None for any other shape."""
        parent = self.parent(call)
        if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
            target = self_attribute(parent.targets[0].target)
            if target is not None and not self.in_loop(parent):
                return ModuleRef(f"self.{target}", self.statement(parent), target)
            return None
        if isinstance(parent, cst.Arg) and parent.keyword is None and not parent.star:
            container = self.parent(parent)
            if not isinstance(container, cst.Call) or callee_name(container) != "Sequential":
                return None
            args = list(container.args)
            index = next(i for i, a in enumerate(args) if a is parent)
            if any(a.star for a in args[: index + 1]) or self.in_loop(container):
                return None
            outer = self.parent(container)
            if not isinstance(outer, cst.Assign) or len(outer.targets) != 1:
                return None
            target = self_attribute(outer.targets[0].target)
            if target is None:
                return None
            last = index == len(args) - 1 and not any(a.star for a in args)
            return ModuleRef(f"self.{target}[{-1 if last else index}]", self.statement(outer), target)
        return None

    def nn_name(self) -> str | None:
        """How this file names ``torch.nn``: ``nn`` (``import torch.nn as nn``, ``from torch
        import nn``), ``torch.nn`` (``import torch``), else None."""
        plain_torch = False
        for stmt in self.module.body:
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        name = self.code(alias.name)
                        if name == "torch.nn" and alias.asname is not None:
                            return self.code(alias.asname.name)
                        if name == "torch" and alias.asname is None:
                            plain_torch = True
                elif isinstance(small, cst.ImportFrom) and small.module is not None and self.code(small.module) == "torch":
                    if isinstance(small.names, cst.ImportStar):
                        continue
                    for alias in small.names:
                        if self.code(alias.name) == "nn":
                            return self.code(alias.asname.name) if alias.asname is not None else "nn"
        return "torch.nn" if plain_torch else None

    # -- rendering -------------------------------------------------------------------

    def replaced(self, mapping: dict[cst.CSTNode, cst.CSTNode | cst.RemovalSentinel | cst.FlattenSentinel]) -> str:
        """The file's code with the nodes of ``mapping`` (by identity) replaced."""
        by_id = {id(k): v for k, v in mapping.items()}

        class _Replace(cst.CSTTransformer):
            def on_leave(self, original_node, updated_node):  # noqa: N802 (libcst's API)
                return by_id.get(id(original_node), updated_node)

        return self.module.visit(_Replace()).code


@dataclass(frozen=True)
class ModuleRef:
    """``expr``: the module as its constructing method names it (``self.head``,
    ``self.branch[-1]``); ``after``: the statement that builds it; ``attribute``: the
    attribute of ``self`` it is stored under."""

    expr: str
    after: cst.SimpleStatementLine | None
    attribute: str


def self_attribute(node: cst.BaseExpression) -> str | None:
    """``x`` for the expression ``self.x``, else None."""
    if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self":
        return node.attr.value
    return None


def callee_name(call: cst.Call) -> str | None:
    """The last name of what is called: ``Sequential`` for ``nn.Sequential(...)``."""
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def insert_after(stmt: cst.SimpleStatementLine, *lines: str) -> cst.FlattenSentinel:
    """``stmt`` followed by the statements ``lines`` (same block, same indentation)."""
    return cst.FlattenSentinel([stmt, *(cst.parse_statement(line) for line in lines)])


def number(value: float) -> str:
    """A float literal with two significant digits that reads as a float (1.0, 0.062, 0.2)."""
    text = f"{value:.2g}"
    if "e" in text:
        text = f"{value:.6f}".rstrip("0")
    return text if "." in text else text + ".0"
