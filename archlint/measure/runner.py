"""One pass over all batches: the model runs with forward-mode tangents on every probe, and
each wanted node's sufficient statistics are accumulated over the batches."""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import jvp, vmap

from archlint import dtypes
from archlint.graph import ArchGraph, Node, OpKind
from archlint.measure.overrides import _MeasureMode, batch_statistics
from archlint.measure.report import MeasureError, failure
from archlint.trace import execute

# Half precision: node statistics are computed in float32 (_node_stats), and such a model
# is always re-checked in float64 (evaluate._Result._doubts).


@dataclass
class _PassResult:
    accs: dict[str, "_NodeAcc"]
    pools: dict[str, torch.Tensor]
    info: "_NodeInfo"


def _groups(n: int, batch_size: int, exact: bool) -> list[tuple[int, int]]:
    """Row ranges of the batches. With batch statistics every batch has exactly batch_size
    rows (a smaller last batch would be a different function); otherwise the last may be short."""
    if exact:
        return [(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


# A probe's directions are rotated in blocks of at most this many rows: enough samples in
# each direction to tame the tails (see _mixed), at a cost per row that does not grow with
# the batch. One probe's directions for a batch of 4096 784-wide inputs: 5.1 s CPU rotated
# at once (its QR and the 4096 x 4096 mixing), 0.036 s in blocks of 128, where a depth-20
# MLP's forward pass of that batch takes 0.33 s.
ROTATION_ROWS = 128


def _random_rotation(k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random rotation of k rows, as the diagonal blocks of a block-diagonal orthogonal
    matrix (at most ROTATION_ROWS rows each), each drawn uniformly (Haar): QR of a Gaussian
    matrix, with the signs of R's diagonal moved into Q."""
    blocks = []
    for start in range(0, k, ROTATION_ROWS):
        size = min(ROTATION_ROWS, k - start)
        q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
        blocks.append(q * torch.sign(torch.diagonal(r)))
    return blocks


def _mixed(rows: torch.Tensor, rotation: list[torch.Tensor]) -> torch.Tensor:
    """The probe directions of a batch: its rows' centred samples (one permuted sample
    each), rotated among themselves. tr(J Cov_x J^T) = E ||J (x' - E x)||^2 holds for any
    direction with the sample's covariance; a rotation keeps the batch's directions exactly
    the sample's covariance (so an affine map still measures exactly 1) and makes each
    direction a mixture of the samples of its block. With one sample per direction
    ||J u||^2 is heavy-tailed: one probe's relative variance of a thin residual CNN's output
    numerator was 0.19 with single samples against 0.007 rotated (depth-20 MLP 0.0061 /
    0.0019, ResNet-18 0.0016 / 0.0018: benchmarks/bench_directions.py), so it needed many
    more probes. The rotated directions of different rows are uncorrelated, as the batch NLC
    of batch-coupled models needs."""
    flat = rows.reshape(rows.shape[0], -1)
    work = torch.promote_types(flat.dtype, torch.float32)  # half precision: mixed in float32
    parts, start = [], 0
    for block in rotation:
        size = block.shape[0]
        parts.append(block.to(device=flat.device, dtype=work) @ flat[start:start + size].to(work))
        start += size
    return torch.cat(parts).to(flat.dtype).reshape(rows.shape)


class _Stop(Exception):
    """Raised after the last node a pass needs, to skip the rest of the forward."""


@dataclass
class _NodeInfo:
    """What a pass learns about nodes besides their numbers (shared by all batches)."""

    batch_dim: dict[str, int | None] = field(default_factory=dict)
    not_float: set[str] = field(default_factory=set)
    # Nodes whose value was a single tensor (tuple-valued nodes never reach on_node).
    seen: set[str] = field(default_factory=set)


class _Recorded:
    """A batch's forward pass recorded from the sources (``leaves``) to the output
    (_Runner.reverse_pass): the output's value and batch dimension, and backward passes."""

    def __init__(self, runner: "_Runner", out: torch.Tensor, leaves: dict[str, torch.Tensor], batch_dim: int):
        self.runner = runner
        self.out = out
        self.leaves = leaves
        self.batch_dim = batch_dim
        self.rows = out.shape[batch_dim]

    @property
    def output(self) -> torch.Tensor:
        return self.out.detach()

    def numerator(self, cotangent: torch.Tensor, population: bool, centred: dict[str, torch.Tensor],
                  last: bool = False) -> torch.Tensor:
        """Each row's numerator along its row of ``cotangent`` (rows x output units), by one
        backward pass (_Runner.reverse). ``last``: the recorded graph is freed after it (else
        when the recording's context ends)."""
        runner, out, bd = self.runner, self.out, self.batch_dim
        runner.mode.population_backward = population
        cot = cotangent.to(out.dtype).reshape(out.movedim(bd, 0).shape).movedim(0, bd)
        with runner._running_model():  # a custom autograd.Function's backward is model code
            grads = torch.autograd.grad(out, list(self.leaves.values()), cot, allow_unused=True, retain_graph=not last)
        # Per row i and sample j, u_j . g_i summed over the sources before it is squared: the
        # directions of several sources are one joint direction (as the forward-mode probes'
        # are), so their covariance across sources counts.
        projected = torch.zeros(self.rows, runner.n, dtype=torch.float64, device=cotangent.device)
        for name, g in zip(self.leaves, grads):
            if g is not None:
                projected += g.movedim(runner._source_batch_dim(name), 0).reshape(self.rows, -1).double() @ centred[name].T
        return projected.square().sum(1) / runner.n


class _Runner:
    def __init__(self, run, args, batch_dims, groups, sources, preacts, trace_batch):
        self.run = run
        self.args = args
        self.batch_dims = batch_dims
        self.groups = groups
        self.sources = list(sources)
        self.preacts = preacts
        self.trace_batch = trace_batch
        self.n = groups[-1][1]
        self.input_names = [node.name for node in run.graph.inputs]
        # vmap over the probes, or one probe after the other when a model does something
        # functorch cannot batch (then each probe pays for its own primal pass).
        self.sequential = False
        # Batch dimensions and dtypes are the same in every pass: shared.
        self.info = _NodeInfo()
        self.notes: list[str] = []
        # The measurement's function mode (set once it is active): it tells batch norm which
        # probes take the population tangent rule.
        self.mode: _MeasureMode | None = None
        self.eval_from: int | None = None
        # Only the tangent terms ("a") of each node: a pass that adds probes to one whose
        # values, and so their statistics, were already taken.
        self.tangent_only = False
        self.private = _private_nodes(run.graph)
        # Nodes whose tangents are kept whole (rows x units per probe), not only as squared
        # norms: the output, when measure.deflate may need them.
        self.keep_tangent: set[str] = set()
        # Nodes whose statistics are their input's, rows kept (_row_aliases): node -> input.
        self.aliases = _row_aliases(run.graph)

    def group_args(self, lo: int, hi: int) -> tuple:
        return tuple(a.narrow(d, lo, hi - lo) for a, d in zip(self.args, self.batch_dims))

    def source_pools(self) -> dict[str, torch.Tensor]:
        """All rows of every source, batch first: the inputs themselves, or (embedding
        sources) the values of a forward that stops after the last source."""
        pools = {}
        for name, a, d in zip(self.input_names, self.args, self.batch_dims):
            if name in self.sources:
                pools[name] = a.narrow(d, 0, self.n).movedim(d, 0)
        missing = [s for s in self.sources if s not in pools]
        if missing:
            last = max(missing, key=lambda s: [node.name for node in self.run.graph].index(s))
            parts: dict[str, list[torch.Tensor]] = {s: [] for s in missing}
            for lo, hi in self.groups:
                out = self._group(self.group_args(lo, hi), hi - lo, {}, set(), set(missing), set(), last)
                for s in missing:
                    if s in out["pools"]:
                        parts[s].append(out["pools"][s])
            pools.update({s: torch.cat(v) for s, v in parts.items() if v})
            # An embedding without a batch dimension (positions) is the same for every
            # sample: its centred directions would be zero, so it is no source.
            self.sources = [s for s in self.sources if s in pools]
        return pools

    def run_pass(self, probes: int, want: set[str], pool_names: set[str] = frozenset(), bn_modules=(), bn_nodes=None,
                 seed: int = 0, signs: bool = False, eval_from: int | None = None, tangent_only: bool = False) -> _PassResult:
        """``eval_from``: probes from this index on take the population (eval-mode) tangent
        rule of train-mode batch norm, with the batch's statistics (see plan._fusable).
        ``tangent_only``: the nodes' tangent terms alone (see plan._add_probes)."""
        pools = self.source_pools() if probes else {}
        bn_inputs = {name for m in bn_modules for name in (bn_nodes or {}).get(id(m), [])}
        self.eval_from, self.tangent_only = eval_from, tangent_only
        try:
            return self._pass(self.sources if probes else [], pools, probes, want, set(pool_names), bn_inputs, None, seed, signs)
        finally:
            self.eval_from, self.tangent_only = None, False

    def segment(self, seg: tuple[str, str], probes: int, pools: dict[str, torch.Tensor], seed: int,
                eval_from: int | None = None) -> "_NodeAccResult":
        start, end = seg
        if start not in pools:
            raise MeasureError(f"segment start {start!r} has no batch dimension (or is not floating-point)")
        self.eval_from = eval_from
        try:
            result = self._pass([start], {start: pools[start]}, probes, {end}, set(), set(), end, seed, False)
        finally:
            self.eval_from = None
        return _NodeAccResult(result.accs.get(end), result.info, end)

    def centred_sources(self) -> dict[str, torch.Tensor]:
        """Each source's rows over the whole sample, centred and flattened (n x units), in
        float64: the u_j of ``reverse``."""
        out = {}
        for name, pool in self.source_pools().items():
            rows = pool.reshape(self.n, -1).double()
            out[name] = rows - rows.mean(0)
        return out

    def reverse(self, lo: int, hi: int, cotangents: list[tuple[torch.Tensor, bool]],
                centred: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per row of the batch lo..hi and per (cotangent, population) pair, the output's
        numerator along the row's cotangent (rows x output units): c_i^T J_i Ĉ J_i^T c_i =
        mean_j (u_j . g_i)^2, with g the gradient of sum_i <c_i, output_i> with respect to the
        sources and u_j the sample's centred source rows (``centred_sources``; summed over
        the sources). One forward pass, then one backward pass per pair; ``population``: the
        backward takes the population rule of train-mode batch norm
        (overrides._BatchNormEitherRule). With batch statistics rows interact: g_i then also
        holds the other rows' cotangents through them (see measure.deflate)."""
        with self.reverse_pass(lo, hi) as recorded:
            return [recorded.numerator(cotangent, population, centred, last=k == len(cotangents) - 1)
                    for k, (cotangent, population) in enumerate(cotangents)]

    @contextmanager
    def reverse_pass(self, lo: int, hi: int, on_value=None) -> Iterator["_Recorded"]:
        """One forward pass of the batch lo..hi that records the graph from the sources to the
        output, for backward passes (``_Recorded.numerator``) while the context lasts.
        ``on_value(name, value)``: called with each node's value (detached) as it is computed."""
        graph = self.run.graph
        leaves: dict[str, torch.Tensor] = {}
        captured: dict[str, torch.Tensor] = {}

        def on_node(name: str, t: torch.Tensor):
            if on_value is not None:
                with torch._C.DisableTorchFunction(), torch.no_grad():  # archlint's own calls (see _group)
                    on_value(name, t.detach())
            replaced = None
            if name in self.sources:
                replaced = t = t.detach().requires_grad_(True)
                leaves[name] = t
            if name == graph.output:
                captured["out"] = t
                raise _Stop
            return replaced

        self.mode.reverse = True
        try:
            with torch.enable_grad():
                try:
                    self._new_pass()
                    with self._running_model():
                        execute(graph, self.group_args(lo, hi), on_node)
                except _Stop:
                    pass
                out = captured["out"]
                bd = self.info.batch_dim.get(graph.output)
                if bd is None:
                    bd = _batch_dim(graph[graph.output], out, hi - lo, self.trace_batch)
                if bd is None:
                    raise MeasureError("the output has no batch dimension")
                recorded = _Recorded(self, out, leaves, bd)
                try:
                    yield recorded
                finally:
                    recorded.out, recorded.leaves = None, {}  # the recorded graph freed
        finally:
            self.mode.reverse = self.mode.population_backward = False

    def primal_statistics(self, name: str, t: torch.Tensor, rows: int) -> dict | None:
        """A node's statistics without tangent terms, as the forward-mode pass takes them (sign
        counts for pre-activations); None where it has no batch dimension or is not
        floating-point."""
        bd = self._learn(name, t, rows)
        return None if bd is None else _node_stats(t, None, bd, rows, name in self.preacts, False)

    def _learn(self, name: str, primal: torch.Tensor, rows: int) -> int | None:
        """Record what a pass learns about a node from its value (``info``: seen, not
        floating-point, its batch dimension); its batch dimension, None where it has none or
        is not floating-point."""
        self.info.seen.add(name)
        if not primal.is_floating_point():
            self.info.not_float.add(name)
            return None
        bd = _batch_dim(self.run.graph[name], primal, rows, self.trace_batch)
        self.info.batch_dim[name] = bd
        return bd

    def _running_model(self):
        """The measurement's function mode, active while the model's code runs and only then:
        each call under it pays for its Python handler, and archlint's own calls (directions,
        statistics, estimates: about 550 a measurement of a depth-20 MLP besides the 80 of
        the model) need none of it."""
        return self.mode if self.mode is not None else nullcontext()

    def _new_pass(self) -> None:
        """A pass over the model begins: the layers' calls are numbered from the start
        (measure.replay)."""
        if self.mode is not None and self.mode.replay is not None:
            self.mode.replay.new_pass()

    @contextmanager
    def _eval_probes(self, eval_from: int | None) -> Iterator[None]:
        if self.mode is None:
            yield
            return
        saved, self.mode.eval_from = self.mode.eval_from, eval_from
        try:
            yield
        finally:
            self.mode.eval_from = saved

    def _pass(self, sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs) -> _PassResult:
        try:
            return self._pass_once(sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs)
        except (RuntimeError, NotImplementedError) as exc:
            if self.sequential or not sources:
                raise MeasureError(f"the model failed during the measurement: {type(exc).__name__}: {exc}") from exc
            self.sequential = True
            self.notes.append(f"probes run one by one (vmap failed: {failure(exc)})")
            try:
                return self._pass_once(sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs)
            except Exception as exc2:
                raise MeasureError(f"the model failed during the measurement: {type(exc2).__name__}: {exc2}") from exc2

    def _pass_once(self, sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs) -> _PassResult:
        generator = torch.Generator().manual_seed(seed)
        # Each probe's permutation and its batches' rotations (_mixed) drawn together, so that a
        # pass's first k probes are the same whatever number of probes follow them.
        perms, rotations = [], []
        for _ in range(probes):
            perms.append(torch.randperm(self.n, generator=generator).to(self.run.device))
            rotations.append([_random_rotation(hi - lo, generator) for lo, hi in self.groups])
        # The population probes take the directions of the batch probes, in order (as many
        # as there are): a deflated output's population part along its shared direction is
        # then the batch's exact part plus the difference the two rules make along the same
        # directions (measure.deflate.project_paired), which is small where they are alike.
        first = self.eval_from
        if first:
            for k in range(first, min(probes, 2 * first)):
                perms[k], rotations[k] = perms[k - first], rotations[k - first]
        means = {s: pools[s].mean(0) for s in sources}
        bds = {s: self._source_batch_dim(s) for s in sources}
        accs: dict[str, _NodeAcc] = {}
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in pool_names}
        for g, (lo, hi) in enumerate(self.groups):
            # Rows lo..hi of each probe's permutation, rotated among themselves (_mixed).
            dirs = {s: torch.stack([_mixed(pools[s][p[lo:hi]] - means[s], r[g]).movedim(0, bds[s]) for p, r in zip(perms, rotations)])
                    for s in sources}
            out = self._group(self.group_args(lo, hi), hi - lo, dirs, want, pool_names, bn_inputs, stop_after, signs)
            for name, stats in out["nodes"].items():
                accs.setdefault(name, _NodeAcc()).add(stats)
            for name in pool_names:
                if name in out["pools"]:
                    collected[name].append(out["pools"][name])
        return _PassResult(accs, {k: torch.cat(v) for k, v in collected.items() if v}, self.info)

    def _source_batch_dim(self, name: str) -> int:
        if name in self.input_names:
            return self.batch_dims[self.input_names.index(name)]
        return self.info.batch_dim[name]

    def _group(self, args, n, dirs, want, pool_names, bn_inputs, stop_after, signs=False) -> dict:
        """Run one batch: per-node statistics of the nodes in ``want`` (and BatchNorm channel
        statistics of those in ``bn_inputs``), the primal values of the nodes in ``pool_names``.
        ``dirs[s]`` holds each probe's tangent for source s."""
        graph = self.run.graph

        def body(shifts: dict[str, torch.Tensor]) -> dict:
            out: dict[str, dict] = {"nodes": {}, "pools": {}}
            # Each node whose statistics were taken (or aliased): its shape, batch dimension,
            # value (a weak reference) and that value's version counter, which any write in
            # place moves (through a view too); and the nodes that take their input's
            # statistics (_row_aliases).
            taken: dict[str, tuple[tuple[int, ...], int, weakref.ref, int]] = {}
            aliased: dict[str, str] = {}

            def on_node(name: str, t: torch.Tensor):
                replaced = None
                if name in shifts:
                    # Adding a zero whose tangent is the direction: the value is unchanged and
                    # the tangent enters here.
                    replaced = t = t + shifts[name]
                # The statistics are archlint's own calls, not the model's: past the function
                # modes (the measurement's overrides, the parameter guard, the eager
                # recorder), whose Python handler each call paid for, about 2,000 calls a
                # measurement of a depth-20 MLP.
                with torch._C.DisableTorchFunction():
                    take_statistics(name, t)
                if name in self.private and self.mode is not None:
                    self.mode.mark_private(replaced if replaced is not None else t)
                if name == stop_after:
                    raise _Stop
                return replaced

            def take_statistics(name: str, t: torch.Tensor) -> None:
                if name in want or name in pool_names or name in bn_inputs:
                    primal, tangent = fwAD.unpack_dual(t)
                    bd = self._learn(name, primal, n)
                    if bd is not None and (name in want or name in bn_inputs):
                        source = self.aliases.get(name)
                        if (source in taken and name not in bn_inputs and name not in self.preacts
                                and name not in self.keep_tangent and _unwritten(*taken[source][2:])
                                and _rows_kept(graph[name].op, tuple(primal.shape), bd, *taken[source][:2], n)):
                            aliased[name] = source
                        else:
                            stats = (_tangent_term(tangent, bd) if self.tangent_only else
                                     _node_stats(primal, tangent, bd, n, signs and name in self.preacts, name in bn_inputs))
                            if name in self.keep_tangent and tangent is not None:
                                stats["t"] = tangent.movedim(bd, 0).reshape(n, -1)
                            out["nodes"][name] = stats
                        taken[name] = (tuple(primal.shape), bd, weakref.ref(t), t._version)
                    if bd is not None and name in pool_names:
                        # A copy: in-place ops further on (ReLU(inplace), +=) may reuse it.
                        out["pools"][name] = primal.movedim(bd, 0).clone()

            try:
                self._new_pass()
                with self._running_model():
                    execute(graph, args, on_node)
            except _Stop:
                pass
            finally:
                if self.mode is not None:
                    self.mode.private.clear()
            # In execution order, so that a chain's earlier links are filled first.
            for name, source in aliased.items():
                out["nodes"][name] = {k: v for k, v in out["nodes"][source].items() if k in _ROW_STATS}
            return out

        if not dirs:
            return body({})
        names = list(dirs)
        zeros = tuple(torch.zeros_like(dirs[s][0]) for s in names)
        if self.sequential:
            per_probe = []
            for k in range(next(iter(dirs.values())).shape[0]):
                population = self.eval_from is not None and k >= self.eval_from
                with fwAD.dual_level(), self._eval_probes(0 if population else None):
                    shifts = {s: fwAD.make_dual(z, dirs[s][k]) for s, z in zip(names, zeros)}
                    per_probe.append(body(shifts))
            out = per_probe[0]
            for name, stats in out["nodes"].items():
                for key in _PER_PROBE:
                    if key in stats:
                        stats[key] = torch.stack([p["nodes"][name][key] for p in per_probe])
            return out

        def one_probe(*directions):
            def f(*z):
                return z, body(dict(zip(names, z)))

            return jvp(f, zeros, directions, has_aux=True)[2]

        with self._eval_probes(self.eval_from):
            out = vmap(one_probe)(*(dirs[s] for s in names))
        # vmap stacks every output over the probes; only the tangent terms differ.
        for stats in out["nodes"].values():
            for key in stats:
                if key not in _PER_PROBE:
                    stats[key] = stats[key][0]
        out["pools"] = {k: v[0] for k, v in out["pools"].items()}
        return out


# A node's statistics that differ between probes: squared tangent norms per row, and the
# tangents themselves where they are kept (_Runner.keep_tangent).
_PER_PROBE = ("a", "t")

# Ops whose output is a new tensor, not a view or an in-place update of an input.
_FRESH = {OpKind.CONV, OpKind.LINEAR, OpKind.NORM}


def _private_nodes(graph: ArchGraph) -> set[str]:
    """Nodes whose value only an elementwise activation reads and nothing else holds or
    views, so that an in-place activation of it may run out of place (see
    overrides._INPLACE_ACTIVATIONS). Only for fx graphs, where every use of a value is a node:
    a conv, linear or norm output with that one user, or a sum with that one user whose first
    operand (which ``+=`` updates in place) is itself such a value."""
    if graph.graph_module is None:
        return set()

    def private(name: str, depth: int = 0) -> bool:
        node = graph[name]
        if len(graph.users(name)) != 1 or depth > 50:
            return False
        if node.kind in _FRESH:
            return True
        return node.kind == OpKind.ADD and bool(node.inputs) and private(node.inputs[0], depth + 1)

    found = set()
    for node in graph:
        users = graph.users(node.name)
        if len(users) == 1 and graph[users[0]].kind == OpKind.ACTIVATION and graph[users[0]].attrs.get("elementwise"):
            if private(node.name):
                found.add(node.name)
    return found


# Ops whose value is their one input's values with each row's values kept in that row
# (rearranged at most), and so are its tangents: identities, dropout (off while measuring),
# and reshapes and transposes that keep the batch dimension. Each node's statistics read its
# values and tangents once more; for these they are their input's (_row_aliases): 61 of a
# GPT's 175 nodes (the attention heads' views and transposes, the dropouts).
_KEEPS_ROWS = {"view", "reshape", "flatten", "unflatten", "view_as", "squeeze", "unsqueeze", "Flatten", "Unflatten",
               "contiguous", "clone", "identity", "Identity",
               "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
               "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"}
_PERMUTES = {"permute", "transpose", "t"}
# The statistics a node takes from its input: per-unit mean, per-row distance and tangent
# terms. (Sign counts and BatchNorm's channel statistics are per node: never aliased.)
_ROW_STATS = ("m", "b", "a")


def _row_aliases(graph: ArchGraph) -> dict[str, str]:
    """For each node that keeps its one input's rows (_KEEPS_ROWS, _PERMUTES), that input.
    Each pass checks that the shapes agree (_rows_kept) and that nothing wrote to the input
    between the two (its version counter)."""
    return {node.name: node.inputs[0] for node in graph
            if node.op in _KEEPS_ROWS | _PERMUTES and len(node.inputs) == 1}


def _unwritten(ref: weakref.ref, version: int) -> bool:
    """Whether the tensor behind ``ref`` is still alive and unwritten since its version
    counter read ``version`` (a write in place, through any view of it, moves the counter)."""
    value = ref()
    return value is not None and value._version == version


def _rows_kept(op: str, shape: tuple[int, ...], bd: int, source_shape: tuple[int, ...], source_bd: int, n: int) -> bool:
    """Whether a node of ``op`` with this value's shape and batch dimension holds its input's
    rows: a reshape that keeps every dimension up to the batch's, or a transpose where the
    batch is the only dimension of its size on both sides."""
    if math.prod(shape) != math.prod(source_shape):
        return False
    if op in _PERMUTES:
        return sorted(shape) == sorted(source_shape) and shape.count(n) == 1 and source_shape.count(n) == 1
    return bd == source_bd and shape[:bd + 1] == source_shape[:bd + 1]


def _batch_dim(node: Node, t: torch.Tensor, n: int, trace_batch: int | None) -> int | None:
    """The dimension of ``t`` that holds the batch: size n now, and the traced batch size in
    the graph's recorded shape (so that a (T, B, D) layout is recognised, and a (T, D) table
    or a dimension that happens to equal n is not taken for the batch)."""
    shape = node.shape
    for d in range(t.dim()):
        if t.shape[d] != n:
            continue
        if trace_batch is None or shape is None or len(shape) != t.dim() or shape[d] == trace_batch:
            return d
    return None


# On a CPU a node's rows are centred and counted a chunk of about this many bytes at a time:
# the chunk's centred copy and sign mask stay in the cache, where a whole node's (50 MB for
# a MobileNetV2 block's expanded map of 128 rows) would go out to memory and be read back.
ROW_CHUNK_BYTES = 1 << 20
# On a CPU a row's squared distance from the mean is ||x||^2 - 2 x.m + ||m||^2 (two reads of
# the node and no temporary) where it is at least this fraction of ||x||^2 in every row. The
# float32 rounding of the difference then costs at most 6e-5 of a row's distance and 3e-6 of
# their sum (by hand, 128 rows of 98,304 units at a fraction 0.1, against float64; 6.7e-4
# and 8.8e-5 at 0.01). Below it (a neuron bias near 1) the rows are centred first.
EXPANDED_MIN_FRACTION = 0.1


def _node_stats(p: torch.Tensor, tangent: torch.Tensor | None, bd: int, n: int, signs: bool, bn_input: bool) -> dict:
    """The sufficient statistics of one node over one batch, as tensors (under vmap they are
    the only way out): m, the per-unit mean; b, each row's squared distance from it; a, each
    row's squared tangent norm per probe; pos, per-unit counts of positive values; chan_*,
    BatchNorm's per-channel batch statistics of this (input) node.

    Writing a new tensor the size of a node costs several times more than reading one on a
    CPU, so the node is read by reductions and matrix-vector products (the mean, and the
    distances where EXPANDED_MIN_FRACTION allows), and what needs a temporary (the centred
    rows, the sign mask) is done a cache-sized chunk of rows at a time (ROW_CHUNK_BYTES). On
    the expanded map of a MobileNetV2 block (128 x 98,304 values) the chunks took 35 ms
    against 45 ms for the whole node at once (``python benchmarks/bench_cost.py --part
    chunks``); the products against reductions alone: ``--part statistics``. A GPU takes the
    whole node at once (each chunk is a kernel launch), and its mean by a reduction."""
    flat = p.movedim(bd, 0).reshape(n, -1)
    if dtypes.name(flat.dtype) in dtypes.LOW_PRECISION:
        # The model computed in half precision; its statistics need not (squared norms
        # overflow float16).
        flat = flat.float()
    cpu = flat.device.type == "cpu"
    b = None
    if cpu:
        # A column mean by a matrix-vector product: about half the time of flat.mean(0) on a
        # CPU (by hand, the 68 nodes of a MobileNetV2 measurement: 0.08 against 0.16 s).
        m = torch.full((n,), 1.0 / n, dtype=flat.dtype) @ flat
        squares = torch.linalg.vector_norm(flat, dim=1).square()
        expanded = squares - 2 * (flat @ m) + m.square().sum()
        # False wherever a value is not finite, too: those rows are centred.
        if bool((expanded >= EXPANDED_MIN_FRACTION * squares).all()):
            b = expanded
    else:
        m = flat.mean(0)
    rows = n if not cpu else max(1, ROW_CHUNK_BYTES // max(1, flat.shape[1] * flat.element_size()))
    distances, pos = [], None
    if signs:
        # Counted as floats by a matrix-vector product per chunk (exact up to 2^24 rows):
        # about half the time of summing a boolean mask (by hand, MobileNetV2's 16
        # pre-activations: 0.07 against 0.13 s).
        mask = torch.empty(min(rows, n), flat.shape[1], dtype=flat.dtype, device=flat.device)
        ones = torch.ones(mask.shape[0], dtype=flat.dtype, device=flat.device)
        pos = torch.zeros(flat.shape[1], dtype=flat.dtype, device=flat.device)
    if b is None or signs:
        for lo in range(0, n, rows):
            part = flat[lo:lo + rows]
            if b is None:
                distances.append(torch.linalg.vector_norm(part - m, dim=1))
            if signs:
                k = part.shape[0]
                torch.gt(part, 0, out=mask[:k])
                pos.addmv_(mask[:k].T, ones[:k])
    stats = {"m": m, "b": b if b is not None else torch.cat(distances).square()}
    stats.update(_tangent_term(tangent, bd))
    if signs:
        stats["pos"] = pos.to(torch.int32)
    if bn_input and bd == 0 and p.dim() >= 2:
        # Per channel (dim 1) over the batch and all positions, as BatchNorm computes them.
        mean, var = batch_statistics(p)
        count = p.numel() // p.shape[1]
        stats["chan_mean"] = mean
        stats["chan_var"] = var * (count / max(count - 1, 1))  # unbiased, as PyTorch keeps it
    return stats


def _tangent_term(tangent: torch.Tensor | None, bd: int) -> dict:
    """{"a": each row's squared tangent norm} ({} without a tangent)."""
    if tangent is None:
        return {}
    if dtypes.name(tangent.dtype) in dtypes.LOW_PRECISION:
        tangent = tangent.float()
    # Reduced over all other dims in place: a reshape would copy a tangent whose probe
    # dimension vmap keeps in another position.
    others = [d for d in range(tangent.dim()) if d != bd]
    return {"a": torch.linalg.vector_norm(tangent, dim=others).square() if others else tangent.square()}


class _NodeAcc:
    """One node's statistics accumulated over the batches (float64, on the device)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None  # sum over units of the squared deviations
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []
        self.has_tangent = True
        self.pos: torch.Tensor | None = None
        self.chan_mean: list[torch.Tensor] = []
        self.chan_var: list[torch.Tensor] = []
        # The tangents (probes, rows, units) per batch, where the runner keeps them.
        self.t: list[torch.Tensor] = []
        # Only the signal statistics were asked for: no tangent terms, and no NLC.
        self.primal_only = False

    def add(self, s: dict) -> None:
        if "t" in s:
            self.t.append(s["t"].double())
        if "b" not in s:  # a tangent-only pass
            if "a" in s:
                self.a.append(s["a"].double())
            else:
                self.has_tangent = False
            return
        n_g = s["b"].shape[0]
        m = s["m"].double()
        m2 = s["b"].double().sum()
        if self.mean is None:
            self.n, self.mean, self.m2 = n_g, m, m2
        else:
            # Chan et al.'s pairwise combination: exact, and no cancellation when the
            # mean is large compared with the spread (neuron bias near 1).
            total = self.n + n_g
            delta = m - self.mean
            self.m2 = self.m2 + m2 + delta.square().sum() * (self.n * n_g / total)
            self.mean = self.mean + delta * (n_g / total)
            self.n = total
        self.b.append(s["b"].double())
        if "a" in s:
            self.a.append(s["a"].double())
        else:
            self.has_tangent = False
        if "pos" in s:
            self.pos = s["pos"] if self.pos is None else self.pos + s["pos"]
        if "chan_mean" in s:
            self.chan_mean.append(s["chan_mean"])
            self.chan_var.append(s["chan_var"])


@dataclass
class _NodeAccResult:
    acc: _NodeAcc | None
    info: _NodeInfo
    name: str
