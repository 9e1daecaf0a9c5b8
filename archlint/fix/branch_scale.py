"""ARC403: scale each residual branch down at initialisation, at its last layer.

A skip divides the branch's excess nonlinearity by k^2 + 1 (k: the skip/branch std ratio):
NLC_block^2 = (k^2 + NLC_branch^2) / (k^2 + 1). From the block NLC and ratio the rule
reports, the branch's own NLC follows, and with it the k' that brings the block to halfway
between 1 and the rule's threshold; the branch is multiplied by alpha = k / k'. The last
layer of the branch carries alpha: a normalisation's weight starts at alpha
(``nn.init.constant_(self.branch[-1].weight, 0.2)``), a Linear or Conv's initial weights are
scaled by it. Zero-initialising would make every block the identity at initialisation, and
the whole network linear (ARC406), so a fix never does that.
"""

from __future__ import annotations

import math

from archlint.fix.base import FixContext, Proposal
from archlint.fix.cst import insert_after, number
from archlint.fix.init_gain import rescale
from archlint.graph import OpKind


def alpha(block_nlc: float, branch_over_skip: float, threshold: float) -> float | None:
    """The factor that brings a block of NLC ``block_nlc`` to halfway to ``threshold``."""
    k = 1 / branch_over_skip
    branch_sq = block_nlc**2 * (k**2 + 1) - k**2
    target = 1 + (threshold - 1) / 2
    if branch_sq <= target**2:
        return None
    k_new = math.sqrt((branch_sq - target**2) / (target**2 - 1))
    value = k / k_new
    # Two significant digits, rounded down: a fix errs on the side of the skip.
    digits = 10 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / digits) * digits if 0 < value < 1 else None


def propose(ctx: FixContext) -> Proposal | None:
    src, graph, f = ctx.source, ctx.graph, ctx.finding
    ratio = f.data.get("branch_skip_ratio")
    value = f.measured if f.measured is not None else f.predicted
    if f.node not in graph or not ratio or value is None or f.threshold is None:
        return None
    factor = alpha(value, ratio, f.threshold)
    if factor is None:
        return None
    last = graph[f.node]
    if last.kind == OpKind.NORM and "weight" in last.params:
        call = src.call_at(last.span)
        nn = src.nn_name()
        ref = src.module_ref(call) if call is not None else None
        if ref is None or ref.after is None or nn is None:
            return None
        line = f"{nn}.init.constant_({ref.expr}.weight, {number(factor)})"
        return Proposal(
            src.replaced({ref.after: insert_after(ref.after, line)}),
            f"scale the residual branch by {number(factor)} at initialisation: {line}",
        )
    if last.kind in (OpKind.LINEAR, OpKind.CONV) and "weight" in last.params:
        return rescale(src, last, factor, last.params["weight"].std, f"the residual branch scaled by {number(factor)}")
    return None
