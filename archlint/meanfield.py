"""Static (no-run) mean-field prediction of the NLC and neuron bias (digest §6).

The recursion runs over the ArchGraph in forward order from the model's actual initial
parameters; each node carries M (squared neuron offsets), v (data variance), mean (the common
offset) and N (the linearised variance), so that NLC = sqrt(N / v), neuron bias
NB = sqrt(M / (M + v)) and rms = sqrt(M + v). Zero-padded maps are followed position by
position, and finite width by the samples' scale modes. The derivation, op by op, what is not
predicted and the known limits: docs/predictor.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from archlint import metainit
from archlint.graph import ArchGraph, Node, OpKind
from archlint.predict.integrals import _CACHE, _CACHE_SIZE, _gaussian_map, _with_map_modes  # noqa: F401 (_CACHE: benchmarks clear it)
from archlint.predict.spatial import _Spatial, _batch_norm_map, _classes, _conv_map, _conv_tap_index, _uniform_map
from archlint.predict.state import (_Chain, _Missing, _Modes, _State, _combined_modes, _identity_chain, _offset_share,
                                    _scalar)

__all__ = ["NodePrediction", "Prediction", "predict", "segment_nlc", "activation_nlc"]


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
    """Run the mean-field recursion over ``graph``; also stored in ``graph.predicted``.

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
        if _is_float(node.dtype):
            modes = _input_modes(node, m0, v0, -2 * k - 2) if finite_width else None
            given[node.name] = _State(M=m0, v=v0, mean=mean0, N=v0, modes=modes)
        else:
            given[node.name] = _Missing(f"{node.dtype} input: not a signal (the NLC starts at the embedding)")
    results = _Recursion(graph, given).run(graph.nodes)
    nodes = {n.name: _node_prediction(results[n.name]) for n in graph.nodes}
    graph.predicted = dict(nodes)
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


def _is_float(dtype: str | None) -> bool:
    t = getattr(torch, dtype, None) if dtype else None
    return isinstance(t, torch.dtype) and t.is_floating_point


# --------------------------------------------------------------------------------------
# The recursion

_SUB_OPS = {"sub", "sub_", "__sub__", "__isub__"}
_RSUB_OPS = {"__rsub__", "rsub"}
_DIV_OPS = {"div", "div_", "__truediv__", "__itruediv__"}
_CONCAT_OPS = {"cat", "concat", "stack"}
# Reshapes that take a second tensor only for its shape or dtype.
_SHAPE_LIKE_OPS = {"view_as", "type_as", "expand_as", "reshape_as"}
# Functional activations of an eagerly captured graph that take no parameter the capture
# could have missed (leaky_relu's slope is recorded in attrs; gelu's ``approximate`` is not,
# and the exact and tanh forms differ by < 1e-3).
_EAGER_FUNCTIONS = {
    "relu", "relu6", "selu", "silu", "mish", "tanh", "sigmoid", "hardswish", "hardsigmoid",
    "softsign", "tanhshrink", "logsigmoid", "abs", "sin", "cos", "exp", "square", "gelu", "leaky_relu",
}
# Float64 copies of activation modules, shared between equal ones (_module64).
_MODULES64: dict[Any, nn.Module] = {}


class _Recursion:
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

    # -- elementwise chains ---------------------------------------------------------------

    def _chain(self, node: Node) -> _Chain | None:
        """``node`` as an elementwise function of one root node, if it is one."""
        elementwise = (
            (node.kind is OpKind.ACTIVATION and node.attrs.get("elementwise"))
            or (node.kind is OpKind.MUL and not node.attrs.get("product"))
            or node.kind in (OpKind.ADD, OpKind.IDENTITY)
        )
        if not elementwise:
            return None
        inputs = [self.chains.get(i) or _identity_chain(i) for i in node.inputs]
        if len({c.root for c in inputs}) != 1:
            # Mixes different signals (a residual add, a gate): not one elementwise function.
            return None
        op = self._fx_op(node) if self.fx_nodes else self._eager_op(node)
        if op is None:
            return None
        fn_op, key = op

        def fn(t: torch.Tensor) -> torch.Tensor:
            return fn_op(*(c.fn(t) for c in inputs))

        # It must map a 1-D grid to the same grid: a per-channel constant (a bias vector, a
        # layer scale) broadcasts to another shape and is handled in closed form instead.
        probe = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception:
            return None
        if not isinstance(out, torch.Tensor) or out.shape != probe.shape or not out.is_floating_point():
            return None
        return _Chain(inputs[0].root, fn, (key, tuple(c.key for c in inputs)))

    def _fx_op(self, node: Node) -> tuple[Callable[..., torch.Tensor], Any] | None:
        """Replay the fx node itself, with its real constants (slopes, scalars...)."""
        fxn = self.fx_nodes.get(node.name)
        if fxn is None or fxn.op not in ("call_function", "call_method", "call_module"):
            return None
        constants: dict[str, Any] = {}
        for a in fxn.all_input_nodes:
            if a.name in node.inputs:
                continue
            if a.op != "get_attr":
                return None  # computed from something else (a size, a mask): not a constant
            value = _fetch_attr(self.gm, a.target)
            if isinstance(value, torch.Tensor) and value.is_meta:
                return None  # no values on the meta device: the closed forms read its init
            constants[a.name] = value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else value
        if fxn.op == "call_module":
            target: Any = self._module64(self.gm.get_submodule(fxn.target))
            target_key: Any = _module_key(target)
        else:
            target = target_key = fxn.target
        key = (
            fxn.op,
            target_key,
            repr(fx.node.map_arg((fxn.args, fxn.kwargs), lambda a: a.name if a.name in node.inputs else None)),
            tuple(tuple(v.flatten().tolist()) if isinstance(v, torch.Tensor) else v for v in constants.values()),
        )

        def op(*values: torch.Tensor) -> torch.Tensor:
            env = {**constants, **dict(zip(node.inputs, values))}
            args, kwargs = fx.node.map_arg((fxn.args, fxn.kwargs), lambda a: env[a.name])
            if fxn.op == "call_method":
                return getattr(args[0], fxn.target)(*args[1:], **kwargs)
            return target(*args, **kwargs)

        return op, key

    def _eager_op(self, node: Node) -> tuple[Callable[..., torch.Tensor], Any] | None:
        """Rebuild the op from what the eager capture recorded (no constants but a scalar)."""
        name = node.attrs.get("op", node.op)
        if node.kind is OpKind.ACTIVATION:
            if node.module is not None:
                module = self._module64(node.module)
                return module, _module_key(module)
            base = node.op.rstrip("_")
            if base not in _EAGER_FUNCTIONS:
                return None
            fn = getattr(F, base, None) or getattr(torch, base)
            if base == "leaky_relu":
                slope = node.attrs.get("negative_slope", 0.01)
                return (lambda x: F.leaky_relu(x, slope)), ("leaky_relu", slope)
            return fn, (base,)
        if node.kind is OpKind.MUL and len(node.inputs) == 1:
            scalar = node.attrs.get("scalar")
            return ((lambda x: x * scalar), ("scale", scalar)) if scalar is not None else None
        if node.kind is OpKind.MUL and len(node.inputs) == 2:
            return (torch.div, ("div",)) if name in _DIV_OPS else (torch.mul, ("mul",))
        if node.kind is OpKind.ADD and len(node.inputs) == 2:
            if name in _SUB_OPS:
                return torch.sub, ("sub",)
            if name in _RSUB_OPS:
                return (lambda a, b: b - a), ("rsub",)
            return torch.add, ("add",)
        return None  # e.g. x + constant: the eager capture does not record the constant

    def _module64(self, module: nn.Module) -> nn.Module:
        # Shared between equal modules (the 20 ReLUs of a deep net): a deep copy per module
        # would cost as much as the integrals.
        key = _module_key(module)
        if key not in _MODULES64:
            if len(_MODULES64) >= _CACHE_SIZE:
                _MODULES64.clear()
            _MODULES64[key] = _float64_module(module)
        return _MODULES64[key]

    # -- closed-form rules -----------------------------------------------------------------

    def _embedding(self, node: Node) -> _State | _Missing:
        w = node.params.get("weight")
        if node.op == "EmbeddingBag" or w is None or not math.isfinite(w.std):
            return _Missing(f"{node.op}: embedding weights not readable as one table")
        var = w.std**2
        if not self._depends_on_input(node):
            # Looked up with indices that are the same for every sample (positions).
            return _State(M=var + w.mean**2, v=0.0, mean=_systematic_mean(w), N=0.0)
        rows = w.shape[0]
        return _State(M=w.mean**2 + var / rows, v=var * (1 - 1 / rows), mean=_systematic_mean(w), N=var * (1 - 1 / rows))

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

    def _linear(self, node: Node, ins: list[_State]) -> _State | _Missing:
        if len(ins) != 1:
            return _Missing(f"{node.op} of {len(ins)} signals (a bilinear product)")
        w = node.params.get("weight")
        if w is None or w.fan_in is None:
            return _Missing(f"functional {node.op}: its weight is not a module parameter archlint can read")
        if not (math.isfinite(w.mean) and math.isfinite(w.std)):
            return _Missing(f"{node.op}: weight statistics unavailable (meta device?)")
        fan_in = float(w.fan_in)
        if node.attrs.get("transposed"):
            # A transposed conv's output sums in_channels/groups x kernel/stride inputs
            # (torch's fan_in of its weight counts the output channels instead).
            kernel, stride = node.attrs.get("kernel_size", [1]), node.attrs.get("stride", [1])
            fan_in = w.shape[0] / node.attrs.get("groups", 1) * math.prod(kernel) / math.prod(stride)
        b = node.params.get("bias")
        w_sq = w.std**2 + w.mean**2
        b_sq = b.std**2 + b.mean**2 if b is not None else 0.0
        w_mean, b_mean = _systematic_mean(w), _systematic_mean(b) if b is not None else 0.0
        s = ins[0]
        gain = fan_in * w_sq  # sigma_w^2 of the real weights
        taps = self._conv_taps(node)
        if taps is not None:
            out = _conv_map(s, taps, fan_in / len(taps[0]), w_sq, w_mean, b_sq, b_mean)
        else:
            mean = fan_in * w_mean * s.mean + b_mean
            # E_i (sum_j W_ij m_j + b_i)^2 with the systematic means taken out of the spreads.
            M = mean**2 + fan_in * (w_sq - w_mean**2) * s.M + b_sq - b_mean**2
            out = _State(M=M, v=gain * s.v, mean=mean, N=gain * s.N)
        # A sample's shift along the input offsets moves the weights' part of M, not the bias;
        # a channel's shift sums over the taps like the fluctuations (gain).
        modes = s.modes.mapped(np.diag([_offset_share(out.M, out.M - b_sq), 1.0])) if s.modes is not None else None
        if node.kind is not OpKind.CONV:  # a Linear on a map or a sequence: per position
            return replace(out, modes=self._vector(node, modes))
        return self._on_map(node, out, modes, gain * s.D, gain * s.N_D)

    def _conv_taps(self, node: Node) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]] | None:
        """(input position of each tap at each output position, input and output map shapes)
        of a Conv1d/2d/3d module; None where positions are not modelled (docs/predictor.md):
        other convolutions (transposed, functional), unknown shapes, large maps."""
        conv = node.module
        src = self.graph[node.inputs[0]].shape
        if (node.kind is not OpKind.CONV or not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed
                or src is None or node.shape is None or len(src) != len(node.shape)):
            return None
        return _conv_tap_index(conv, src, node.shape)

    def _norm(self, node: Node, ins: list[_State]) -> _State | _Missing:
        norm = node.attrs.get("norm_type")
        if norm not in ("batch", "layer", "group", "rms"):
            what = {"instance": "instance norm (depends on spatial correlation)"}.get(norm, f"{norm} normalisation")
            return _Missing(f"{what}: not covered by the mean-field recursion")
        affine = self._affine(node)
        if affine is None:
            return _Missing(f"functional {node.op}: affine parameters not readable")
        if not all(math.isfinite(x) for x in affine):
            return _Missing(f"{node.op}: the initial values of its affine parameters are unknown (meta device)")
        g_mean, g_sq, b_mean, b_sq = affine
        eps = float(node.attrs.get("eps", 1e-5))
        s = ins[0]
        if norm == "batch":
            if s.sp is not None:
                out = _batch_norm_map(s.sp, g_mean, g_sq, b_mean, b_sq, eps)
                scale = out.v / s.v if s.v > 0 else 0.0
                channel = s.sp.channel_offsets_sq()
            else:
                # Per-neuron statistics of the data: offsets removed, spread normalised.
                scale = g_sq / (s.v + eps)
                out, channel = _State(M=b_sq, v=scale * s.v, mean=b_mean, N=scale * s.N), s.M
            if s.modes is None:
                return out
            # The offsets become beta's, which no sample's shift moves: the shift m_i b_x is a
            # random pattern over the units now, i.e. fluctuation; on a map, the part a
            # channel has at every position shifts the whole channel (D). A map's offsets
            # that vary over positions (zero-padding borders) stay, and move with b.
            var_b, n_b = s.modes.shift_variances()
            kept = _offset_share(out.M, scale * (s.M - channel)) if s.sp is not None else 0.0
            modes = s.modes.mapped(np.diag([kept, 1.0]))
            D, N_D = scale * (s.D + var_b * channel), scale * (s.N_D + n_b * channel)
            return self._on_map(node, out, modes, D, N_D)
        s = _scalar(s)  # normalised over all units of a sample: positions not modelled
        if norm == "rms":
            r2 = s.M + s.v + eps
            mean = g_mean * s.mean / math.sqrt(r2)
            M = g_sq * s.M / r2 + 2 * mean * b_mean + b_sq
            modes = self._vector(node, _per_sample_normalised(s.modes, s.M, s.v, M, M - b_sq))
            return _State(M=M, v=g_sq * s.v / r2, mean=mean + b_mean, N=g_sq * s.N / r2, modes=modes)
        # layer / group: the per-sample mean over units is the common offset `mean`.
        spread = max(s.M - s.mean**2, 0.0)
        s2 = spread + s.v + eps
        M = g_sq * spread / s2 + b_sq
        modes = self._vector(node, _per_sample_normalised(s.modes, spread, s.v, M, M - b_sq)) if norm == "layer" else None
        return _State(M=M, v=g_sq * s.v / s2, mean=b_mean, N=g_sq * s.N / s2, modes=modes)

    def _affine(self, node: Node) -> tuple[float, float, float, float] | None:
        """(mean g, mean g^2, mean beta, mean beta^2) of a norm's affine parameters."""
        if node.module is None:
            fxn = self.fx_nodes.get(node.name)
            if fxn is None or any(a.op == "get_attr" for a in fxn.all_input_nodes):
                return None
            return 1.0, 1.0, 0.0, 0.0
        g, b = node.params.get("weight"), node.params.get("bias")
        g_stats = (_systematic_mean(g), g.std**2 + g.mean**2) if g is not None else (1.0, 1.0)
        b_stats = (_systematic_mean(b), b.std**2 + b.mean**2) if b is not None else (0.0, 0.0)
        return g_stats + b_stats

    def _add(self, node: Node, ins: list[_State]) -> _State | _Missing:
        fxn = self.fx_nodes.get(node.name)
        if fxn is not None and fxn.kwargs.get("alpha", 1) != 1:
            return _Missing("torch.add with alpha: not read")
        name = node.attrs.get("op", node.op)
        signs = [1.0] * len(ins)
        if name in _SUB_OPS and len(ins) == 2:
            signs = [1.0, -1.0]
        elif name in _RSUB_OPS and len(ins) == 2:
            signs = [-1.0, 1.0]
        maps = self._maps(node, ins)
        scalars = [_scalar(s) for s in ins]
        mean = sum(sg * s.mean for sg, s in zip(signs, scalars))
        # Independent branches: the per-neuron offsets around the common offset add in
        # square, and so do the fluctuations, the linearised variances and channel shifts.
        spread = sum(max(s.M - s.mean**2, 0.0) for s in scalars)
        M, v = mean**2 + spread, sum(s.v for s in scalars)
        if maps is not None:
            # Each input's statistics on the classes of the sum (pairs of the inputs' classes).
            cls, count, keys = _classes(np.stack([m.cls for m in maps]))
            parts = [(m.mu[k], m.Q[np.ix_(k, k)], m.v[k], m.N[k]) for m, k in zip(maps, keys)]
            mu = sum(sg * p[0] for sg, p in zip(signs, parts))
            Q = np.outer(mu, mu) + sum(p[1] - np.outer(p[0], p[0]) for p in parts)
            out = _Spatial(maps[0].shape, cls, count, mu, Q, sum(p[2] for p in parts), sum(p[3] for p in parts)).state()
        else:
            out = _State(M=M, v=v, mean=mean, N=sum(s.N for s in scalars))
        # A sample's shift of each input, projected on the sum's offsets (the branches'
        # offsets are uncorrelated but for their common offsets); fluctuation variances add.
        parts = []
        for k, (sg, s) in enumerate(zip(signs, scalars)):
            others = sum(sg2 * s2.mean for j, (sg2, s2) in enumerate(zip(signs, scalars)) if j != k)
            share = (s.M + sg * s.mean * others) / M if M > 0 else 0.0
            parts.append((s.modes, np.diag([share, s.v / v if v > 0 else 0.0])))
        return self._on_map(node, out, _combined_modes(parts), sum(s.D for s in scalars), sum(s.N_D for s in scalars))

    def _maps(self, node: Node, ins: list[_State]) -> list[_Spatial] | None:
        """The inputs' maps, where one has a map and all have this node's shape."""
        shapes = [self.graph[i].shape for i in node.inputs]
        with_map = [s.sp for s in ins if s.sp is not None]
        if not with_map or any(sh != node.shape for sh in shapes):
            return None
        shape = with_map[0].shape
        if any(m.shape != shape for m in with_map):
            return None
        return [s.sp if s.sp is not None else _uniform_map(s, shape) for s in ins]

    def _constant_op(self, node: Node, ins: list[_State]) -> _State | _Missing:
        """One signal times or plus a constant tensor (layer scale, a bias vector)."""
        ins = [_scalar(x) for x in ins]  # positions not modelled
        if len(ins) != 1:
            what = "matrix product" if node.attrs.get("product") else "product"
            return _Missing(f"{node.op}: {what} of two different signals: not covered by the mean-field recursion")
        fxn = self.fx_nodes.get(node.name)
        consts = [a for a in fxn.all_input_nodes if a.op == "get_attr"] if fxn is not None else []
        others = [a for a in fxn.all_input_nodes if a.op != "get_attr" and a.name not in node.inputs] if fxn is not None else []
        if len(consts) != 1 or others:
            return _Missing(f"{node.op} of a signal with a constant archlint could not read")
        c = _fetch_attr(self.gm, consts[0].target)
        if not isinstance(c, torch.Tensor):
            return _Missing(f"{node.op} of a signal with a non-tensor constant")
        if c.is_meta:
            # A model built on the meta device: the statistics its init asked for.
            known = metainit.stats(c)
            if known is None:
                return _Missing(f"{node.op} of a signal with a constant whose initial values are unknown (meta device)")
            c_mean, c_sq = _systematic(known[0], known[1], c.numel()), known[0] ** 2 + known[1] ** 2
        else:
            c = c.detach().double()
            c_mean, c_sq = _systematic(float(c.mean()), float(c.std(unbiased=False)), c.numel()), float((c * c).mean())
        s = ins[0]
        if node.kind is OpKind.MUL:
            if node.attrs.get("op", node.op) in _DIV_OPS:
                return _Missing(f"{node.op} of a signal by a constant tensor: not read")
            # Independent of which neuron it scales: means scale by E[c], squares by E[c^2].
            return _State(M=c_sq * s.M, v=c_sq * s.v, mean=c_mean * s.mean, N=c_sq * s.N, modes=s.modes,
                          D=c_sq * s.D, N_D=c_sq * s.N_D)
        name = node.attrs.get("op", node.op)
        signal_first = fxn.args and isinstance(fxn.args[0], fx.Node) and fxn.args[0].name == node.inputs[0]
        sign_x = -1.0 if (name in _SUB_OPS and not signal_first) or name in _RSUB_OPS else 1.0
        sign_c = -1.0 if name in _SUB_OPS and signal_first else 1.0
        mean = sign_x * s.mean + sign_c * c_mean
        M = s.M + 2 * sign_x * sign_c * s.mean * c_mean + c_sq
        modes = s.modes.mapped(np.diag([_offset_share(M, s.M + sign_x * sign_c * s.mean * c_mean), 1.0])) if s.modes is not None else None
        return _State(M=M, v=s.v, mean=mean, N=s.N, modes=modes, D=s.D, N_D=s.N_D)

    def _pool(self, node: Node, ins: list[_State]) -> _State | _Missing:
        kind = node.attrs.get("pool")
        if kind != "avg":
            return _Missing(f"{kind} pooling: not covered by the mean-field recursion")
        if node.op == "sum":
            return _Missing("sum reduction: its scale depends on the correlation of the summed units")
        if node.op == "mean" and not self._spatial_mean(node):
            return _Missing("mean over features or unknown dimensions: not covered")
        s = ins[0]
        src = self.graph[node.inputs[0]].shape
        if node.shape is not None and src is not None and len(src) >= 3 and math.prod(node.shape[2:]) == 1:
            return self._global_pool(node, s, math.prod(src[2:]))
        # Linear, NLC factor 1; M is exact (a channel's neuron mean the same at every
        # position), v an upper bound (spatial correlation unknown). A sample's scale and
        # channel shifts are the same at the positions pooled: kept.
        return _scalar(s)

    def _global_pool(self, node: Node, s: _State, positions: int) -> _State:
        """Average over all positions of a map. A channel's output mean is its neuron means'
        average over positions, M = mean_c (mean_p m_cp)^2 = mean_pq Q[p, q]. The
        fluctuations of different positions are uncorrelated in the wide-layer limit and
        pooling divides their variance by the positions, but not that of what a sample shifts
        at every position alike: its shift along the offsets (Var b M) and its channels'
        shifts (D). v and N stay on the scale of one position (the limit's NLC factor 1;
        v is an upper bound where the data's positions are correlated), so those two are
        multiplied by the positions instead."""
        M = s.sp.channel_offsets_sq() if s.sp is not None else s.M
        var_b, n_b = s.modes.shift_variances() if s.modes is not None else (0.0, 0.0)
        v_each = max(s.v - s.D - var_b * s.M, 0.0)
        N_each = max(s.N - s.N_D - n_b * s.M, 0.0)
        v = v_each + positions * (s.D + var_b * M)
        N = N_each + positions * (s.N_D + n_b * M)
        modes = s.modes.mapped(np.diag([1.0, v_each / v if v > 0 else 0.0])) if s.modes is not None else None
        return self._on_map(node, _State(M=M, v=v, mean=s.mean, N=N), modes, 0.0, 0.0)

    def _spatial_mean(self, node: Node) -> bool:
        """x.mean(dims) over spatial dims only (dims >= 2 of an N, C, ... tensor)."""
        fxn = self.fx_nodes.get(node.name)
        shape = self.graph[node.inputs[0]].shape
        if fxn is None or shape is None or len(shape) < 3:
            return False
        dims = fxn.kwargs.get("dim", fxn.args[1] if len(fxn.args) > 1 else None)
        dims = [dims] if isinstance(dims, int) else dims
        return bool(dims) and all(isinstance(d, int) and d % len(shape) >= 2 for d in dims)

    def _reshape(self, node: Node, ins: list[_State]) -> _State | _Missing:
        if len(ins) == 1 or node.op in _SHAPE_LIKE_OPS:
            # A map stays with the node only while the layout does (the averages always hold).
            src = self.graph[node.inputs[0]].shape
            if node.shape == src:
                return ins[0]
            s = _scalar(ins[0])
            if self._is_map(node) and src is not None and tuple(src[:2]) == tuple(node.shape[:2]):
                return s  # the channels stay: (batch, channels, positions in another layout)
            return replace(s, modes=self._vector(node, s.modes), D=0.0, N_D=0.0)
        ins = [_scalar(x) for x in ins]
        if node.op in _CONCAT_OPS:
            sizes = [math.prod(self.graph[i].shape or (0,)) for i in node.inputs]
            if not all(sizes):
                return _Missing(f"{node.op}: input sizes unknown")
            w = [n / sum(sizes) for n in sizes]
            M, v = sum(a * s.M for a, s in zip(w, ins)), sum(a * s.v for a, s in zip(w, ins))
            parts = [(s.modes, np.diag([a * s.M / M if M > 0 else 0.0, a * s.v / v if v > 0 else 0.0])) for a, s in zip(w, ins)]
            return _State(
                M=M,
                v=v,
                mean=sum(a * s.mean for a, s in zip(w, ins)),
                N=sum(a * s.N for a, s in zip(w, ins)),
                modes=self._vector(node, _combined_modes(parts)),
            )
        return _Missing(f"{node.op} of {len(ins)} signals: not covered")


def _per_sample_normalised(modes: _Modes | None, C: float, v: float, M_out: float, weight_part: float) -> _Modes | None:
    """A norm that divides each sample by its own spread C (1 + b)^2 + v (1 + a) (LayerNorm:
    C the offsets' spread around their common offset; RMSNorm: C = M): the relative change
    delta = (2 C b + v a) / (C + v) leaves b - delta / 2, a - delta (a pure scale, a = 2 b,
    is removed); then the affine's bias dilutes b as in a Linear."""
    if modes is None or C + v <= 0:
        return None
    t = C + v
    J = np.array([[v / t, -v / (2 * t)], [-2 * C / t, C / t]])
    return modes.mapped(np.diag([_offset_share(M_out, weight_part), 1.0]) @ J)


def _systematic(mean: float, std: float, numel: int) -> float:
    """``mean`` where it stands out of the sampling noise of a zero-mean tensor, else 0."""
    return mean if abs(mean) > 3 * std / math.sqrt(max(numel, 1)) else 0.0


def _systematic_mean(p: Any) -> float:
    return _systematic(p.mean, p.std, math.prod(p.shape))


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


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _float64_module(module: nn.Module) -> nn.Module:
    # A copy: the user's module keeps its dtype and mode. Eval mode as when measuring (RReLU
    # uses its mean slope).
    copied = copy.deepcopy(module)
    if any(t.is_meta for t in module.state_dict().values()):
        copied = _constants_from_init(module, copied)
    return copied.to(torch.float64).eval()


def _constants_from_init(module: nn.Module, copied: nn.Module) -> nn.Module:
    """A meta-device module whose tensors were all initialised to constants (PReLU's 0.25)
    as a real one; otherwise ``copied`` unchanged (on meta, it fails on the grid)."""
    known = [metainit.stats(t) for t in module.state_dict(keep_vars=True).values()]
    if not all(s is not None and s[1] == 0 for s in known):
        return copied
    copied = copied.to_empty(device="cpu")
    with torch.no_grad():
        for t, s in zip(copied.state_dict(keep_vars=True).values(), known):
            t.fill_(s[0])
    return copied


def _module_key(module: nn.Module) -> Any:
    """What an (activation) module computes in eval mode: its class, settings and tensors."""
    tensors = list(module.state_dict().values())
    if any(t.is_meta for t in tensors):
        # No values to compare (a model on the meta device): never shared, and evaluating it
        # on the grid fails, so the node is not predicted.
        return (type(module).__module__, type(module).__qualname__, "meta", id(module))
    params = tuple(tuple(t.detach().flatten().tolist()) for t in tensors)
    return (type(module).__module__, type(module).__qualname__, module.extra_repr(), params)
