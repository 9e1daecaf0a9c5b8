"""The predictor's entry points: predict (every node of a graph), segment_nlc (a sub-network)
and activation_nlc (one activation), and the per-node results they return."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from archlint import dtypes
from archlint.graph import ArchGraph, Node, OpKind
from archlint.predict.chains import _float64_module
from archlint.predict.integrals import _gaussian_map
from archlint.predict.recursion import _Recursion
from archlint.predict.state import _Missing, _Modes, _State


@dataclass
class NodePrediction:
    """The predicted statistics of one node (None where not predicted)."""

    M: float | None
    v: float | None
    # NLC from the model input (or the embedding outputs) to this node; also None when the
    # node does not vary with the input (v == 0), where the NLC is undefined.
    nlc: float | None
    neuron_bias: float | None
    rms: float | None
    predicted: bool
    reason: str | None = None
    # The common offset mean_i E_x h_i and the linearised variance N = v NLC^2.
    mean: float | None = None
    N: float | None = None


@dataclass
class Prediction:
    nodes: dict[str, NodePrediction]
    # The model's output node (ArchGraph.output).
    output: str | None
    # (M0, v0) or (M0, v0, mean0) of the floating-point inputs, as used.
    input_moments: tuple[float, ...]
    graph: ArchGraph = field(repr=False, compare=False)
    # The recursion's states, per-position maps included (segment_nlc restarts from them).
    states: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def output_nlc(self) -> float | None:
        node = self.nodes.get(self.output) if self.output is not None else None
        return node.nlc if node is not None else None


def predict(graph: ArchGraph, *, input_moments: tuple[float, ...] | None = None, finite_width: bool = True) -> Prediction:
    """Run the mean-field recursion over ``graph``; also stored in ``graph.prediction``.

    ``input_moments``: (M0, v0) of the floating-point inputs: mean over features of the
    squared feature mean and of the feature variance; optionally a third value, the mean
    over features of the feature mean (default 0). Default (0, 1): standardised inputs.
    ``finite_width``: with the samples' scale modes of (batch, features) layers (docs/predictor.md,
    "Finite width"); False gives the wide-layer limit everywhere.
    """
    moments = tuple(float(x) for x in input_moments) if input_moments is not None else (0.0, 1.0)
    if len(moments) not in (2, 3) or moments[0] < 0 or moments[1] < 0:
        raise ValueError("input_moments must be (M0, v0) or (M0, v0, mean0) with M0, v0 >= 0")
    m0, v0 = moments[:2]
    mean0 = moments[2] if len(moments) == 3 else 0.0
    given: dict[str, _State | _Missing] = {}
    for k, node in enumerate(graph.of_kind(OpKind.INPUT)):
        if dtypes.is_floating(node.dtype):
            modes = _input_modes(node, m0, v0, -2 * k - 2) if finite_width else None
            given[node.name] = _State(M=m0, v=v0, mean=mean0, N=v0, modes=modes)
        else:
            given[node.name] = _Missing(f"{node.dtype} input: not a signal (the NLC starts at the embedding)")
    results = _Recursion(graph, given).run(graph.nodes)
    nodes = {n.name: _node_prediction(results[n.name]) for n in graph.nodes}
    graph.prediction = Prediction(nodes=nodes, output=graph.output, input_moments=moments, graph=graph, states=results)
    return graph.prediction


def _input_modes(node: Node, M0: float, v0: float, first_id: int) -> _Modes | None:
    """How d Gaussian input features (a map's channels x positions) differ in scale between samples: a sample's
    fluctuation variance mean_i (x_i - m_i)^2 has relative variance 2 / d, and its shift
    along the offsets (M0 > 0) variance v0 / (d M0)."""
    if node.shape is None or len(node.shape) < 2 or math.prod(node.shape[1:]) <= 0:
        return None
    d = math.prod(node.shape[1:])
    cov = np.diag([v0 / (d * M0) if M0 > 0 else 0.0, 2.0 / d])
    # A sample's norm is a quadratic form of its features: NLC^2 2.
    return _Modes(np.zeros(0, dtype=int), np.zeros((0, 2)), np.zeros(0)).plus(cov, first_id, 2.0)


def segment_nlc(prediction_or_graph: Prediction | ArchGraph, start: str, end: str) -> float | None:
    """Predicted NLC of the sub-network from node ``start``'s output to node ``end``'s.

    The recursion reruns from ``start`` with its predicted (M, v) and NLC 1. Other inputs of
    the segment (a skip from before ``start``) keep their predicted statistics but do not vary
    with ``start`` (N = 0): the same definition as ``archlint.measure`` segments, where the
    tangent enters at ``start`` only. None when the segment is not predicted.
    """
    pred = prediction_or_graph if isinstance(prediction_or_graph, Prediction) else predict(prediction_or_graph)
    graph = pred.graph
    for name in (start, end):
        if name not in graph:
            raise ValueError(f"segment node {name!r} is not in the graph")
    if start == end:
        return 1.0 if pred.nodes[start].predicted and pred.nodes[start].v else None
    if start not in graph.ancestors(end):
        raise ValueError(f"segment {start!r} -> {end!r}: {end!r} does not depend on {start!r}")
    upstream = graph.ancestors(end) | {end}
    inside: list[Node] = []
    downstream = {start}
    for node in graph.nodes:
        if any(i in downstream for i in node.inputs):
            downstream.add(node.name)
            if node.name in upstream:
                inside.append(node)
    given: dict[str, _State | _Missing] = {start: _state_of(pred, start, fresh_nlc=True)}
    inside_names = {n.name for n in inside}
    for node in inside:
        for i in node.inputs:
            if i not in inside_names and i not in given:
                given[i] = _state_of(pred, i, fresh_nlc=False)
    result = _Recursion(graph, given).run(inside)[end]
    return _node_prediction(result).nlc


def activation_nlc(module_or_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor], mean: float, std: float) -> float:
    """NLC of one elementwise activation whose input is N(mean, std^2) (digest §1.3 item 4).

    ``module_or_fn``: an activation module (evaluated in float64, eval mode) or any
    elementwise function of a tensor, e.g. ``torch.tanh`` or ``lambda x: x * torch.sigmoid(x)``.
    """
    if not std > 0:
        raise ValueError("std must be positive")
    fn = _float64_module(module_or_fn) if isinstance(module_or_fn, nn.Module) else module_or_fn
    out = _gaussian_map(fn, _State(M=mean * mean, v=std * std, mean=mean, N=std * std), key=None)
    if isinstance(out, _Missing):
        raise ValueError(out.reason)
    return math.sqrt(out.N / out.v)


def _node_prediction(result: _State | _Missing) -> NodePrediction:
    if isinstance(result, _Missing):
        reason = result.reason if result.cause is None else f"downstream of {result.cause}: {result.reason}"
        return NodePrediction(None, None, None, None, None, predicted=False, reason=reason)
    total = result.M + result.v
    return NodePrediction(
        M=result.M,
        v=result.v,
        nlc=math.sqrt(result.N / result.v) if result.v > 0 else None,
        neuron_bias=math.sqrt(result.M / total) if total > 0 else None,
        rms=math.sqrt(total),
        predicted=True,
        mean=result.mean,
        N=result.N,
    )


def _state_of(pred: Prediction, name: str, *, fresh_nlc: bool) -> _State | _Missing:
    """The predicted state of node ``name``, its N reset: N = v (the NLC starts there) or 0."""
    state = pred.states.get(name)
    if isinstance(state, _State):
        # Its scale modes and channel shifts too: a sample's shift there is linear in the
        # node's value (NLC 1 from it), and does not vary with the segment's start where N = 0.
        modes = state.modes
        if modes is not None:
            modes = _Modes(modes.ids, modes.coef, np.full(len(modes.ids), 1.0 if fresh_nlc else 0.0))
        restarted = replace(state, N=state.v if fresh_nlc else 0.0, modes=modes, N_D=state.D if fresh_nlc else 0.0)
        if state.sp is not None:
            sp = state.sp
            sp = sp.like(sp.mu, sp.Q, sp.v, sp.v.copy() if fresh_nlc else np.zeros_like(sp.N))
            restarted = replace(restarted, sp=sp)
        return restarted
    p = pred.nodes[name]
    if not p.predicted:
        return _Missing(p.reason or "not predicted")
    return _State(M=p.M, v=p.v, mean=p.mean, N=p.v if fresh_nlc else 0.0)
