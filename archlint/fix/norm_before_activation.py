"""ARC201: re-centre with BatchNorm before the activations (VGG without BatchNorm becomes
VGG-BN).

For every activation on the main path whose input comes straight from a Linear or Conv
layer, and whose constructor call directly follows that layer's in a list or
``nn.Sequential`` literal (``[nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]``), a
``BatchNorm`` of the layer's output channels goes between them: ``nn.BatchNorm2d(v)``, the
channel expression copied from the layer's ``out_channels``/``out_features`` argument. Any
other shape (functional activations, layers assigned to attributes and composed in
``forward``) gets no fix: the normalisation would have to be wired into ``forward`` by hand.
"""

from __future__ import annotations

import libcst as cst

from archlint import patterns
from archlint.fix.base import FixContext, Proposal
from archlint.fix.cst import callee_name
from archlint.graph import OpKind

NORMS = {("Conv1d", 3): "BatchNorm1d", ("Conv2d", 4): "BatchNorm2d", ("Conv3d", 5): "BatchNorm3d", ("Linear", 2): "BatchNorm1d"}


def propose(ctx: FixContext) -> Proposal | None:
    src, graph = ctx.source, ctx.graph
    nn = src.nn_name()
    if nn is None:
        return None
    main = set(patterns.main_path(graph))
    mapping: dict = {}
    for act in graph.nodes:
        if act.name not in main or not patterns.is_elementwise_activation(act) or not act.inputs or not act.module_path:
            continue
        layer = graph[act.inputs[0]]
        if layer.kind not in (OpKind.LINEAR, OpKind.CONV) or not layer.module_path or layer.shape is None:
            continue
        norm = NORMS.get((layer.op, len(layer.shape)))
        layer_call, act_call = src.call_at(layer.span), src.call_at(act.span)
        if norm is None or layer_call is None or act_call is None:
            continue
        element = src.parent(layer_call)
        container = src.parent(element) if element is not None else None
        items = _items(container) if container is not None else None
        if items is None:
            continue
        index = next((i for i, e in enumerate(items) if e is element), None)
        if index is None or index + 1 >= len(items) or items[index + 1].value is not act_call:
            continue
        # A literal in a loop builds many layers: one insertion per place in the code.
        if index in dict(mapping.get(container, ())):
            continue
        channels = _out_channels(layer_call)
        if channels is None:
            continue
        mapping.setdefault(container, []).append((index, f"{nn}.{norm}({src.code(channels)})"))
    if not mapping:
        return None
    replacements = {c: _with_inserted(c, inserts) for c, inserts in mapping.items()}
    count = sum(len(v) for v in mapping.values())
    return Proposal(src.replaced(replacements), f"add BatchNorm before the activation{'s' if count > 1 else ''} at {count} place{'s' if count > 1 else ''}")


def _items(container: cst.CSTNode) -> list | None:
    if isinstance(container, cst.List):
        return list(container.elements)
    if isinstance(container, cst.Call) and callee_name(container) == "Sequential" and not any(a.star or a.keyword is not None for a in container.args):
        return list(container.args)
    return None


def _out_channels(call: cst.Call) -> cst.BaseExpression | None:
    for a in call.args:
        if a.keyword is not None and a.keyword.value in ("out_channels", "out_features"):
            return a.value
    positional = [a for a in call.args if a.keyword is None and not a.star]
    return positional[1].value if len(positional) >= 2 else None


def _with_inserted(container: cst.CSTNode, inserts: list[tuple[int, str]]) -> cst.CSTNode:
    items = _items(container)
    assert items is not None
    at = dict(inserts)
    out = []
    for i, item in enumerate(items):
        out.append(item)
        if i in at:
            # The layer's comma (and the space after it) separates it from the new norm.
            comma = item.comma if item.comma is not cst.MaybeSentinel.DEFAULT else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            value = cst.parse_expression(at[i])
            new = cst.Element(value, comma=comma) if isinstance(container, cst.List) else cst.Arg(value, comma=comma)
            out[-1] = item.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            out.append(new)
    if isinstance(container, cst.List):
        return container.with_changes(elements=out)
    return container.with_changes(args=out)
