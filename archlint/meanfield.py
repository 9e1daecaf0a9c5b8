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
import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from archlint import metainit
from archlint.graph import ArchGraph, Node, OpKind

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


# --------------------------------------------------------------------------------------
# Recursion state


@dataclass(frozen=True)
class _State:
    M: float
    v: float
    mean: float
    N: float
    # Per-position statistics of a (batch, channel, *spatial) node downstream of a
    # convolution; None: every position alike (M, v, mean, N hold for each).
    sp: _Spatial | None = field(default=None, compare=False)
    # How samples differ in scale at a (batch, features) node or a map (docs/predictor.md,
    # "Finite width"); None: not tracked (sequences, and downstream of them).
    modes: _Modes | None = field(default=None, compare=False)
    # Of a map: the part of v (and of N) that is a sample's shift of a whole channel, the
    # same at every position (its scale modes' shifts that a BatchNorm turned into a random
    # pattern over the channels); average pooling keeps it all.
    D: float = field(default=0.0, compare=False)
    N_D: float = field(default=0.0, compare=False)


@dataclass(frozen=True, eq=False)
class _Modes:
    """Sample x's pre-activations are m_i (1 + b_x) + sqrt(v (1 + a_x)) z_i(x): b_x shifts
    its units along the neuron offsets m_i, a_x scales their fluctuation variance. (b, a)
    = sum_l coef[l] xi_l(x) over independent sources of unit variance (the input's norm, the
    finite width of each layer), identified by ``ids``, so that branches that share a source
    add its coefficients."""

    ids: np.ndarray     # (L,) int
    coef: np.ndarray    # (L, 2): columns b, a
    # (L,): each source's NLC^2 where it arose (N / v there): a shift b_x is a function of
    # the input with that NLC, and the data variance it turns into downstream carries it.
    nlc2: np.ndarray

    def cov(self) -> np.ndarray:
        return self.coef.T @ self.coef

    def small(self) -> bool:
        """Whether the second-order expansion holds: Var(b) <= _MAX_SHIFT_VAR (a sample's
        shift along the offsets within about +-22%) and Var(a) <= _MAX_SPREAD_VAR (its
        fluctuation variance within about +-50%)."""
        var_b, var_a = (self.coef**2).sum(axis=0) if len(self.coef) else (0.0, 0.0)
        return bool(var_b <= _MAX_SHIFT_VAR and var_a <= _MAX_SPREAD_VAR)

    def per_source(self, A: np.ndarray) -> np.ndarray:
        """c_l^T A c_l for each source's coefficients c_l (A: 2 x 2 over (b, a))."""
        return np.einsum("lb,bc,lc->l", self.coef, A, self.coef)

    def shift_variances(self) -> tuple[float, float]:
        """(Var b, its linearised variance): per unit of M, the variance of a sample's shift
        along the offsets and the N it carries (each source's share times its NLC^2)."""
        b2 = self.coef[:, 0] ** 2
        return float(b2.sum()), float(b2 @ self.nlc2)

    def mapped(self, J: np.ndarray) -> _Modes:
        """(b', a') = J (b, a)."""
        return _Modes(self.ids, self.coef @ np.asarray(J, dtype=float).T, self.nlc2)

    def plus(self, cov: np.ndarray, first_id: int, nlc2: float) -> _Modes:
        """With new independent sources of covariance ``cov`` (2 x 2) and NLC^2 ``nlc2``."""
        lam, vec = np.linalg.eigh(cov)
        rows = [math.sqrt(l) * vec[:, k] for k, l in enumerate(lam) if l > 0]
        if not rows:
            return self
        ids = np.arange(first_id, first_id + len(rows))
        return _Modes(np.concatenate([self.ids, ids]), np.vstack([self.coef, np.array(rows)]),
                      np.concatenate([self.nlc2, np.full(len(rows), nlc2)]))


def _combined_modes(parts: list[tuple[_Modes | None, np.ndarray]]) -> _Modes | None:
    """sum_k J_k (b_k, a_k) over inputs that may share sources; None if any is not tracked."""
    tracked = [(m, J) for m, J in parts if m is not None]
    if len(tracked) < len(parts):
        return None
    ids = np.unique(np.concatenate([m.ids for m, _ in tracked]))
    coef, nlc2 = np.zeros((len(ids), 2)), np.zeros(len(ids))
    for m, J in tracked:
        at = np.searchsorted(ids, m.ids)
        coef[at] += m.coef @ np.asarray(J, dtype=float).T
        nlc2[at] = m.nlc2
    return _Modes(ids, coef, nlc2)


@dataclass(frozen=True, eq=False)
class _Spatial:
    """The state at each of the P positions of a map of shape ``shape`` (docs/predictor.md),
    stored per class of identical positions: ``cls[p]`` is the class of position p, and
    positions of one class have the same neuron mean in every channel (the same taps read
    the same classes all the way from a uniform map), hence the same statistics. The
    interior of a map, beyond the borders' reach so far, is one class.

    mu[k] = mean_c m_cp, Q[k, l] = mean_c m_cp m_cq (m_cp = E_x h_cp: the neuron means of
    channel c at positions p, q of classes k, l), v[k] = mean_c Var_x h_cp,
    N[k] = mean_c tr(J_cp Cov J_cp^T); ``count[k]``: the positions of class k.
    """

    shape: tuple[int, ...]
    cls: np.ndarray
    count: np.ndarray
    mu: np.ndarray
    Q: np.ndarray
    v: np.ndarray
    N: np.ndarray

    def channel_offsets_sq(self) -> float:
        """mean_c (mean_p m_cp)^2 = mean_pq Q[p, q]: the offsets a channel has at all of its
        positions (what global pooling keeps of M)."""
        return float(self.count @ self.Q @ self.count) / len(self.cls) ** 2

    def average(self, a: np.ndarray) -> float:
        """The average over positions of a per-class array."""
        return float(self.count @ a) / len(self.cls)

    def like(self, mu: np.ndarray, Q: np.ndarray, v: np.ndarray, N: np.ndarray) -> _Spatial:
        """New statistics on the same classes."""
        return _Spatial(self.shape, self.cls, self.count, mu, Q, v, N)

    def state(self) -> _State:
        """The node's state: averages over positions (and channels) of the maps."""
        return _State(M=max(self.average(np.diag(self.Q)), 0.0), v=self.average(self.v), mean=self.average(self.mu),
                      N=self.average(self.N), sp=self)


def _classes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions with equal columns of ``keys`` (rows: the classes that define a position)
    as one class: (class of each position, positions per class, the keys of each class)."""
    _, first, cls, count = np.unique(keys, axis=1, return_index=True, return_inverse=True, return_counts=True)
    return cls.reshape(-1), count, keys[:, first]


def _uniform_map(s: _State, shape: tuple[int, ...]) -> _Spatial:
    """A position-free state as a map: a channel's neuron mean is the same at every position."""
    P = math.prod(shape)
    one = np.ones(1)
    return _Spatial(shape, np.zeros(P, dtype=np.intp), np.array([P]), s.mean * one, np.full((1, 1), s.M), s.v * one, s.N * one)


def _scalar(s: _State) -> _State:
    """The same averages, position structure dropped (an op that does not keep the layout)."""
    return _State(M=s.M, v=s.v, mean=s.mean, N=s.N, modes=s.modes, D=s.D, N_D=s.N_D)


def _offset_share(M_out: float, part: float) -> float:
    """The share of a node's mean squared neuron offset M_out that ``part`` (the part that
    moves with a sample's shift along the input's offsets) makes: b' = share * b."""
    return min(max(part, 0.0) / M_out, 1.0) if M_out > 0 else 0.0


@dataclass(frozen=True)
class _Missing:
    reason: str
    # The node where the prediction stopped; None at that node itself.
    cause: str | None = None


@dataclass(frozen=True)
class _Chain:
    """A node's value as an elementwise function of one root node's value."""

    root: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    # Identifies fn for the integral cache: the ops and their constants, root to node.
    key: Any


def _identity_chain(root: str) -> _Chain:
    # A copy, so that in-place activations (ReLU(inplace=True)) never touch the grid itself.
    return _Chain(root, torch.Tensor.clone, ("identity",))


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
        of a Conv1d/2d/3d module; None where positions are not modelled (docs/predictor.md)."""
        conv = node.module
        src = self.graph[node.inputs[0]].shape
        if (node.kind is not OpKind.CONV or not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed
                or src is None or node.shape is None or len(src) != len(node.shape)):
            return None
        d = len(conv.kernel_size)
        s_in, s_out = tuple(src[-d:]), tuple(node.shape[-d:])
        if len(src) != d + 2 or max(math.prod(s_in), math.prod(s_out)) > _MAX_POSITIONS:
            return None
        key = (s_in, s_out, tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation),
               tuple(conv._reversed_padding_repeated_twice), conv.padding_mode)
        if key not in _TAPS:
            if len(_TAPS) >= 256:
                _TAPS.clear()
            # _reversed_padding_repeated_twice: (left, right) per dim, last dim first.
            left = [conv._reversed_padding_repeated_twice[2 * (d - 1 - k)] for k in range(d)]
            _TAPS[key] = _tap_index(s_in, s_out, conv.kernel_size, conv.stride, conv.dilation, left, conv.padding_mode)
        return _TAPS[key], s_in, s_out

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


def _tap_index(s_in, s_out, kernel, stride, dilation, left, mode) -> np.ndarray:
    """taps[t, o]: the flat input position that tap t reads at output position o, P_in (a
    zero) where it reads zero padding; the other padding modes read an input position."""
    idx = np.zeros((1, 1), dtype=np.int64)  # (taps so far, output positions so far)
    valid = np.ones((1, 1), dtype=bool)
    for n, k, st, dl, lf, o in zip(s_in, kernel, stride, dilation, left, s_out):
        i = np.arange(k)[:, None] * dl + np.arange(o)[None, :] * st - lf  # (k, o)
        inside = (i >= 0) & (i < n)
        if mode == "circular":
            i = i % n
        elif mode == "reflect":
            i = np.abs(i)
            i = np.where(i >= n, 2 * (n - 1) - i, i)
        elif mode == "replicate":
            i = np.clip(i, 0, n - 1)
        if mode != "zeros":
            inside = np.ones_like(inside)
        idx = (idx[:, None, :, None] * n + i[None, :, None, :]).reshape(idx.shape[0] * k, -1)
        valid = (valid[:, None, :, None] & inside[None, :, None, :]).reshape(idx.shape)
    return np.where(valid, idx, math.prod(s_in))


def _conv_map(s: _State, taps_info, c_in: float, w_sq: float, w_mean: float, b_sq: float, b_mean: float) -> _State:
    """A convolution position by position (docs/predictor.md): each output position sums the
    taps that fall inside the input; ``c_in`` input channels per tap."""
    taps, s_in, s_out = taps_info
    sp = s.sp if s.sp is not None and s.sp.shape == s_in else _uniform_map(s, s_in)
    K = len(sp.mu)
    # A zero appended as class K: what a tap over the zero padding reads.
    mu, v, N = (np.append(a, 0.0) for a in (sp.mu, sp.v, sp.N))
    Q = np.zeros((K + 1, K + 1))
    Q[:K, :K] = sp.Q
    # Output positions whose taps read the same input classes are one output class;
    # reads[t, k]: the input class that tap t reads at the positions of output class k.
    cls, count, reads = _classes(np.append(sp.cls, K)[taps])
    gain = c_in * w_sq
    mu1 = c_in * w_mean * mu[reads].sum(axis=0) + b_mean
    v1, N1 = gain * v[reads].sum(axis=0), gain * N[reads].sum(axis=0)
    Q1 = sum(Q[np.ix_(t, t)] for t in reads)
    Q1 = np.outer(mu1, mu1) + c_in * (w_sq - w_mean**2) * Q1 + (b_sq - b_mean**2)
    return _Spatial(s_out, cls, count, mu1, Q1, v1, N1).state()


def _batch_norm_map(sp: _Spatial, g_mean: float, g_sq: float, b_mean: float, b_sq: float, eps: float) -> _State:
    """BatchNorm of a map: each channel centred by its mean over positions (and the data),
    scaled by its variance over positions and data (docs/predictor.md)."""
    row = sp.Q @ sp.count / len(sp.cls)  # mean over positions q of Q[p, q]
    total = sp.average(row)
    centred = sp.Q - row[:, None] - row[None, :] + total  # mean_c (m_cp - mu_c)(m_cq - mu_c)
    var = sp.average(np.diag(centred)) + sp.average(sp.v)  # per-channel variance, averaged
    scale = g_sq / (var + eps)
    shift = (sp.mu - sp.average(sp.mu)) / math.sqrt(var + eps)
    mu1 = g_mean * shift + b_mean
    Q1 = scale * centred + b_mean * g_mean * (shift[:, None] + shift[None, :]) + b_sq
    return sp.like(mu1, Q1, scale * sp.v, scale * sp.N).state()


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


# --------------------------------------------------------------------------------------
# The Gaussian integrals

_Z_RANGE = 7.0           # z in [-7, 7]: the tails beyond weigh < 1e-11
_EVALS = 20000           # function evaluations per integral (about 0.1-0.3 ms)
# With Gauss-Hermite neuron means (a map's classes need dozens of such integrals per node)
# fewer: averaging over the means smooths a kink (ReLU); on the benchmark models this moves
# predicted NLCs by under 0.4% and makes a CIFAR ResNet-18's prediction ~3x faster.
_GAUSS_EVALS = 4096
_SINGLE_MEAN_EVALS = 32768  # z-nodes when all neurons share one mean (after BatchNorm)
_GH_NODES = 24           # Gauss-Hermite nodes over m while the m-spread is <= sqrt(v)
_M_RANGE = 8.5           # the m-grid covers mean +- 8.5 spreads
_MAX_UNIFORM = 200       # half-width, in steps, of a uniform m-grid; beyond it: two scales
_LINEAR_BELOW = 1e-7     # sqrt(v) / |m| below which a neuron is linear
_MAX_POSITIONS = 1024   # larger maps: positions not modelled (Q has P^2 entries, 8 MB here)
_TAPS: dict[Any, np.ndarray] = {}
_BATCH = 16          # states per evaluation in _hermite_moments_into_cache (bounds its temporaries)
_HERMITE_TERMS = 24     # terms of the Mehler expansion of neuron-mean correlations
# Integrals: _moments results by (key, M, v, mean), _moments_with_modes ones by (key,
# "modes", M, v, mean, the modes' covariance).
_CACHE: dict[Any, Any] = {}
_MODULES64: dict[Any, nn.Module] = {}
_CACHE_SIZE = 20000
_MODE_STEP = 0.02       # the (b, a) stencil of _moments_with_modes
_STENCIL_COARSER = 8    # its z-grid against _moments'
_MAX_SHIFT_VAR = 0.05   # scale modes beyond these are dropped (_Modes.small)
_MAX_SPREAD_VAR = 0.25
_MODE_FLOOR = 1e-9      # M' below this share of M' + v': no offsets for a sample to shift along
_HERMITE = np.polynomial.hermite_e.hermegauss(_GH_NODES)


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def _gaussian_map(fn: Callable[[torch.Tensor], torch.Tensor], s: _State, key: Any, units: int | None = None,
                  first_id: int = 0) -> _State | _Missing:
    """The state after an elementwise function, N' = N E tau'^2 (cached per key and state).

    The integral runs at (M, v, mean) rounded to 9 significant digits, so that a cached value
    does not depend on which call computed it. A state with a map is mapped position by
    position, and the neuron means' correlations between positions by their Hermite
    expansion; a state with scale modes to second order in them, and the output's ``units``
    add two sources (ids ``first_id``, ``first_id + 1``; docs/predictor.md).
    """
    if s.sp is not None:
        return _gaussian_map_spatial(fn, s.sp, key)
    if s.modes is not None and units and s.modes.small():
        mixed = _mixed_moments(fn, key, s)
        if mixed is not None:
            out, J, unit, H = mixed.out, mixed.J, mixed.unit, mixed.H
            # The offsets' variance each source turns into data variance, with its NLC.
            converted = np.clip(-s.modes.per_source(H), 0.0, None)
            N = s.N * out.N + float(converted @ s.modes.nlc2)
            modes = s.modes.mapped(J).plus(unit / units, first_id, N / max(out.v, 1e-300))
            return _State(M=out.M, v=out.v, mean=out.mean, N=N, modes=modes)
    unit = _unit_moments(fn, s.M, s.v, s.mean, key)
    if isinstance(unit, _Missing):
        return unit
    # _moments returns the gain E tau'^2 in the N slot.
    out, _ = unit
    return _State(M=out.M, v=out.v, mean=out.mean, N=s.N * out.N)


def _mixed_moments(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, s: _State):
    """_moments_with_modes at state ``s`` (its averages and its modes' covariance), cached."""
    cov = s.modes.cov()
    args = tuple(_round(float(x)) for x in (s.M, s.v, s.mean, cov[0, 0], cov[0, 1], cov[1, 1]))
    return _cached((key, "modes", *args) if key is not None else None, lambda: _moments_with_modes(fn, key, *args))


def _with_map_modes(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, root: _State, out: _State | _Missing,
                    units: int, first_id: int) -> _State | _Missing:
    """``out``, an elementwise function of a map with scale modes (``root``), with its modes
    and channel shifts (docs/predictor.md, "Finite width"). The statistics per position stay
    the wide limit's; the modes map as in a (batch, features) layer, at the map's averages;
    a channel's shift d passes with the slope, E_c (E tau'_c)^2 D; and the offsets' variance
    that the modes' shifts turn into data variance is the same at every position of a channel
    (a neuron's offset is its channel's), so it is a channel shift too."""
    if isinstance(out, _Missing) or not root.modes.small():
        return out
    mixed = _mixed_moments(fn, key, root)
    if mixed is None:
        return out
    nlc2 = root.modes.nlc2
    converted = np.clip(-root.modes.per_source(mixed.H), 0.0, None)
    dv, dN = float(converted.sum()), float(converted @ nlc2)
    if out.sp is not None:
        out = out.sp.like(out.sp.mu, out.sp.Q, out.sp.v + dv, out.sp.N + dN).state()
    else:
        out = replace(out, v=out.v + dv, N=out.N + dN)
    # The shifts along the output's offsets are the mode b'; the rest of the offsets' shifts,
    # a random pattern over the channels, is a channel shift.
    modes = root.modes.mapped(mixed.J)
    along = modes.coef[:, 0] ** 2 * out.M
    rest = np.clip(root.modes.per_source(mixed.gram) - along, 0.0, None)
    modes = modes.plus(mixed.unit / units, first_id, out.N / max(out.v, 1e-300))
    return replace(out, modes=modes, D=mixed.slope2 * root.D + float(rest.sum()),
                   N_D=mixed.slope2 * root.N_D + float(rest @ nlc2))


def _unit_moments(fn: Callable[[torch.Tensor], torch.Tensor], M: float, v: float, mean: float, key: Any):
    M, v, mean = _round(M), _round(v), _round(mean)
    return _cached((key, M, v, mean) if key is not None else None, lambda: _moments(fn, M, v, mean))


def _cached(cache_key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in _CACHE under ``cache_key`` (None: not kept)."""
    if cache_key is not None and cache_key in _CACHE:
        return _CACHE[cache_key]
    value = compute()
    if cache_key is not None:
        _cache_put(cache_key, value)
    return value


def _cache_put(cache_key: Any, value: Any) -> None:
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[cache_key] = value


def _gaussian_map_spatial(fn: Callable[[torch.Tensor], torch.Tensor], sp: _Spatial, key: Any) -> _State | _Missing:
    diag = np.diag(sp.Q)
    P = len(sp.mu)
    M1, v1, mu1, gain = (np.empty(P) for _ in range(4))
    herm = np.zeros((P, _HERMITE_TERMS))
    args = [(_round(float(diag[p])), _round(float(sp.v[p])), _round(float(sp.mu[p]))) for p in range(P)]
    _hermite_moments_into_cache(fn, args, key)
    units: dict[tuple[float, float, float], Any] = {}
    for p, a in enumerate(args):
        unit = units.get(a)
        if unit is None:
            unit = units[a] = _unit_moments(fn, *a, key)
        if isinstance(unit, _Missing):
            return unit
        out, herm[p] = unit
        M1[p], v1[p], mu1[p], gain[p] = out.M, out.v, out.mean, out.N
    # Correlation across channels of the neuron means at positions p, q (Gaussian over
    # channels, A2), and Mehler's formula for the covariance of f_p(m_p), f_q(m_q).
    C = sp.Q - np.outer(sp.mu, sp.mu)
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(np.outer(sd, sd) > 0, C / np.outer(sd, sd), 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    var1 = np.clip(M1 - mu1 * mu1, 0.0, None)
    # The part of each Var_c f_p beyond the terms kept, taken as one term of the next order.
    tail = np.sqrt(np.clip(var1 - (herm * herm).sum(axis=1), 0.0, None))
    C1 = np.outer(tail, tail)
    for n in range(_HERMITE_TERMS - 1, -1, -1):  # Horner in rho
        C1 = rho * (C1 + np.outer(herm[:, n], herm[:, n]))
    np.fill_diagonal(C1, var1)  # exact on the diagonal
    return sp.like(mu1, C1 + np.outer(mu1, mu1), v1, sp.N * gain).state()


def _hermite_moments_into_cache(fn: Callable[[torch.Tensor], torch.Tensor], args: list[tuple[float, float, float]], key: Any) -> None:
    """_moments of the states ``args`` (rounded) whose m-grid is the Gauss-Hermite one, all
    in one evaluation of ``fn``, into the cache (a map's classes need dozens: one call each
    would cost more in overhead than in arithmetic). The same nodes and sums as _moments."""
    if key is None:
        return
    todo = []
    for a in dict.fromkeys(args):
        M, v, mean = a
        sv, sm = math.sqrt(v), math.sqrt(max(M - mean * mean, 0.0))
        if (key, *a) not in _CACHE and 1e-6 * (abs(mean) + sv) < sm <= sv:
            todo.append((a, sv, sm))
    for start in range(0, len(todo), _BATCH):
        _hermite_moments_batch(fn, todo[start:start + _BATCH], key)


def _hermite_moments_batch(fn: Callable[[torch.Tensor], torch.Tensor], todo: list, key: Any) -> None:
    mean = np.array([a[2] for a, _, _ in todo])[:, None]
    sv, sm = (np.array(c)[:, None] for c in list(zip(*todo))[1:])
    x, w = _HERMITE
    ms, wm = mean + sm * x, w / w.sum()  # (K, nodes)
    z, wz = _z_grid(_z_count(len(x)))
    h = np.empty(ms.shape + (len(z) + 1,))
    np.multiply(sv[:, :, None], z, out=h[..., :-1])
    h[..., :-1] += ms[..., None]
    h[..., -1] = ms
    try:
        y, dy = _values_and_slopes(fn, torch.from_numpy(h))
    except Exception:
        return  # _moments reports it, one state at a time
    e_tau = np.einsum("kjz,z->kj", y[..., :-1], wz)
    var_tau = np.einsum("kjz,z->kj", (y[..., :-1] - e_tau[..., None]) ** 2, wz)
    gain = np.einsum("kjz,z->kj", dy[..., :-1] ** 2, wz)
    linear = sv <= _LINEAR_BELOW * np.abs(ms)
    e_tau = np.where(linear, y[..., -1], e_tau)
    var_tau = np.where(linear, sv * sv * dy[..., -1] ** 2, var_tau)
    gain = np.where(linear, dy[..., -1] ** 2, gain)
    # Sums by einsum, not `@`: numpy hands small products to BLAS, whose per-call cost
    # (thread hand-off) was most of this function's time.
    stats = [np.einsum("kj,j->k", c, wm) for c in (e_tau * e_tau, var_tau, e_tau, gain)]
    u = (ms - mean) / sm
    H = np.empty((_HERMITE_TERMS,) + u.shape)  # normalised He_1 .. He_T at the nodes
    h_prev, H[0] = np.ones_like(u), u
    for n in range(1, _HERMITE_TERMS):
        H[n] = (u * H[n - 1] - math.sqrt(n) * h_prev) / math.sqrt(n + 1)
        h_prev = H[n - 1]
    herm = np.einsum("kj,nkj,j->kn", e_tau, H, wm)
    for k, (a, _, _) in enumerate(todo):
        out = _State(*(float(c[k]) for c in stats))
        if all(math.isfinite(c) for c in (out.M, out.v, out.mean, out.N)):
            _cache_put((key, *a), (out, herm[k]))


def _z_count(m_nodes: int) -> int:
    """z-nodes per neuron mean (even, so that z = 0 is a cell edge): a single mean gets many,
    since a kink of tau inside a cell costs O(dz) and nothing smooths it out; Gauss-Hermite
    means (smooth averaging) _GAUSS_EVALS in all, other m-grids (an odd number of nodes, or
    hundreds) _EVALS."""
    if m_nodes == 1:
        return _SINGLE_MEAN_EVALS
    evals = _GAUSS_EVALS if m_nodes == _GH_NODES else _EVALS
    return int(np.clip(evals // m_nodes // 2 * 2, 64, 4096))


@functools.lru_cache(maxsize=16)
def _z_grid(n_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint nodes on [-7, 7] and their Gaussian weights (see _moments)."""
    dz = 2 * _Z_RANGE / n_z
    z = -_Z_RANGE + dz * (np.arange(n_z) + 0.5)
    wz = np.exp(-0.5 * z * z)
    wz /= wz.sum()
    # Unit variance on the grid too, so that affine maps (a scalar mul, a shift) come out
    # with NLC 1 and variance a^2 v to rounding precision.
    z /= math.sqrt(np.einsum("z,z->", wz, z * z))
    z.flags.writeable = wz.flags.writeable = False
    return z, wz


def _moments(fn: Callable[[torch.Tensor], torch.Tensor], M: float, v: float, mean: float) -> tuple[_State, np.ndarray] | _Missing:
    """E_m over neuron means m ~ N(mean, M - mean^2) of the per-neuron statistics of
    tau(m + sqrt(v) z), z ~ N(0, 1). Returns (M', v', mean', E tau'^2) as a _State, and
    the coefficients a_n = E_u[f(mean + s u) He_n(u)] / sqrt(n!), n = 1.._HERMITE_TERMS, of
    the neuron-mean map f(m) = E_z tau(m + sqrt(v) z) (s^2 = M - mean^2; zero when s = 0)."""
    sv, sm = math.sqrt(v), math.sqrt(max(M - mean * mean, 0.0))
    ms, wm = _m_grid(mean, sm, sv)
    z, wz = _z_grid(_z_count(len(ms)))
    # Row k: neuron mean ms[k], inputs ms[k] + sqrt(v) z; the last column is z = 0 itself,
    # used for neurons too narrow for the z-grid to resolve in float64 (linear limit).
    h = np.concatenate([ms[:, None] + sv * z[None, :], ms[:, None]], axis=1)
    try:
        y, dy = _values_and_slopes(fn, torch.from_numpy(h))
    except Exception as exc:
        return _Missing(f"cannot evaluate the elementwise function on a grid ({type(exc).__name__}: {exc})")
    # einsum, not matmul: a long 1-row matmul goes to multithreaded BLAS, which stalls for
    # milliseconds on a busy machine.
    e_tau = np.einsum("kz,z->k", y[:, :-1], wz)
    var_tau = np.einsum("kz,z->k", (y[:, :-1] - e_tau[:, None]) ** 2, wz)
    gain = np.einsum("kz,z->k", dy[:, :-1] ** 2, wz)
    linear = sv <= _LINEAR_BELOW * np.abs(ms)
    e_tau = np.where(linear, y[:, -1], e_tau)
    var_tau = np.where(linear, v * dy[:, -1] ** 2, var_tau)
    gain = np.where(linear, dy[:, -1] ** 2, gain)
    out = _State(M=float(wm @ (e_tau * e_tau)), v=float(wm @ var_tau), mean=float(wm @ e_tau), N=float(wm @ gain))
    if not all(math.isfinite(x) for x in (out.M, out.v, out.mean, out.N)):
        return _Missing("the elementwise function overflows at this operating point")
    herm = np.zeros(_HERMITE_TERMS)
    if len(ms) > 1:
        u = (ms - mean) / sm
        h_prev, h = np.ones_like(u), u  # normalised He_0, He_1
        for n in range(1, _HERMITE_TERMS + 1):
            herm[n - 1] = float(wm @ (e_tau * h))
            h_prev, h = h, (u * h - math.sqrt(n) * h_prev) / math.sqrt(n + 1)
    return out, herm


class _Mixed(NamedTuple):
    """What _moments_with_modes returns besides the population statistics ``out``."""

    out: _State
    J: np.ndarray      # (b, a) -> the output's (b', a'), 2 x 2
    unit: np.ndarray   # the covariance of (b', a') one output unit adds (over n units: / n)
    H: np.ndarray      # second order of the output offsets: dM = -c^T H c per source c
    gram: np.ndarray   # c^T gram c: the variance of the neuron offsets' shifts per source c
    slope2: float      # E_m (E_z tau')^2: the gain of a shift of all of a neuron's inputs


def _moments_with_modes(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, M: float, v: float, mean: float,
                        var_b: float, cov: float, var_a: float) -> _Mixed | None:
    """_moments for a state whose samples differ in scale (docs/predictor.md, "Finite
    width"): sample x's pre-activations are m_i (1 + b_x) + sqrt(v_f (1 + a_x)) z, where
    (b, a) has covariance [[var_b, cov], [cov, var_a]] over the samples and v_f = v - var_b M
    is what the shifts leave of the population's v. To second order in
    (b, a), from the 3 x 3 stencil of the integrals at b, a in {-h, 0, h}: returns the
    population statistics (M', v', mean', and E tau'^2 at b = a = 0) as a _State, and the
    maps of _Mixed. None where the stencil cannot resolve the
    neurons (a z-grid too coarse for them; the caller then drops the modes).

    The statistics at b = a = 0 are _moments' (cached per ``key``); the stencil, which only
    supplies corrections of a few percent and relative changes, runs on a z-grid
    _STENCIL_COARSER times coarser, on the same nodes at every stencil point."""
    # The population's v holds the shifts' variance var_b M: the rest is the fluctuation.
    v = v - var_b * M
    sv, sm = math.sqrt(max(v, 0.0)), math.sqrt(max(M - mean * mean, 0.0))
    ms, wm = _m_grid(mean, sm, sv)
    if sv <= _LINEAR_BELOW * float(np.abs(ms).max()) or sv == 0.0:
        return None
    base = _unit_moments(fn, M, v, mean, key)
    if isinstance(base, _Missing):
        return None
    base = base[0]
    z, wz = _z_grid(max(64, _z_count(len(ms)) // _STENCIL_COARSER // 2 * 2))
    steps = np.array([-_MODE_STEP, 0.0, _MODE_STEP])
    b, a = np.meshgrid(steps, steps, indexing="ij")  # [b-index, a-index]
    h = ms[None, None, :, None] * (1 + b)[..., None, None] + np.sqrt(v * (1 + a))[..., None, None] * z
    try:
        with torch.no_grad():  # values only: no slopes are needed here
            y = fn(torch.from_numpy(h.reshape(-1))).view(h.shape).numpy()
    except Exception:
        return None
    f = np.einsum("bamz,z->bam", y, wz)
    g = np.einsum("bamz,z->bam", y * y, wz)
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        return None
    d = _MODE_STEP

    def d1(x):  # (d/db, d/da) at 0, per neuron mean
        return (x[2, 1] - x[0, 1]) / (2 * d), (x[1, 2] - x[1, 0]) / (2 * d)

    def second_order(x):  # E_{b,a} x to second order, per neuron mean
        xbb = (x[2, 1] - 2 * x[1, 1] + x[0, 1]) / d**2
        xaa = (x[1, 2] - 2 * x[1, 1] + x[1, 0]) / d**2
        xba = (x[2, 2] - x[2, 0] - x[0, 2] + x[0, 0]) / (4 * d * d)
        return x[1, 1] + 0.5 * (xbb * var_b + 2 * xba * cov + xaa * var_a)

    f0 = f[1, 1]
    df = second_order(f) - f0
    dM = 2 * float(wm @ (f0 * df))  # E_m (E f)^2 - E_m f^2 to second order
    dq = float(wm @ (second_order(g) - g[1, 1]))
    M1 = base.M + dM
    # E tau'^2 is taken at b = a = 0: tau'^2 is often a step (ReLU), whose second
    # differences on a finite grid are noise, and for a scale-free tau it does not change.
    out = _State(M=max(M1, 0.0), v=max(base.v + dq - dM, 0.0), mean=base.mean + float(wm @ df), N=base.N)
    gv = g - f * f  # Var_z tau: a sample's fluctuation variance, per neuron mean
    f_b, f_a = d1(f)
    gv_b, gv_a = d1(gv)
    vf = float(wm @ gv[1, 1])  # the output's fluctuation variance (v' less the shifts)
    J = np.zeros((2, 2))
    # b' = the output offsets' share of a sample's shift (raw moments: the common offset
    # scales too); a' = the relative change of its fluctuation variance.
    aligned = out.M > _MODE_FLOOR * (out.M + out.v)
    if aligned:
        J[0] = wm @ (f0 * f_b) / out.M, wm @ (f0 * f_a) / out.M
    if vf > 0:
        J[1] = wm @ gv_b / vf, wm @ gv_a / vf
    # One unit's share of a sample's (b', a'): over n independent units i, b'_x =
    # mean_i m'_i (y_i(x) - m'_i) / M' and a'_x = mean_i (y_i(x) - m'_i)^2 / vf - 1 have
    # these (co)variances times n.
    c = y[1, 1] - f0[:, None]
    var_tau = np.einsum("mz,z->m", c * c, wz)
    c3, c4 = np.einsum("mz,z->m", c**3, wz), np.einsum("mz,z->m", c**4, wz)
    unit = np.zeros((2, 2))
    if aligned:
        unit[0, 0] = wm @ (f0 * f0 * var_tau) / out.M**2
    if vf > 0:
        unit[1, 1] = wm @ (c4 - var_tau**2) / vf**2
        if aligned:
            unit[0, 1] = unit[1, 0] = wm @ (f0 * c3) / (out.M * vf)
    # dM = -sum_l c_l^T H c_l over the sources' coefficients c_l (second order).
    f_bb = (f[2, 1] - 2 * f0 + f[0, 1]) / d**2
    f_aa = (f[1, 2] - 2 * f0 + f[1, 0]) / d**2
    f_ba = (f[2, 2] - f[2, 0] - f[0, 2] + f[0, 0]) / (4 * d * d)
    H = np.array([[wm @ (f0 * f_bb), wm @ (f0 * f_ba)], [wm @ (f0 * f_ba), wm @ (f0 * f_aa)]])
    # E_m of the outer product of (d/db, d/da) E_z tau: the variance of the offsets' shifts.
    gram = np.array([[wm @ (f_b * f_b), wm @ (f_b * f_a)], [wm @ (f_b * f_a), wm @ (f_a * f_a)]])
    # E_m (E_z tau')^2, the gain of a shift of a whole channel (Stein: E_z tau' = E_z tau z / sqrt(v)).
    slope2 = float(wm @ (np.einsum("mz,z->m", y[1, 1] * z, wz) / sv) ** 2)
    mixed = _Mixed(out, J, unit, H, gram, slope2)
    if not all(np.isfinite(x).all() for x in mixed[1:]):
        return None
    return mixed


def _m_grid(mean: float, sm: float, sv: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E_m over m ~ N(mean, sm^2) (docs/predictor.md, "Numerics")."""
    # A spread below 1e-6 of the scale changes the integrals by < 1e-12 (and is often the
    # rounding error of a centring, e.g. a BatchNorm of a map): one node.
    if sm <= 1e-6 * (abs(mean) + sv):
        return np.array([mean]), np.ones(1)
    if sm <= sv:
        x, w = _HERMITE
        return mean + sm * x, w / w.sum()
    # Steps of sqrt(v)/2 resolve what the z-smoothing leaves of a kink; 0.1 sm the density.
    step = min(0.1 * sm, 0.5 * sv) if sv > 0 else 0.1 * sm
    n = math.ceil(_M_RANGE * sm / step)
    if n <= _MAX_UNIFORM:
        ms = mean + step * np.arange(-n, n + 1)
    else:
        # Two scales: steps of 0.05 sm over the density, steps of sqrt(v)/2 within 20 sqrt(v)
        # of 0, beyond which a kink at 0 is outside every row's z-range.
        coarse = mean + sm * np.linspace(-_M_RANGE, _M_RANGE, 341)
        fine = 0.5 * sv * np.arange(-40, 41)
        ms = np.union1d(coarse, np.clip(fine, mean - _M_RANGE * sm, mean + _M_RANGE * sm))
    # Trapezoid weights times the density.
    w = np.zeros_like(ms)
    w[:-1] += np.diff(ms) / 2
    w[1:] += np.diff(ms) / 2
    w *= np.exp(-0.5 * ((ms - mean) / sm) ** 2)
    return ms, w / w.sum()


def _values_and_slopes(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """tau(h) and tau'(h) elementwise, in float64: autograd, else central differences."""
    flat = h.flatten()  # 1-D, as the function was checked on
    x = flat.clone().requires_grad_(True)
    try:
        y = fn(x)
        if y.requires_grad:
            (dy,) = torch.autograd.grad(y.sum(), x)
            return y.detach().view_as(h).numpy(), dy.view_as(h).numpy()
    except RuntimeError:
        pass  # e.g. an op without a derivative formula
    with torch.no_grad():
        step = 1e-5 * (1.0 + flat.abs())
        y = fn(flat.clone())
        dy = (fn(flat + step) - fn(flat - step)) / (2 * step)
    return y.view_as(h).numpy(), dy.view_as(h).numpy()
