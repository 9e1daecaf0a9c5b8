"""ARC104 (saturating activations) and ARC205 / ARC409 (output scale): initialise the layer
with gain 1, weights of std 1/sqrt(fan_in), which puts a tanh's pre-activations (or the
logits) at the scale of the layer's input instead of several times it.

Where the file already initialises that layer's weight (``nn.init.normal_(self.head.weight,
std=1.0)``, or ``nn.init.normal_(layer.weight, std=3.0 / width**0.5)`` in a loop over the
layers), that call is edited: its leading constant is rescaled, so ``3.0 / width**0.5``
becomes ``1.0 / width**0.5``. Otherwise an ``nn.init.normal_`` call goes after the module's
construction (attribute assignments and ``nn.Sequential`` elements only). A layer built in
a loop with no init call of its own, or initialised by a call that also initialises other
layers (``for m in self.modules()``), gets no fix.
"""

from __future__ import annotations

import math

import libcst as cst

from archlint import patterns
from archlint.fix.base import FixContext, Proposal
from archlint.fix.cst import Source, insert_after, number, self_attribute
from archlint.graph import OpKind

SATURATING = {"tanh", "sigmoid", "hardtanh", "softsign", "hardsigmoid"}
TARGET_GAIN = 1.0


def propose(ctx: FixContext) -> Proposal | None:
    graph, f = ctx.graph, ctx.finding
    if f.code == "ARC104":
        act = graph[f.node] if f.node in graph else None
        if act is None or patterns.activation_name(act) not in SATURATING or not f.segment:
            return None
        layer = graph[f.segment[0]]
    else:
        if f.data.get("kind") != "std" or f.node not in graph:
            return None
        layer = graph[f.node]
    if layer.kind not in (OpKind.LINEAR, OpKind.CONV) or not layer.module_path:
        return None
    weight = layer.params.get("weight")
    if weight is None or not weight.fan_in or not weight.std:
        return None
    gain = weight.std * math.sqrt(weight.fan_in)
    return rescale(ctx.source, layer, TARGET_GAIN / gain, weight.std, f"gain {number(TARGET_GAIN)}")


def rescale(src: Source, layer, ratio: float, std: float, purpose: str) -> Proposal | None:
    """Scale the initial weights of ``layer`` by ``ratio`` (``purpose`` says why)."""
    call = src.call_at(layer.span)
    if call is None:
        return None
    nn = src.nn_name()
    assign = src.enclosing(call, cst.Assign)
    attribute = self_attribute(assign.targets[0].target) if assign is not None and len(assign.targets) == 1 else None
    where = f"self.{attribute}" if attribute else layer.module_path
    inits = _init_calls(src, call, attribute)
    if inits is None:
        return None
    if len(inits) == 1:
        init = inits[0]
        new = _rescaled(src, init, ratio)
        if new is None:
            return None
        return Proposal(src.replaced({init: new}), f"initialise {where} with {purpose} (weights x{number(ratio)}): {src.code(new)}")
    ref = src.module_ref(call)
    if ref is None or ref.after is None or nn is None:
        return None
    line = f"{nn}.init.normal_({ref.expr}.weight, std={number(std * ratio)})"
    return Proposal(src.replaced({ref.after: insert_after(ref.after, line)}), f"initialise {ref.expr} with {purpose}: {line}")


def _is_init(call: cst.Call) -> bool:
    func = call.func
    return isinstance(func, cst.Attribute) and func.attr.value.endswith("_") and (
        (isinstance(func.value, cst.Attribute) and func.value.attr.value == "init")
        or (isinstance(func.value, cst.Name) and func.value.value == "init")
    )


def _init_calls(src: Source, construction: cst.Call, attribute: str | None) -> list[cst.Call] | None:
    """The ``nn.init.*_`` calls on the weight of the module built by ``construction``: on
    ``self.<attribute>.weight``, or on ``v.weight`` inside ``for v in self.<attribute>:``.
    None when some init call may touch it but cannot be attributed (a loop over
    ``self.modules()``)."""
    if attribute is None:
        return []
    cls = src.enclosing(construction, cst.ClassDef)
    if cls is None:
        return None
    found: list[cst.Call] = []
    unclear = False

    class _Find(cst.CSTVisitor):
        def __init__(self) -> None:
            self.loop_vars: list[str] = []

        def visit_For(self, node: cst.For) -> None:  # noqa: N802
            it = node.iter
            if isinstance(node.target, cst.Name) and self_attribute(it) == attribute:
                self.loop_vars.append(node.target.value)
            else:
                self.loop_vars.append("")

        def leave_For(self, node: cst.For) -> None:  # noqa: N802
            self.loop_vars.pop()

        def visit_Call(self, node: cst.Call) -> None:  # noqa: N802
            nonlocal unclear
            if not _is_init(node) or not node.args:
                return
            target = node.args[0].value
            if not (isinstance(target, cst.Attribute) and target.attr.value == "weight"):
                return
            owner = target.value
            if self_attribute(owner) == attribute:
                found.append(node)
            elif isinstance(owner, cst.Name) and owner.value in self.loop_vars:
                found.append(node)
            elif isinstance(owner, cst.Name):
                # m.weight for some other loop variable (self.modules(), a list): may be ours.
                unclear = True

    cls.visit(_Find())
    if unclear:
        return None
    return found


def _rescaled(src: Source, init: cst.Call, ratio: float) -> cst.Call | None:
    """The init call with its std (``normal_``/``trunc_normal_``) multiplied by ``ratio``."""
    name = init.func.attr.value  # type: ignore[union-attr]
    if name not in ("normal_", "trunc_normal_"):
        return None
    args = list(init.args)
    index = next((i for i, a in enumerate(args) if a.keyword is not None and a.keyword.value == "std"), None)
    if index is None:
        positional = [i for i, a in enumerate(args) if a.keyword is None]
        if len(positional) < 3:
            return None
        index = positional[2]
    value = _scaled(args[index].value, ratio)
    args[index] = args[index].with_changes(value=value)
    return init.with_changes(args=args)


def _literal(node: cst.BaseExpression) -> float | None:
    if isinstance(node, (cst.Float, cst.Integer)):
        return float(node.evaluated_value)
    return None


def _scaled(expr: cst.BaseExpression, ratio: float) -> cst.BaseExpression:
    """``expr * ratio``, written as a person would: the constant of ``3.0 / width**0.5`` or
    ``1.0`` rescaled, else ``(expr) * ratio``."""
    value = _literal(expr)
    if value is not None:
        return cst.Float(number(value * ratio))
    if isinstance(expr, cst.BinaryOperation) and isinstance(expr.operator, (cst.Divide, cst.Multiply)):
        left = _literal(expr.left)
        if left is not None:
            return expr.with_changes(left=cst.Float(number(left * ratio)))
        right = _literal(expr.right)
        if right is not None and isinstance(expr.operator, cst.Multiply):
            return expr.with_changes(right=cst.Float(number(right * ratio)))
    return cst.parse_expression(f"({cst.Module([]).code_for_node(expr)}) * {number(ratio)}")
