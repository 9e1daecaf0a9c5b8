"""The recursion over the graph's nodes in forward order: a node's state from its inputs',
by the elementwise chains (``chains``) or the closed-form rule of its op kind (``layers``,
``signals``); the dispatch is ``_Recursion._node``."""

from __future__ import annotations

from archlint.graph import Node, OpKind
from archlint.predict.chains import _ChainRules
from archlint.predict.integrals import _gaussian_map, _with_map_modes
from archlint.predict.layers import _LayerRules
from archlint.predict.signals import _SignalRules
from archlint.predict.state import _Missing, _State, _identity_chain


class _Recursion(_ChainRules, _LayerRules, _SignalRules):
    """The mean-field recursion over one graph, from the ``given`` states (the inputs, or a
    segment's start): ``run`` fills ``results`` node by node. The rules live with their op
    family, in the classes it derives from; ``_node`` picks one."""

    def run(self, nodes: list[Node]) -> dict[str, _State | _Missing]:
        for node in nodes:
            if node.name not in self.results:
                self.results[node.name] = self._node(node)
        return self.results

    def _node(self, node: Node) -> _State | _Missing:
        if node.kind is OpKind.EMBEDDING:
            # Token ids are not a signal: the recursion (and the NLC) starts here.
            return self._embedding(node)
        if not node.inputs:
            return _Missing(f"{node.op}: no input signal")
        ins = [self.results.get(i, _Missing(f"{i} was not computed")) for i in node.inputs]
        for name, r in zip(node.inputs, ins):
            if isinstance(r, _Missing):
                return _Missing(r.reason, r.cause or name)
        if node.kind in (OpKind.IDENTITY, OpKind.OUTPUT) and "op" not in node.attrs:
            # Dropout (off when measuring), nn.Identity, detach: the same values.
            self.chains[node.name] = self.chains.get(node.inputs[0]) or _identity_chain(node.inputs[0])
            return ins[0]
        chain = self._chain(node)
        if chain is not None:
            self.chains[node.name] = chain
            root = self.results[chain.root]
            assert isinstance(root, _State)
            units = self._features(node)
            if root.modes is not None and units:
                self.sources += 2
                return _gaussian_map(chain.fn, root, chain.key, units=units, first_id=self.sources - 2)
            if root.modes is not None and self._is_map(node):
                self.sources += 2
                out = _gaussian_map(chain.fn, root, chain.key)
                return _with_map_modes(chain.fn, chain.key, root, out, self._units(node), self.sources - 2)
            return _gaussian_map(chain.fn, root, chain.key)
        handler = {
            OpKind.LINEAR: self._linear,
            OpKind.CONV: self._linear,
            OpKind.NORM: self._norm,
            OpKind.ADD: self._add,
            OpKind.IDENTITY: self._constant_op,
            OpKind.MUL: self._constant_op,
            OpKind.POOL: self._pool,
            OpKind.RESHAPE: self._reshape,
        }.get(node.kind)
        if handler is None:
            return _Missing(_unsupported(node))
        return handler(node, ins)


def _unsupported(node: Node) -> str:
    if node.kind is OpKind.ATTENTION:
        return f"attention ({node.op}): not covered by the mean-field recursion"
    if node.kind is OpKind.ACTIVATION and node.attrs.get("elementwise"):
        return (f"{node.op}: not evaluable as one elementwise function on a grid (per-channel "
                f"parameters, or arguments the eager capture did not record)")
    if node.kind is OpKind.ACTIVATION:
        return f"{node.op} is not elementwise (it mixes units): not covered by the mean-field recursion"
    if node.attrs.get("recurrent"):
        return f"recurrent layer ({node.op}): not covered by the mean-field recursion"
    return f"unsupported op {node.op} ({node.kind.value})"
