"""ARC303: replace train-mode BatchNorm by ``nn.GroupNorm``, which normalises each sample on
its own.

The group count: on features (``BatchNorm1d`` over ``(N, C)``) one group, the whole layer
per sample (as LayerNorm, with a per-channel affine): groups of a few features would
normalise two or three numbers each, far more nonlinear than the BatchNorm was. On maps, 32
groups as Wu and He recommend, or the largest divisor of the channel count below it (of
every channel count built by that line, when a loop builds several). ``eps`` and ``affine``
are kept; ``momentum`` and ``track_running_stats`` have no GroupNorm counterpart.
"""

from __future__ import annotations

import math

import libcst as cst

from archlint.fix.base import FixContext, Proposal, constructed_at

GROUPS = 32
KEPT = ("eps", "affine")


def propose(ctx: FixContext) -> Proposal | None:
    src, graph, f = ctx.source, ctx.graph, ctx.finding
    nn = src.nn_name()
    if nn is None:
        return None
    layers = [graph[name] for name in f.data.get("layers", ()) if name in graph]
    if not layers:
        return None
    mapping: dict = {}
    sites = []
    for node in layers:
        call = src.call_at(node.span)
        if call is None:
            return None
        if call in mapping:
            continue
        built = [n for n in constructed_at(graph, node) if n.attrs.get("norm_type") == "batch"]
        channels = [_channels(n) for n in built]
        if not channels or None in channels:
            return None
        features_only = all(n.shape is not None and len(n.shape) == 2 for n in built)
        groups = 1 if features_only else _groups(math.gcd(*channels))
        new = _group_norm(nn, call, groups)
        if new is None:
            return None
        mapping[call] = new
        sites.append(f"line {src.positions[call].start.line}")
    count = len(mapping)
    return Proposal(
        src.replaced(mapping),
        f"replace {'the' if count == 1 else count} BatchNorm layer{'s' if count > 1 else ''} "
        f"({', '.join(sites)}) by {nn}.GroupNorm, which does not depend on the batch",
    )


def _channels(node) -> int | None:
    module = node.module
    value = getattr(module, "num_features", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _groups(channels: int) -> int:
    return max(g for g in range(1, min(GROUPS, channels) + 1) if channels % g == 0)


def _group_norm(nn: str, call: cst.Call, groups: int) -> cst.Call | None:
    """``nn.GroupNorm(groups, C, eps=..., affine=...)`` from ``nn.BatchNorm?d(C, ...)``."""
    args = list(call.args)
    if not args or args[0].keyword is not None or args[0].star:
        channels = next((a for a in args if a.keyword is not None and a.keyword.value == "num_features"), None)
        if channels is None:
            return None
        channels = channels.with_changes(keyword=None, equal=cst.MaybeSentinel.DEFAULT)
    else:
        channels = args[0]
    # BatchNorm's positional order is (num_features, eps, momentum, affine, ...).
    kept = [a for a in args[1:] if a.keyword is not None and a.keyword.value in KEPT]
    if any(a.keyword is None for a in args[1:]):
        positional = [a for a in args[1:] if a.keyword is None]
        if len(positional) >= 1:
            kept.insert(0, positional[0].with_changes(keyword=cst.Name("eps"), equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))))
        if len(positional) >= 3:
            kept.append(positional[2].with_changes(keyword=cst.Name("affine"), equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))))
    new_args = [cst.Arg(cst.Integer(str(groups)), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))), channels, *kept]
    # The last argument keeps the call's own trailing comma, or none.
    last = args[-1].comma if args else cst.MaybeSentinel.DEFAULT
    new_args = [*(a.with_changes(comma=a.comma if a.comma is not cst.MaybeSentinel.DEFAULT else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))) for a in new_args[:-1]), new_args[-1].with_changes(comma=last)]
    return call.with_changes(func=cst.parse_expression(f"{nn}.GroupNorm"), args=new_args)
