"""What a fixer receives and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archlint.fix.cst import Source
from archlint.graph import ArchGraph
from archlint.rule import Finding


@dataclass
class FixContext:
    """``source``: the parsed file; ``graph``: the finding's model as the engine traced it
    (its nodes carry module paths, construction spans and the built modules)."""

    source: Source
    graph: ArchGraph
    finding: Finding


@dataclass(frozen=True)
class Proposal:
    """The whole fixed file, and one line saying what changed."""

    code: str
    message: str


def constructed_at(graph: ArchGraph, node: Any) -> list[Any]:
    """Every node of ``graph`` whose module was built by the same call as ``node``'s (a
    construction in a loop builds several)."""
    return [n for n in graph.nodes if n.module_path and n.span is not None and n.span == node.span]
