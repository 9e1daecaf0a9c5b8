"""ARC103: a LeakyReLU slope that brings a deep plain ReLU stack's NLC into the band.

At a zero-mean Gaussian operating point (BatchNorm before it, or He init with zero biases)
a LeakyReLU of slope a has the layer NLC

    c(a)^2 = 1 / (1 - (1 - a)^2 / (pi (1 + a^2)))        (ReLU, a = 0: 1.211)

and a plain stack of L such layers about c^L. The slope is chosen so that the stack lands
halfway between 1 and the rule's threshold, and no higher than patterns.TARGET_NLC (2, the
middle of the guide's band; the calibrated thresholds are above the band, and the stack's
NLC bounds the model's, which ARC101 judges at a lower threshold than ARC103): the measured
per-layer NLC is rescaled by the ratio the formula predicts, so the stack's own deviation
from it carries over. Every ``nn.ReLU``/``nn.LeakyReLU`` of the stack is rewritten where it is
constructed (``nn.ReLU()`` in a loop becomes ``nn.LeakyReLU(0.49)`` for all the layers the
loop builds); a stack with a functional ``relu`` or another activation gets no fix. Adding
skip connections is the better remedy, but it is not a mechanical edit.
"""

from __future__ import annotations

import math

import libcst as cst

from archlint import patterns
from archlint.fix.base import FixContext, Proposal
from archlint.fix.cst import number

RELUS = {"relu": 0.0, "leaky_relu": None, "leakyrelu": None}


def layer_nlc(slope: float) -> float:
    return 1 / math.sqrt(1 - (1 - slope) ** 2 / (math.pi * (1 + slope**2)))


def slope_for(per_layer: float) -> float | None:
    """The slope in [0, 1) whose layer NLC is ``per_layer`` (None when above a ReLU's)."""
    if per_layer >= layer_nlc(0.0) or per_layer <= 1:
        return None
    q = math.pi * (1 - 1 / per_layer**2)
    return (1 - math.sqrt(1 - (1 - q) ** 2)) / (1 - q)


def propose(ctx: FixContext) -> Proposal | None:
    src, graph, f = ctx.source, ctx.graph, ctx.finding
    value = f.measured if f.measured is not None else f.predicted
    layers = f.data.get("layers")
    if not f.segment or value is None or not layers or f.threshold is None or value <= 1:
        return None
    nn = src.nn_name()
    if nn is None:
        return None
    start, end = f.segment
    inside = (graph.ancestors(end) | {end}) - graph.ancestors(start) - {start}
    acts = [n for n in graph.nodes if n.name in inside and patterns.is_elementwise_activation(n)]
    if not acts:
        return None
    slopes = set()
    for n in acts:
        name = patterns.activation_name(n)
        if name not in RELUS or not n.module_path:
            return None
        slopes.add(float(getattr(n.module, "negative_slope", 0.0)))
    if len(slopes) != 1:
        return None
    current = layer_nlc(slopes.pop())
    target = min(1 + (f.threshold - 1) / 2, patterns.TARGET_NLC)
    per_layer = current * (target / value) ** (1 / layers)
    slope = slope_for(per_layer)
    if slope is None:
        return None
    slope = math.ceil(slope * 100) / 100
    mapping: dict = {}
    for n in acts:
        call = src.call_at(n.span)
        if call is None:
            return None
        if call in mapping:
            continue
        kept = [a for a in call.args if a.keyword is not None and a.keyword.value == "inplace"]
        args = [cst.Arg(cst.Float(number(slope)))]
        if kept:
            args = [args[0].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))), kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)]
        mapping[call] = call.with_changes(func=cst.parse_expression(f"{nn}.LeakyReLU"), args=args)
    return Proposal(
        src.replaced(mapping),
        f"use {nn}.LeakyReLU({number(slope)}) in the {layers}-layer stack: predicted NLC about {number(target)}",
    )
