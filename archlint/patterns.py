"""Structural queries over an ArchGraph that several rules share.

All pure functions of the graph (no torch). The central notion is the *main path*: the nodes
that every path from the model's signal sources (floating-point inputs, or embedding outputs
for token inputs) to its output goes through, in forward order. Between two consecutive
main-path nodes lies either nothing (a plain chain) or a *region* of parallel paths: a
residual block (one of the paths has no nonlinearity: the skip), or branches that are all
nonlinear (attention's queries and keys, an inception block, a gated unit).

A plain stack is a run of nonlinear layers along the main path with no skip region in it:
its NLC compounds multiplicatively (digest §1.6), which is what ARC103 measures.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from archlint import dtypes
from archlint.graph import ArchGraph, Node, OpKind

# Ops that cut the dependence on their input: their output carries no signal.
_DETACHING_OPS = {"detach", "detach_", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "size", "dim"}
# Kinds that neither transform the signal's values nor mark a layer boundary.
_TRANSPARENT = {OpKind.IDENTITY, OpKind.RESHAPE}
# The ReLU family: piecewise linear with a kink at 0 and (near-)zero slope below it, so units
# whose pre-activation stays negative are dead.
RELU_FAMILY = {"relu", "relu6", "leaky_relu", "prelu", "rrelu", "threshold"}
# Bounded activations: too large an input saturates them, and their collapse is units pinned
# near one value rather than switched on or off.
SATURATING = {"tanh", "sigmoid", "hardtanh", "softsign", "hardsigmoid"}
# Maps that are commonly and deliberately applied to a model's output (probabilities, a
# bounded range): not "an activation on the logits".
OUTPUT_MAPS = {"sigmoid", "tanh", "softmax", "log_softmax", "softmin", "logsigmoid", "hardsigmoid", "hardtanh"}


def activation_name(node: Node) -> str | None:
    """The canonical activation name of an activation node ("relu", "tanh", ...)."""
    if node.kind != OpKind.ACTIVATION:
        return None
    return str(node.attrs.get("activation") or node.op).lower()


def is_elementwise_activation(node: Node) -> bool:
    return node.kind == OpKind.ACTIVATION and bool(node.attrs.get("elementwise", True))


def carries_signal(node: Node) -> bool:
    """A floating-point (or complex) tensor: token ids and shapes are not signals."""
    return dtypes.is_floating(node.dtype) or dtypes.is_complex(node.dtype)


def _may_carry_signal(node: Node) -> bool:
    """Floating point, or of unknown type: a module returning a tuple (an LSTM's output and
    state, attention's output and weights) passes the signal on to what unpacks it."""
    return node.dtype is None or carries_signal(node)


def sources(graph: ArchGraph) -> list[str]:
    """Where the signal enters, for the rules and the measurement alike: the floating-point
    inputs; for integer inputs (token ids) the embeddings computed from them, else the first
    floating-point node they feed (``x.float()``, ``one_hot(x).float()``). Empty when no
    floating-point node depends on the inputs."""
    floats = [n.name for n in graph.inputs if dtypes.is_floating(n.dtype)]
    integer = {n.name for n in graph.inputs if not dtypes.is_floating(n.dtype)}
    if not integer:
        return floats
    fed = [n for n in graph if n.kind != OpKind.INPUT and dtypes.is_floating(n.dtype) and graph.ancestors(n.name) & integer]
    embeddings = [n.name for n in fed if n.kind == OpKind.EMBEDDING]
    return floats + ((embeddings or [fed[0].name]) if fed else [])


def has_token_inputs(graph: ArchGraph) -> bool:
    """Some input is integer (token ids): the signal enters at an embedding (``sources``)."""
    return any(not dtypes.is_floating(n.dtype) for n in graph.inputs)


def signal_nodes(graph: ArchGraph) -> set[str]:
    """Nodes whose value depends on a signal source through floating-point tensors, except
    through ops that cut the dependence (``detach``, ``zeros_like``, ``size``)."""
    reached = set(sources(graph))
    for node in graph.nodes:
        if node.name in reached or node.op in _DETACHING_OPS or not _may_carry_signal(node):
            continue
        if any(i in reached for i in node.inputs):
            reached.add(node.name)
    return reached


def live_signal_nodes(graph: ArchGraph) -> set[str]:
    """Signal nodes that some value the model returns depends on: every returned value, not
    only the measured output (a second head is judged too). What only a branch's condition
    reads (``if x.abs().mean() > t:``, captured eagerly) is not. All signal nodes where the
    graph does not know what is returned."""
    signal = signal_nodes(graph)
    returned = [name for name in graph.returned if name in graph]
    if not returned:
        return signal
    live = set(returned)
    for name in returned:
        live |= graph.ancestors(name)
    return signal & live


def signal_region(graph: ArchGraph) -> list[str]:
    """Signal nodes that the output depends on, in forward order (the output included)."""
    if graph.output is None or graph.output not in graph:
        return []
    signal = signal_nodes(graph)
    wanted = graph.ancestors(graph.output) | {graph.output}
    return [n.name for n in graph.nodes if n.name in signal and n.name in wanted]


def main_path(graph: ArchGraph) -> list[str]:
    """The nodes every source-to-output path goes through, in forward order.

    One sweep in forward order: after a node is processed, the edges from processed to
    unprocessed nodes form a cut; the node is on every path exactly when it is the origin of
    all of them (and no source is still to come).
    """
    region = signal_region(graph)
    inside = set(region)
    if not region:
        return []
    starts = {s for s in sources(graph) if s in inside}
    pending_sources = len(starts)
    crossing: Counter[str] = Counter()
    path = []
    for name in region:
        if name in starts:
            pending_sources -= 1
        for i in graph[name].inputs:
            if i in inside and crossing[i] > 0:
                crossing[i] -= 1
                if crossing[i] == 0:
                    del crossing[i]
        outs = [u for u in graph.users(name) if u in inside]
        if outs:
            crossing[name] += len(outs)
        if pending_sources == 0 and set(crossing) <= {name}:
            path.append(name)
    return path


def _has_linear_path(graph: ArchGraph, start: str, end: str, between: set[str]) -> bool:
    """Is there a path start -> end through ``between`` nodes none of which is nonlinear?"""
    stack, seen = [start], {start}
    while stack:
        cur = stack.pop()
        for u in graph.users(cur):
            if u == end:
                return True
            if u in between and u not in seen and not graph[u].is_nonlinear:
                seen.add(u)
                stack.append(u)
    return False


_CONCATENATIONS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"}


def _merges_paths(node: Node) -> bool:
    return node.kind == OpKind.ADD or (node.kind == OpKind.RESHAPE and node.op in _CONCATENATIONS)


@dataclass
class Region:
    """What lies between two consecutive main-path nodes ``start`` and ``end``."""

    start: str
    end: str
    nodes: list[str]
    # One of the parallel paths has no nonlinearity: a skip connection around the others.
    skip: bool
    nonlinear: list[str] = field(default_factory=list)


def regions(graph: ArchGraph) -> list[Region]:
    """The parallel regions along the main path (plain chain links are not listed)."""
    path = main_path(graph)
    region = signal_region(graph)
    position = {name: i for i, name in enumerate(region)}
    out = []
    for a, b in zip(path, path[1:]):
        between = region[position[a] + 1:position[b]]
        if not between:
            continue
        inner = set(between)
        out.append(Region(
            start=a, end=b, nodes=between,
            # An addition (ResNet) or a concatenation (DenseNet, DLA's aggregation,
            # ShuffleNet's untouched half) merges a skip with a branch; a product of two
            # linear paths (a bilinear or gated unit) is a nonlinear layer, not a skip.
            skip=_merges_paths(graph[b]) and _has_linear_path(graph, a, b, inner),
            nonlinear=[n for n in between if graph[n].is_nonlinear],
        ))
    return out


@dataclass
class Layer:
    """One nonlinear layer of a plain stack: its nonlinearity and the ops that lead to it."""

    node: str
    # E.g. "Linear-BatchNorm1d-ReLU": the value-changing ops since the previous layer.
    signature: str


@dataclass
class PlainRun:
    """Consecutive nonlinear layers on the main path with no skip connection among them."""

    # The main-path node the run starts from (a source, or the merge of the last skip).
    start: str
    layers: list[Layer]

    @property
    def end(self) -> str:
        return self.layers[-1].node


def plain_runs(graph: ArchGraph) -> list[PlainRun]:
    """Maximal plain stacks along the main path, in forward order."""
    path = main_path(graph)
    by_start = {r.start: r for r in regions(graph)}
    runs: list[PlainRun] = []
    current = PlainRun(start=path[0], layers=[]) if path else None
    ops: list[str] = []
    for name in path:
        node = graph[name]
        if name != current.start and node.kind not in _TRANSPARENT and node.kind != OpKind.POOL:
            ops.append(node.op)
        if node.is_nonlinear and name != current.start:
            current.layers.append(Layer(name, "-".join(ops)))
            ops = []
        region = by_start.get(name)
        if region is None:
            continue
        if region.skip:
            if current.layers:
                runs.append(current)
            current = PlainRun(start=region.end, layers=[])
            ops = []
        elif region.nonlinear:
            # All parallel paths are nonlinear (attention, an inception block): one layer.
            current.layers.append(Layer(region.end, "-".join(ops + [graph[region.nonlinear[0]].op])))
            ops = []
    if current is not None and current.layers:
        runs.append(current)
    return runs


def has_skip_connections(graph: ArchGraph) -> bool:
    return any(r.skip for r in regions(graph))


def describe_layers(layers: list[Layer]) -> str:
    """"20 Linear-BatchNorm1d-ReLU layers", or "18 nonlinear layers (16 Conv2d-ReLU, 2 Linear-ReLU)"."""
    counts = Counter(layer.signature for layer in layers)
    if len(counts) == 1:
        return f"{len(layers)} {layers[0].signature} layers"
    parts = ", ".join(f"{n} {sig}" for sig, n in counts.most_common(3))
    more = "" if len(counts) <= 3 else ", ..."
    return f"{len(layers)} nonlinear layers ({parts}{more})"


def first_op_after(graph: ArchGraph, start: str, end: str) -> Node:
    """The first value-changing main-path node after ``start`` (where a stack begins)."""
    path = main_path(graph)
    begin = path.index(start) + 1 if start in path else 0
    for name in path[begin:]:
        node = graph[name]
        if node.kind not in _TRANSPARENT:
            return node
        if name == end:
            break
    return graph[end]


def producer(graph: ArchGraph, name: str) -> Node | None:
    """The node that computes ``name``'s (first) input, through identity-like ops."""
    node = graph[name]
    while node.inputs:
        node = graph[node.inputs[0]]
        if node.kind not in _TRANSPARENT:
            return node
    return None


def has_kind(graph: ArchGraph, *kinds: OpKind) -> bool:
    return any(n.kind in kinds for n in graph.nodes)


def has_batchnorm(graph: ArchGraph) -> bool:
    return any(n.kind == OpKind.NORM and n.attrs.get("norm_type") == "batch" for n in graph.nodes)


def is_batchnorm_cnn(graph: ArchGraph) -> bool:
    """A model with convolutions and BatchNorm: the family whose NLC at initialisation did not
    rank training outcomes in the validation study (docs/validation.md). ARC101 and ARC103
    leave such models to ARC401 and ARC402, which are off by default."""
    return has_kind(graph, OpKind.CONV) and has_batchnorm(graph)


def is_batchnorm_mlp(graph: ArchGraph) -> bool:
    """A model with BatchNorm and no convolutions: the family whose output scale at
    initialisation did not rank training outcomes in the validation study. ARC202 and ARC205
    leave such models to ARC408 and ARC409, which are off by default."""
    return has_batchnorm(graph) and not has_kind(graph, OpKind.CONV)


def family_threshold(graph: ArchGraph, options: dict, name: str = "threshold") -> float:
    """A rule's threshold option ``name`` for this model's family: ``conv-<name>`` for models
    with convolutions, else ``name`` (the NLC band of MLPs does not carry over to CNNs, and the
    validation study calibrated some rules per family)."""
    return float(options[f"conv-{name}"] if has_kind(graph, OpKind.CONV) else options[name])


def prediction_margin(graph: ArchGraph) -> float:
    """How far a prediction must cross an upper threshold before a rule reports it statically.

    Without convolutions: 0.85. The prediction is the mean over inits, and one realised
    network scatters around it, ~15% for deep MLPs of width 256 (benchmarks/
    RESULTS_meanfield.md); a rule that waited for the prediction itself to cross would miss
    the networks above the threshold whose prediction is just below it, and the measurement
    dismisses the others.
    With convolutions: 1.3. CNNs with residual sums are over-predicted by 10-50% (a CIFAR
    ResNet-18 is predicted at 9.0 and measures 7.4): allowing for that bias keeps
    well-built CNNs from being flagged (and measured) on a known overestimate.
    """
    return 1.3 if has_kind(graph, OpKind.CONV) else 0.85


# The NLC of ReLU on a zero-mean Gaussian, sqrt(pi / (pi - 1)): the per-layer NLC of a
# BN-ReLU layer (digest §2.1), the common case of a deep stack.
BN_RELU_NLC = math.sqrt(math.pi / (math.pi - 1))
# The NLC that normalisation and ARC103's fix aim at: the middle of the band of about 1-3 in
# which the guide's networks generalise best (digest §3, NLC-RANGE).
TARGET_NLC = 2.0


def worth_measuring(layers: int, threshold: float) -> bool:
    """Where nothing is predicted, is a stack of ``layers`` nonlinear layers long enough to
    reach ``threshold`` at the BN-ReLU rate? Shorter ones are not measured on a guess: a
    measurement costs several forward passes, and most such stacks stay below."""
    return layers * math.log(BN_RELU_NLC) > math.log(threshold)


def pre_activations(graph: ArchGraph) -> list[tuple[Node, str]]:
    """(activation, its input) for the elementwise activations on the main path, in forward order."""
    main = set(main_path(graph))
    return [(n, n.inputs[0]) for n in graph.nodes if n.name in main and is_elementwise_activation(n) and n.inputs]


def features_after_activations(graph: ArchGraph) -> list[str]:
    """The main-path nodes after the last activation, up to the output: pooled features, the
    flattened map, the head's input and the logits."""
    path = main_path(graph)
    layers = pre_activations(graph)
    start = path.index(layers[-1][0].name) + 1 if layers else 0
    return path[start:]


def head_input(graph: ArchGraph) -> str | None:
    """The input of the model's final Linear/Conv when its output is one, else None."""
    out = graph[graph.output]
    return out.inputs[0] if out.kind in (OpKind.LINEAR, OpKind.CONV) and out.inputs else None


def screened_nodes(graph: ArchGraph) -> list[str]:
    """The nodes a screening measurement needs: what the rules' ``find`` reads (the output,
    the pre-activations, the features after the last activation, the inputs and the head's
    input). The output is always measured, and its NLC is the only one they read: the others'
    signal statistics are enough (engine.measure_graph)."""
    names = [pre for _, pre in pre_activations(graph)] + features_after_activations(graph)
    if graph.output is not None:
        names += [*sources(graph), head_input(graph) or graph.output]
    return list(dict.fromkeys(names))
