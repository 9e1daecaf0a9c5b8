"""Write a normalisation's LeakyReLU slopes into the model's source with libcst.

Only the slope form is written: ``nn.ReLU()`` / ``nn.LeakyReLU(...)`` at a module's
construction site becomes ``nn.LeakyReLU(negative_slope=s)``. Modules built on one line (in a
loop) share that line, so they get one slope: the mean of theirs (the spread is reported).
Gains and interpolations are reported as notes, not written: where an init gain belongs
depends on how the model initialises its weights.
"""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from typing import Any

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

_RELU_NAMES = ("ReLU", "LeakyReLU")


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def rewrite(source: str, path: str, changes: list[Any]) -> tuple[str, list[str]]:
    """(new source, notes) with the slope changes of ``changes`` that point into ``path``."""
    notes: list[str] = []
    by_site: dict[tuple[int, int], list[float]] = defaultdict(list)
    for c in changes:
        if c.form == "slope" and c.span is not None and _same_file(c.span.path, path):
            by_site[(c.span.line, c.span.col)].append(c.value)
        elif c.form in ("gain", "interpolate"):
            notes.append(f"{c.name}: not written to the source ({c.change})")
        elif c.form == "slope":
            notes.append(f"{c.name}: its module is built outside {path}; not written ({c.change})")
    if not by_site:
        return source, notes
    slopes = {}
    for site, values in by_site.items():
        mean = sum(values) / len(values)
        slopes[site] = mean
        if len(values) > 1 and max(values) - min(values) > 0.05:
            notes.append(f"line {site[0]}: {len(values)} modules built here share one slope, "
                         f"{mean:.3g} (theirs ranged {min(values):.3g} to {max(values):.3g})")
    wrapper = MetadataWrapper(cst.parse_module(source))
    transformer = _SlopeWriter(slopes)
    new = wrapper.visit(transformer).code
    for site in sorted(set(slopes) - transformer.done):
        notes.append(f"line {site[0]}: no nn.ReLU/nn.LeakyReLU call found at column {site[1] + 1}; not written")
    return new, notes


class _SlopeWriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, slopes: dict[tuple[int, int], float]):
        self.slopes = slopes
        self.done: set[tuple[int, int]] = set()

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        pos = self.get_metadata(PositionProvider, original).start
        key = (pos.line, pos.column)
        if key not in self.slopes:
            return updated
        func = updated.func
        name = func.attr.value if isinstance(func, cst.Attribute) else func.value if isinstance(func, cst.Name) else None
        if name not in _RELU_NAMES:
            return updated
        slope = self.slopes[key]
        self.done.add(key)
        new_func = func.with_changes(attr=cst.Name("LeakyReLU")) if isinstance(func, cst.Attribute) else cst.Name("LeakyReLU")
        args = [cst.Arg(keyword=cst.Name("negative_slope"), value=cst.Float(f"{slope:.4g}" if "." in f"{slope:.4g}" or "e" in f"{slope:.4g}" else f"{slope:.4g}.0"),
                        equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))]
        # Keep inplace=... only where torch can differentiate it (non-negative slopes).
        for a in updated.args:
            if a.keyword is not None and a.keyword.value == "inplace" and slope >= 0:
                args.append(a.with_changes(comma=cst.MaybeSentinel.DEFAULT))
        args = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in args]
        return updated.with_changes(func=new_func, args=args)


def unified_diff(old: str, new: str, path: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))
