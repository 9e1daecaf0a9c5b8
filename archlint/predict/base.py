"""What the recursion's rules share: the walk's state over one graph (the results so far,
the elementwise chains, the fx nodes, the scale-mode sources handed out), the layout of a
node (a (batch, features) vector, a map) and the op names several rules read."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import fx

from archlint.graph import ArchGraph, Node, OpKind
from archlint.predict.state import _Chain, _Missing, _Modes, _State

_SUB_OPS = {"sub", "sub_", "__sub__", "__isub__"}
_RSUB_OPS = {"__rsub__", "rsub"}
_DIV_OPS = {"div", "div_", "__truediv__", "__itruediv__"}


class _RecursionBase:
    """The recursion's state; the rules (chains, layers, signals) are its subclasses' methods."""

    def __init__(self, graph: ArchGraph, given: dict[str, _State | _Missing]):
        self.graph = graph
        self.results: dict[str, _State | _Missing] = dict(given)
        self.chains: dict[str, _Chain] = {}
        gm = graph.graph_module
        self.gm = gm
        self.fx_nodes = {n.name: n for n in gm.graph.nodes} if gm is not None else {}
        # Scale-mode sources handed out (ids, see _Modes), after those the given states carry.
        self.sources = 1 + max((int(r.modes.ids.max()) for r in given.values()
                                if isinstance(r, _State) and r.modes is not None and len(r.modes.ids)), default=-1)

    def _features(self, node: Node) -> int | None:
        """Units per sample of a (batch, features) node, the layout whose scale modes are
        tracked; None for others."""
        shape = self.graph[node.name].shape
        return shape[1] if shape is not None and len(shape) == 2 and shape[1] > 0 else None

    def _vector(self, node: Node, modes: _Modes | None) -> _Modes | None:
        return modes if self._features(node) is not None else None

    def _is_map(self, node: Node) -> bool:
        """(batch, channels, *positions): a convolution's layout."""
        shape = self.graph[node.name].shape
        return shape is not None and len(shape) >= 3 and math.prod(shape[1:]) > 0

    def _units(self, node: Node) -> int:
        return math.prod(self.graph[node.name].shape[1:])

    def _on_map(self, node: Node, state: _State, modes: _Modes | None, D: float, N_D: float) -> _State:
        """``state`` with scale modes and channel shifts, on the layouts that keep them: both on
        a map, the modes alone on a (batch, features) node, neither on others."""
        if self._is_map(node):
            return replace(state, modes=modes, D=D, N_D=N_D)
        return replace(state, modes=self._vector(node, modes), D=0.0, N_D=0.0)

    def _depends_on_input(self, node: Node) -> bool:
        return any(self.graph[a].kind is OpKind.INPUT for a in self.graph.ancestors(node.name))


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value
