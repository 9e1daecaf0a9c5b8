"""ARC301: remove the activation applied to the logits.

Three shapes are handled: the activation is the last element of an ``nn.Sequential(...)``
literal (removed; an element in the middle becomes ``nn.Identity()`` so that the indices,
and the state-dict keys, of the elements after it stay), a functional call in ``forward``
(``torch.relu(y)``, ``F.relu(y)``, ``y.relu()``: replaced by ``y``), or a module assigned to
an attribute and called once (``self.act(y)`` becomes ``y`` and the assignment goes).
"""

from __future__ import annotations

import libcst as cst

from archlint.fix.base import FixContext, Proposal
from archlint.fix.cst import callee_name, self_attribute


def propose(ctx: FixContext) -> Proposal | None:
    src, graph, f = ctx.source, ctx.graph, ctx.finding
    node = graph[f.node] if f.node in graph else None
    if node is None:
        return None
    what = node.op
    if node.module_path:
        return _module(ctx, node, what)
    call = src.at(node.span, cst.Call)
    if call is None:
        return None
    kept = _argument_of(call)
    if kept is None:
        return None
    return Proposal(src.replaced({call: kept}), f"remove the {what} on the logits: return {src.code(kept)} unchanged")


def _argument_of(call: cst.Call) -> cst.BaseExpression | None:
    """``y`` for ``torch.relu(y)``/``F.relu(y, inplace=True)`` and for ``y.relu()``."""
    positional = [a for a in call.args if a.keyword is None]
    if len(positional) == 1 and not positional[0].star:
        return positional[0].value
    if not call.args and isinstance(call.func, cst.Attribute):
        return call.func.value
    return None


def _module(ctx: FixContext, node, what: str) -> Proposal | None:
    src = ctx.source
    call = src.call_at(node.span)
    if call is None:
        return None
    parent = src.parent(call)
    if isinstance(parent, cst.Arg) and parent.keyword is None and not parent.star:
        container = src.parent(parent)
        if not isinstance(container, cst.Call) or callee_name(container) != "Sequential" or src.in_loop(container):
            return None
        args = list(container.args)
        index = next(i for i, a in enumerate(args) if a is parent)
        if index == len(args) - 1 and index > 0 and not any(a.star for a in args):
            # The previous element takes over the removed one's comma and what follows it
            # (the line break and indentation before the closing parenthesis, a comment).
            previous = args[index - 1]
            new_container = container.with_changes(args=[*args[: index - 1], previous.with_changes(comma=parent.comma)])
            return Proposal(src.replaced({container: new_container}), f"remove the {what} after the output layer")
        nn = src.nn_name()
        if nn is None or any(a.star for a in args[:index]):
            return None
        identity = cst.parse_expression(f"{nn}.Identity()")
        return Proposal(src.replaced({call: identity}), f"replace the {what} after the output layer by {nn}.Identity()")
    assign = src.parent(call)
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
        return None
    attribute = self_attribute(assign.targets[0].target)
    cls = src.enclosing(assign, cst.ClassDef)
    stmt = src.statement(assign)
    if attribute is None or cls is None or stmt is None or len(stmt.body) != 1 or src.in_loop(assign):
        return None
    uses = _attribute_calls(cls, attribute)
    if len(uses) != 1:
        return None
    use = uses[0]
    kept = _argument_of(use) if use.args else None
    if kept is None:
        return None
    # The assignment goes with it, unless a comment sits on its line (kept, with the module).
    commented = stmt.trailing_whitespace.comment is not None or any(line.comment for line in stmt.leading_lines)
    mapping = {use: kept} if commented else {use: kept, stmt: cst.RemoveFromParent()}
    return Proposal(
        src.replaced(mapping),
        f"remove self.{attribute} ({what}) on the logits: return {src.code(kept)} unchanged",
    )


def _attribute_calls(cls: cst.ClassDef, attribute: str) -> list[cst.Call]:
    """Every ``self.<attribute>(...)`` call and every other mention of it in the class
    (a mention that is not a call makes the removal unsafe: it is returned as well)."""
    found: list = []

    class _Find(cst.CSTVisitor):
        def visit_Attribute(self, node: cst.Attribute) -> None:  # noqa: N802
            if self_attribute(node) == attribute:
                found.append(node)

        def visit_Call(self, node: cst.Call) -> None:  # noqa: N802
            if isinstance(node.func, cst.Attribute) and self_attribute(node.func) == attribute:
                found.append(node)

    cls.visit(_Find())
    calls = [n for n in found if isinstance(n, cst.Call)]
    mentions = [n for n in found if isinstance(n, cst.Attribute)]
    # Each call also mentions the attribute once (its func); the assignment is one more.
    if len(mentions) != len(calls) + 1:
        return []
    return calls
