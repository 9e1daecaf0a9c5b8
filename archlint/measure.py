"""Measure the nonlinearity coefficient (NLC) and signal statistics of every node of a model.

    NLC(node) = sqrt( E_x tr(J Cov_x J^T) / tr Cov(node) ),   J = d node / d input

(digest §1.1). One measurement carries tangents with forward-mode AD from the model input
through the whole graph, so every node gets its numbers from the same pass; a backward pass
per node would cost O(depth^2).

Estimator (digest §1.4). The numerator uses the exact identity
tr(J Cov_x J^T) = E_{x'} ||J(x)(x' - E x)||^2: every row x of the sample gets ``probes``
tangent directions u = x' - mean(x), where x' is the row that a random permutation of the
sample puts there (one permutation per probe). So each probe's directions have exactly the
sample covariance, and the estimate is unbiased for the NLC of the sample. The probes are
batched with ``torch.func.vmap`` over ``torch.func.jvp``: the primal values are computed once
and only the tangents are repeated. Two probes per row to start with; more when the probe
part of the output's standard error, estimated from the spread between each row's probes, is
above PROBE_SE. The denominator is the trace of the sample covariance of the node (biased,
like the directions). The standard error comes from the per-row numerator and denominator
terms (delta method), so it covers both the sampling of the inputs and the probes.

Cost: about one forward pass for the primal values plus one per probe, because the tangent
rules of the layers that dominate (convolution, linear, batch norm) are replaced by lean ones
(_MeasureMode) and the per-node statistics are read-only reductions. A train-mode BatchNorm
model also gets ``nlc_population``: when the sample is one batch and every BatchNorm sees
many values per channel (a CNN at the default batch), the eval-mode model computes the same
values as the trained one, so its probes ride along in the same pass (one more probe);
otherwise a second pass in eval mode computes it.

Semantics:
- Dropout and other train-only behaviour are off: every module is put in eval mode, and the
  dropout functions are replaced by the identity (fx bakes ``self.training`` into the graph).
- Train-mode BatchNorm makes the output of one row depend on the whole batch. The NLC reported
  is that of the function that is actually trained (digest §1.5): the whole batch is one input,
  the tangent of each row is an independent draw, and the rows are split into batches of
  ``batch_size``. Beside it, ``nlc_population`` is the NLC of the eval-mode model with its
  running statistics populated from the same batches (the cumulative average that
  ``momentum=None`` gives); PyTorch's fresh statistics (0 and 1) are never used as if they were
  populated. (In the one-pass case the running variance is the batch's biased one, not
  PyTorch's unbiased one: a relative difference of 1/count, under 0.1%; see _fusable.)
  Eval-mode BatchNorm layers with fresh statistics are populated the same way first.
- Integer inputs (token ids): the tangent enters at the embedding outputs.
- Values that a float32 pass cannot resolve (variance under the rounding level, overflow, NaN,
  an output NLC above 100) are measured again in float64; whatever is still unresolved gets a
  status ("vanished", "exploded", "nan") instead of an NLC of 0 or inf.
- The user's model is left exactly as it was. On its own device it runs in place under
  ``preserved_state``; on another device a deep copy runs.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import math
import os
import sys
import time
import types
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.overrides import TorchFunctionMode

from archlint.graph import ArchGraph, Node, OpKind
from archlint.state import preserved_state
from archlint.trace import execute, trace

# Tangent directions per input row, at least. Each probe costs about one forward pass. The
# probe noise of the numerator shrinks like 1/sqrt(samples * probes) and depends on the
# model: an output whose Jacobian has few large singular values needs more probes. So the
# part of the output NLC's relative standard error that comes from the probes is estimated
# (from the spread between the probes of each row), and if it is above PROBE_SE a second
# pass adds probes (up to MAX_PROBES in all). 1.75% keeps the estimate within 5% of the
# sample's exact NLC at about 3 sigma, and adds about 15% to the ~3% sampling error of 128
# samples; a CIFAR ResNet-18 with a 10-way head meets it with 2 probes.
PROBES = 2
PROBE_SE = 0.0175
MAX_PROBES = 16
# The population (eval) pass of a train-mode BatchNorm model is a second full pass. Its
# value is compared with the batch NLC, whose differences of interest are 10% and more, so
# its probe noise may be larger: the probes it needs for this, at least POPULATION_PROBES.
POPULATION_PROBE_SE = 0.025
POPULATION_PROBES = 1
# At least this many samples by default: about ±3% sampling error on the NLC (digest §1.4).
MIN_SAMPLES = 128
# An output NLC above this amplifies float32 rounding (digest §3, precision): check in float64.
PRECISION_NLC = 100.0
# A spread (input-dependent share of the RMS) below this leaves a float32 variance with a
# rounding error of about 1% or more after a few dozen layers: check in float64.
PRECISION_SPREAD = 1e-4

_LOW_PRECISION = (torch.float16, torch.bfloat16)

STATUSES = {
    "ok": "measured",
    "vanished": "the signal is below floating-point resolution (no input-dependent variance left)",
    "exploded": "the signal or its tangent overflowed to inf",
    "nan": "the signal or its tangent is NaN",
    "constant": "does not depend on the input: no tangent and no variance over the batch",
    "no-gradient": "varies with the input but has no derivative with respect to it",
    "not-per-sample": "has no batch dimension (a constant table or a reduction over the batch)",
    "not-tensor": "its value is not a single tensor (e.g. a tuple of outputs)",
    "not-float": "integer or boolean values",
}


class MeasureError(Exception):
    """The model cannot be measured (it fails on the inputs, or the inputs are unusable)."""


# --------------------------------------------------------------------------------------
# Results


@dataclass
class NodeStats:
    """One node's measured statistics over the sample.

    A "unit" is one element of the node's output for one sample (a neuron, or a channel at
    one position). The NLC and signal statistics are None unless ``status`` is "ok"; the
    signal statistics are also given for "vanished" nodes.
    """

    name: str
    kind: str
    op: str
    status: str
    # NLC from the model input (the embedding output for token inputs) to this node.
    nlc: float | None = None
    nlc_se: float | None = None
    # Over all units and samples.
    mean: float | None = None
    std: float | None = None
    rms: float | None = None
    # sqrt(sum_i (E_x h_i)^2 / sum_i E_x h_i^2): the share of the RMS that does not depend on
    # the input (digest §4.4); 1 means every input looks the same (collapsing domain).
    neuron_bias: float | None = None
    # sqrt(sum_i Var_x h_i / sum_i E_x h_i^2): the between-input spread relative to the RMS.
    # spread^2 + neuron_bias^2 = 1.
    spread: float | None = None
    # The mean-field state (digest §6): v = mean_i Var_x(h_i), M = mean_i (E_x h_i)^2.
    unit_var: float | None = None
    unit_mean_sq: float | None = None
    # Pre-activations only (nodes that feed an elementwise activation): the mean over units of
    # min(P, N) / (P + N), P and N counting positive and non-positive values over the sample
    # (digest §4.3), and the fraction of units never > 0 (dead ReLU units).
    sign_diversity: float | None = None
    dead_fraction: float | None = None
    # Train-mode BatchNorm models: the NLC of the eval-mode model with populated statistics.
    nlc_population: float | None = None
    nlc_population_se: float | None = None
    status_population: str | None = None
    # The precision the numbers were measured in ("float64" after a float64 re-check).
    dtype: str | None = None


@dataclass
class SegmentStats:
    """The NLC of the sub-network from ``start``'s output to ``end``'s output."""

    start: str
    end: str
    status: str
    nlc: float | None = None
    nlc_se: float | None = None
    nlc_population: float | None = None
    nlc_population_se: float | None = None
    status_population: str | None = None
    dtype: str | None = None


@dataclass
class Report:
    model: str
    # The output node (the model's first floating-point output).
    output: str
    # "train-bn": BatchNorm uses batch statistics, so ``nlc`` is the NLC of the function that
    # is trained, on batches of ``batch_size``; "eval": no batch dependence.
    mode: str
    device: str
    dtype: str
    batch_size: int
    samples: int
    probes: int
    # Where the tangent enters: the floating-point inputs, or the embedding outputs.
    sources: list[str]
    nodes: dict[str, NodeStats]
    segments: dict[tuple[str, str], SegmentStats] = field(default_factory=dict)
    population_probes: int | None = None
    # The float32 output NLC when a float64 re-check replaced it (the precision difference).
    output_nlc_float32: float | None = None
    # The output node measured in each precision that ran, by dtype name: the model's own
    # (float16/bfloat16 parameters or autocast) and "float64" after a re-check. Low-precision
    # models are always re-checked, so their rounding error is visible (ARC304).
    output_by_dtype: dict[str, NodeStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def output_stats(self) -> NodeStats:
        return self.nodes[self.output]

    @property
    def output_nlc(self) -> float | None:
        return self.output_stats.nlc

    @property
    def output_nlc_se(self) -> float | None:
        return self.output_stats.nlc_se

    @property
    def output_nlc_population(self) -> float | None:
        return self.output_stats.nlc_population

    @property
    def output_nlc_population_se(self) -> float | None:
        return self.output_stats.nlc_population_se

    @property
    def status(self) -> str:
        return self.output_stats.status

    def table(self) -> str:
        """The per-node statistics as an aligned text table, in forward order."""
        population = self.mode == "train-bn" and self.population_probes is not None
        header = ["node", "kind", "op", "NLC", "±se"] + (["NLC eval", "±se"] if population else [])
        header += ["mean", "std", "NB", "spread", "signdiv", "dead", "status"]
        rows = [header]
        for s in self.nodes.values():
            row = [s.name, s.kind, s.op, _fmt(s.nlc), _fmt(s.nlc_se)]
            if population:
                row += [_fmt(s.nlc_population), _fmt(s.nlc_population_se)]
            row += [_fmt(s.mean), _fmt(s.std), _fmt(s.neuron_bias), _fmt(s.spread),
                    _fmt(s.sign_diversity), _fmt(s.dead_fraction), s.status]
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self) -> str:
        out = self.output_stats
        head = f"{self.model}: output NLC {_fmt(out.nlc)} ± {_fmt(out.nlc_se)}"
        if out.nlc_population is not None:
            head += f" (eval with populated BatchNorm statistics: {_fmt(out.nlc_population)} ± {_fmt(out.nlc_population_se)})"
        if out.status != "ok":
            head += f" [{out.status}]"
        lines = [
            head,
            f"mode {self.mode}, {self.samples} samples in batches of {self.batch_size}, "
            f"{self.probes} probes per sample, {self.device}, {self.dtype}, {self.seconds:.2f}s",
            "",
            self.table(),
        ]
        if self.segments:
            lines += ["", "segments:"]
            for (start, end), seg in self.segments.items():
                text = f"  {start} -> {end}: NLC {_fmt(seg.nlc)} ± {_fmt(seg.nlc_se)}"
                if seg.nlc_population is not None:
                    text += f", eval {_fmt(seg.nlc_population)} ± {_fmt(seg.nlc_population_se)}"
                lines.append(text + ("" if seg.status == "ok" else f" [{seg.status}]"))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# --------------------------------------------------------------------------------------
# Entry point


def measure(
    model: nn.Module,
    inputs: Any = None,
    *,
    graph: ArchGraph | None = None,
    device: str = "auto",
    batch_size: int = 128,
    seed: int = 0,
    segments: Sequence[tuple[str, str]] = (),
    population: bool = True,
    samples: int | None = None,
    probes: int = PROBES,
    population_probes: int = POPULATION_PROBES,
    nodes: Iterable[str] | None = None,
) -> Report:
    """Measure every node of ``model`` (see the module docstring).

    ``inputs``: None (synthetic inputs of the family ``archlint.inputs`` infers), a tensor or
    tuple of tensors (the forward's positional arguments, batch first), or "module:func"
    (``func()`` returns them). ``samples`` rows are measured (default: all given rows, or at
    least 128 synthetic ones) in batches of ``batch_size``; with train-mode BatchNorm every
    batch is one input of the trained function, so ``batch_size`` is part of what is measured.
    ``segments``: (start node, end node) pairs whose own NLC is measured, the tangent entering
    at the start node with directions drawn from that node's batch distribution.
    ``population``: for train-mode BatchNorm models, also measure the eval-mode model with
    populated running statistics.
    ``nodes``: the nodes whose statistics are wanted (default: every node); the output is
    always measured. Fewer nodes cost less: each one's statistics read its values and tangents.
    """
    started = time.perf_counter()
    if probes < 1:
        raise ValueError("probes must be at least 1")
    target = _resolve_device(device)
    # Tracing runs the model as it is (dropout included): the global RNG is put back after.
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        report = _measure(model, inputs, graph, target, batch_size, seed, segments, population, samples, probes,
                          population_probes, nodes)
    report.seconds = time.perf_counter() - started
    return report


def _measure(model, inputs, graph, target, batch_size, seed, segments, population, samples, probes, population_probes,
             nodes) -> Report:
    home = _model_device(model)
    args, batch_dims = _resolve_inputs(model, inputs, batch_size, samples, seed)
    n_rows = args[0].shape[batch_dims[0]]
    if graph is None:
        example = tuple(a.narrow(d, 0, min(4, n_rows)).to(home) for a, d in zip(args, batch_dims))
        graph = trace(model, example, name=type(model).__name__)
    if graph.output is None:
        raise MeasureError("the model has no floating-point output to measure")
    for start, end in segments:
        for name in (start, end):
            if name not in graph:
                raise ValueError(f"segment node {name!r} is not in the graph")
        if start not in graph.ancestors(end):
            raise ValueError(f"segment {start!r} -> {end!r}: {end!r} does not depend on {start!r}")

    wanted = None
    if nodes is not None:
        wanted = set(nodes) | {graph.output}
        unknown = sorted(wanted - {node.name for node in graph})
        if unknown:
            raise ValueError(f"not nodes of the graph: {', '.join(unknown)}")
    plan = _Plan(graph, args, batch_dims, batch_size, seed, list(segments), probes, population_probes, population, wanted)
    result = plan.run(_Runnable(graph, model, target))
    if result.needs_float64 and result.dtype != torch.float64:
        try:
            precise = plan.run(_Runnable(graph, model, target, dtype=torch.float64))
        except Exception as exc:  # a model that cannot run in float64 keeps its own numbers
            result.notes.append(f"float64 re-check failed ({type(exc).__name__}: {exc}); numbers are {_dtype_name(result.dtype)}")
        else:
            precise.notes.insert(0, "float64 re-check of: " + ", ".join(result.reasons))
            precise.output_nlc_float32 = result.report_nodes()[graph.output].nlc
            precise.output_by_dtype = {_dtype_name(result.dtype): result.report_nodes()[graph.output]}
            result = precise
    report = result.report(model_name=graph.name, device=str(target))
    report.output_by_dtype = {**result.output_by_dtype, report.dtype: report.output_stats}
    graph.measured = report
    return report


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" are the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------
# Inputs


def _resolve_inputs(model: nn.Module, inputs: Any, batch_size: int, samples: int | None, seed: int) -> tuple[tuple[torch.Tensor, ...], list[int]]:
    """The forward's positional arguments for all rows, and the batch dimension of each."""
    if inputs is None:
        from archlint.inputs import infer_inputs, make_batch

        spec = infer_inputs(model)
        if samples is None:
            samples = batch_size * math.ceil(MIN_SAMPLES / batch_size)
        generator = torch.Generator().manual_seed(seed)
        args = make_batch(spec, samples, generator)
        return args, [0 if a.batch_first else 1 for a in spec.args]
    if isinstance(inputs, str):
        inputs = load_data(inputs)
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not args or not all(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args):
        raise MeasureError("inputs must be a tensor or a tuple of tensors with a batch dimension")
    dims = _given_batch_dims(model, args)
    rows = {a.shape[d] for a, d in zip(args, dims)}
    if len(rows) != 1:
        raise MeasureError(f"the inputs disagree on the batch size: {sorted(rows)}")
    if samples is not None:
        args = tuple(a.narrow(d, 0, min(samples, a.shape[d])) for a, d in zip(args, dims))
    return args, dims


def _given_batch_dims(model: nn.Module, args: tuple) -> list[int]:
    """Batch first, except where the model's first layer is a time-major recurrent layer."""
    from archlint.inputs import InputInferenceError, infer_inputs

    try:
        spec = infer_inputs(model)
    except InputInferenceError:
        return [0] * len(args)
    if len(spec.args) != len(args):
        return [0] * len(args)
    return [0 if a.batch_first or t.dim() < 2 else 1 for a, t in zip(spec.args, args)]


def load_data(spec: str) -> Any:
    """``"module:func"``: import the module (the working directory is importable) and return
    ``func()``: a tensor or tuple of tensors, the model's positional arguments."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise MeasureError(f"--data {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise MeasureError(f"--data {spec!r}: {module_name} has no function {func_name}")
    return func()


# --------------------------------------------------------------------------------------
# Where the model runs


class _Runnable:
    """The graph to execute: the user's model in place, or a copy on another device/dtype."""

    def __init__(self, graph: ArchGraph, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None):
        original = graph.graph_module if graph.graph_module is not None else graph.model if graph.model is not None else model
        self.device = device
        self.in_place = dtype is None and _same_device(device, _model_device(original))
        if self.in_place:
            self.graph = graph
            self.root = original
        else:
            try:
                copied = copy.deepcopy(original).to(device)
            except Exception as exc:
                raise MeasureError(f"cannot copy the model to {device}: {type(exc).__name__}: {exc}") from exc
            if dtype is not None:
                copied = copied.to(dtype)
            self.root = copied
            if graph.graph_module is not None:
                self.graph = dataclasses.replace(graph, graph_module=copied, model=copied)
            else:
                self.graph = dataclasses.replace(graph, model=copied)
        self.dtype = dtype or _float_dtype(self.root)

    def module(self, node: Node) -> nn.Module | None:
        if node.module_path is None:
            return None
        try:
            return self.root.get_submodule(node.module_path)
        except AttributeError:
            return None

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t


def _float_dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


# --------------------------------------------------------------------------------------
# Module configuration: which layers use batch statistics


@contextmanager
def _measuring(run: _Runnable) -> Iterator["_MeasureMode"]:
    """Everything a measurement changes on the modules is put back on exit, and the
    measurement's function overrides (fast tangents, dropout off) are active."""
    norms = [m for m in run.root.modules() if isinstance(m, _NormBase)]
    tracking = [(m, m.track_running_stats) for m in norms]
    with ExitStack() as stack:
        stack.enter_context(preserved_state(run.root))
        stack.callback(lambda: [setattr(m, "track_running_stats", flag) for m, flag in tracking])
        stack.enter_context(torch.no_grad())
        # The fused attention kernels have no forward-mode derivative; the math one does.
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        # Active modes also turn off nn.MultiheadAttention's fused fast path (same reason).
        yield stack.enter_context(_MeasureMode())


def _configure(root: nn.Module, batch_stat_norms: set[int], tracking: dict[int, bool]) -> None:
    """Eval mode everywhere except the norm layers in ``batch_stat_norms`` (ids), which
    normalise with the statistics of the batch and leave their running statistics alone:
    functorch cannot mutate buffers inside a transform, and they are restored anyway."""
    for m in root.modules():
        if id(m) in batch_stat_norms:
            m.training = True
            m.track_running_stats = False
        else:
            m.training = False
            if id(m) in tracking:
                m.track_running_stats = tracking[id(m)]


def _is_fresh(m: _BatchNorm) -> bool:
    """Running statistics as PyTorch initialises them: never populated."""
    return (
        m.running_mean is not None
        and m.num_batches_tracked is not None
        and int(m.num_batches_tracked) == 0
        and not m.running_mean.any()
        and bool((m.running_var == 1).all())
    )


# --------------------------------------------------------------------------------------
# The measurement plan: which passes, in which configuration


@dataclass
class _PassResult:
    accs: dict[str, "_NodeAcc"]
    pools: dict[str, torch.Tensor]
    info: "_NodeInfo"


class _Plan:
    def __init__(self, graph, args, batch_dims, batch_size, seed, segments, probes, population_probes, population, wanted):
        self.graph = graph
        # The nodes measured, in graph order.
        self.wanted = [node.name for node in graph if wanted is None or node.name in wanted]
        self.args = args
        self.batch_dims = batch_dims
        self.seed = seed
        self.segments = segments
        self.probes = probes
        self.population_probes = population_probes
        self.population = population
        n = args[0].shape[batch_dims[0]]
        self.notes: list[str] = []
        if n < 2:
            raise MeasureError("at least 2 samples are needed")
        self.requested_batch_size = batch_size
        self.batch_size = min(batch_size, n)
        self.sources = _sources(graph)
        self.preacts = {i for node in graph for i in node.inputs
                        if node.kind == OpKind.ACTIVATION and node.attrs.get("elementwise")}
        self.trace_batch = _trace_batch(graph, batch_dims)

    def run(self, run: _Runnable) -> "_Result":
        graph = run.graph
        norms = [m for m in run.root.modules() if isinstance(m, _NormBase)]
        tracking = {id(m): m.track_running_stats for m in norms}
        train_norms = {id(m) for m in norms if m.training}
        batch_bns = [m for m in norms if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)]
        fresh = [m for m in norms if isinstance(m, _BatchNorm) and not m.training and _is_fresh(m)]
        mode = "train-bn" if batch_bns else "eval"
        notes = list(self.notes)
        if mode == "train-bn" and self.batch_size < self.requested_batch_size:
            notes.append(f"only {self.batch_size} samples: one batch of {self.batch_size} instead of {self.requested_batch_size}")
        n = self.args[0].shape[self.batch_dims[0]]
        groups = _groups(n, self.batch_size, mode == "train-bn")
        if groups[-1][1] - groups[0][0] < n:
            used = groups[-1][1]
            notes.append(f"{n - used} samples left over after the last full batch of {self.batch_size} are not used")
        args = tuple(run.cast(a) for a in self.args)
        runner = _Runner(run, args, self.batch_dims, groups, self.sources, self.preacts, self.trace_batch)
        bn_nodes = _bn_nodes(graph, run)

        with _measuring(run) as measure_mode:
            runner.mode = measure_mode
            if fresh:
                # Populate eval-mode layers whose statistics were never populated; the
                # batches run through the model as it is trained (batch_bns on batch stats).
                _configure(run.root, train_norms | {id(m) for m in fresh}, tracking)
                stats = runner.run_pass(probes=0, want=set(), bn_modules=fresh, bn_nodes=bn_nodes, seed=self.seed)
                _populate(fresh, bn_nodes, stats)
                notes.append("BatchNorm layers in eval mode had fresh running statistics; populated them on the sample first: "
                             + ", ".join(sorted(_names(run.root, fresh))))
            _configure(run.root, train_norms, tracking)
            populatable = self.population and mode == "train-bn" and all(m.running_mean is not None for m in batch_bns)
            if self.population and mode == "train-bn" and not populatable:
                notes.append("no population (eval) value: some BatchNorm layers keep no running statistics")
            # One batch, and many values per channel: the population statistics are the batch's
            # own, so the eval-mode model computes the same values as the trained one and only
            # the tangent rule of batch norm differs. Its probes then ride along in the main
            # pass instead of a second full pass (see _fusable).
            fused = populatable and len(groups) == 1 and _fusable(graph, run, batch_bns, self.batch_size)
            starts = {s for s, _ in self.segments}
            every = set(self.wanted)
            pop_probes = self.population_probes if fused else 0
            main = runner.run_pass(self.probes + pop_probes, want=every, pool_names=starts,
                                   bn_modules=batch_bns if populatable and not fused else [], bn_nodes=bn_nodes,
                                   seed=self.seed, signs=True, eval_from=self.probes if fused else None)
            main, pop = _split_probes(main, self.probes) if fused else (main, None)
            # Probe noise of one probe per row, relative, at the output: decides how many
            # probes each pass needs (not below the minimum asked for).
            per_probe = _probe_noise(main.accs.get(graph.output))
            probes = max(self.probes, _probes_needed(per_probe, PROBE_SE))
            needed_pop = max(self.population_probes, _probes_needed(per_probe, POPULATION_PROBE_SE)) if fused else 0
            if probes > self.probes or needed_pop > pop_probes:
                extra = runner.run_pass(probes - self.probes + needed_pop - pop_probes, want=every, seed=self.seed + 500,
                                        eval_from=probes - self.probes if fused else None)
                extra_main, extra_pop = _split_probes(extra, probes - self.probes) if fused else (extra, None)
                _add_probes(main, extra_main)
                if fused:
                    _add_probes(pop, extra_pop)
                    pop_probes = needed_pop
            segs = {seg: runner.segment(seg, probes, main.pools, seed=self.seed + 1 + i)
                    for i, seg in enumerate(self.segments)}
            pop_segs: dict = {}
            if fused:
                # All probes with the population tangent rule, on the same values.
                pop_segs = {seg: runner.segment(seg, pop_probes, main.pools, seed=self.seed + 1001 + i, eval_from=0)
                            for i, seg in enumerate(self.segments)}
            elif populatable:
                _populate(batch_bns, bn_nodes, main)
                _configure(run.root, train_norms - {id(m) for m in batch_bns}, tracking)
                pop_probes = max(self.population_probes, _probes_needed(per_probe, POPULATION_PROBE_SE))
                pop = runner.run_pass(pop_probes, want=every, pool_names=starts, seed=self.seed + 1000)
                pop_segs = {seg: runner.segment(seg, pop_probes, pop.pools, seed=self.seed + 1001 + i)
                            for i, seg in enumerate(self.segments)}
        if not populatable:
            pop_probes = None
        result = _Result(self, run, mode, main, pop, segs, pop_segs, notes + runner.notes, runner.sources)
        result.probes, result.population_probes = probes, pop_probes
        return result


def _probe_noise(acc: "_NodeAcc | None") -> float | None:
    """The relative variance that ONE probe per row contributes to the NLC estimate, from
    the spread between the probes of each row (None with fewer than two probes)."""
    if acc is None or not acc.has_tangent or not acc.a or acc.a[0].shape[0] < 2:
        return None
    a = torch.cat(acc.a, dim=1)  # (probes, rows)
    mean = a.mean()
    if not bool(torch.isfinite(mean)) or float(mean) <= 0:
        return None
    # Var of the numerator with one probe per row is mean_row Var_probe(a) / rows; the NLC
    # is its square root, which halves the relative error. (Relative first: the squared
    # tangents of a tiny signal underflow when squared again.)
    return float((a / mean).var(0).mean()) / a.shape[1] / 4


def _probes_needed(per_probe: float | None, target: float) -> int:
    if per_probe is None:
        return 1
    return min(MAX_PROBES, max(1, math.ceil(per_probe / target**2)))


def _add_probes(result: "_PassResult", extra: "_PassResult") -> None:
    """Merge the tangent terms of a pass with more probes (same rows, same batches)."""
    for name, acc in result.accs.items():
        more = extra.accs.get(name)
        if more is not None and acc.has_tangent and more.has_tangent:
            acc.a = [torch.cat([a, b]) for a, b in zip(acc.a, more.a)]


def _split_probes(result: "_PassResult", k: int) -> tuple["_PassResult", "_PassResult"]:
    """A pass whose first k probes carried the batch tangent rule and the rest the
    population one, as two passes: the values (and their statistics) are shared."""
    first, rest = {}, {}
    for name, acc in result.accs.items():
        first[name], rest[name] = copy.copy(acc), copy.copy(acc)
        if acc.has_tangent:
            first[name].a = [a[:k] for a in acc.a]
            rest[name].a = [a[k:] for a in acc.a]
    return _PassResult(first, result.pools, result.info), _PassResult(rest, result.pools, result.info)


# With this many values per channel or more, normalising by the biased batch variance (the
# trained function) instead of the unbiased one that PyTorch keeps as running_var changes a
# layer's scale by under 0.05%. A CIFAR ResNet at batch 128 has 2048 and more; a BatchNorm1d
# MLP has the batch size (128), where deep chaotic stacks amplify the difference (a depth-20
# BN-ReLU MLP at batch 32: 24%), so such models keep their own population pass.
FUSED_MIN_COUNT = 1024


def _fusable(graph: ArchGraph, run: _Runnable, batch_bns: list[_BatchNorm], batch_size: int) -> bool:
    """Whether the population value can come from the main pass: with one batch, the running
    statistics populated from it are that batch's statistics (the variance up to the factor
    count / (count - 1)), so the eval-mode model computes the values of the trained one, and
    its NLC is that of the same values with batch norm's tangent a per-channel scale. Every
    batch-statistics layer must see FUSED_MIN_COUNT values per channel, and no functional
    batch_norm outside a module may be in the graph (it keeps batch statistics in eval mode)."""
    ids = {id(m) for m in batch_bns}
    for node in graph:
        module = run.module(node)
        if node.op == "batch_norm" and module is None:
            return False
        if module is None or id(module) not in ids:
            continue
        shape = graph[node.inputs[0]].shape if node.inputs else None
        if not shape or len(shape) < 2:
            return False
        if batch_size * math.prod(shape[2:]) < FUSED_MIN_COUNT:
            return False
    return True


def _groups(n: int, batch_size: int, exact: bool) -> list[tuple[int, int]]:
    """Row ranges of the batches. With batch statistics every batch has exactly batch_size
    rows (a smaller last batch would be a different function); otherwise the last may be short."""
    if exact:
        return [(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _sources(graph: ArchGraph) -> list[str]:
    """Where the tangent enters: the floating-point inputs; for integer inputs (token ids) the
    embedding outputs computed from them, else the first floating-point node they feed."""
    inputs = graph.inputs
    floats = [n.name for n in inputs if _is_float_dtype(n.dtype)]
    integer = {n.name for n in inputs if not _is_float_dtype(n.dtype)}
    if not integer:
        return floats
    fed = [n for n in graph if n.kind != OpKind.INPUT and _is_float_dtype(n.dtype) and graph.ancestors(n.name) & integer]
    embeddings = [n.name for n in fed if n.kind == OpKind.EMBEDDING]
    extra = (embeddings or [fed[0].name]) if fed else []
    if not floats and not extra:
        raise MeasureError("no floating-point node depends on the inputs: nothing to measure")
    return floats + extra


def _is_float_dtype(dtype: str | None) -> bool:
    return dtype in ("float16", "bfloat16", "float32", "float64")


def _trace_batch(graph: ArchGraph, batch_dims: list[int]) -> int | None:
    """The batch size the graph's recorded shapes were traced with."""
    for t, d in zip(graph.example_inputs, batch_dims):
        if isinstance(t, torch.Tensor) and t.dim() > d:
            return t.shape[d]
    return None


def _bn_nodes(graph: ArchGraph, run: _Runnable) -> dict[int, list[str]]:
    """For each BatchNorm module (by id), the input nodes of its calls."""
    found: dict[int, list[str]] = {}
    for node in graph:
        module = run.module(node)
        if isinstance(module, _BatchNorm) and node.inputs:
            found.setdefault(id(module), []).append(node.inputs[0])
    return found


def _names(root: nn.Module, modules: list[nn.Module]) -> list[str]:
    ids = {id(m) for m in modules}
    return [name for name, m in root.named_modules() if id(m) in ids]


def _populate(modules: list[_BatchNorm], bn_nodes: dict[int, list[str]], stats: _PassResult) -> None:
    """Running statistics as ``momentum=None`` (a cumulative average) would leave them after
    one train-mode forward pass per batch: the mean of the batch means and of the unbiased
    batch variances of the layer's input."""
    for m in modules:
        calls = [stats.accs[name] for name in bn_nodes.get(id(m), []) if name in stats.accs]
        means = [c for acc in calls for c in acc.chan_mean]
        variances = [c for acc in calls for c in acc.chan_var]
        if not means:
            continue
        m.running_mean.copy_(torch.stack(means).mean(0))
        m.running_var.copy_(torch.stack(variances).mean(0))
        m.num_batches_tracked.fill_(len(means))


# --------------------------------------------------------------------------------------
# One pass over all batches


class _Stop(Exception):
    """Raised after the last node a pass needs, to skip the rest of the forward."""


@dataclass
class _NodeInfo:
    """What a pass learns about nodes besides their numbers (shared by all batches)."""

    batch_dim: dict[str, int | None] = field(default_factory=dict)
    not_float: set[str] = field(default_factory=set)
    # Nodes whose value was a single tensor (tuple-valued nodes never reach on_node).
    seen: set[str] = field(default_factory=set)


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
                 seed: int = 0, signs: bool = False, eval_from: int | None = None) -> _PassResult:
        """``eval_from``: probes from this index on take the population (eval-mode) tangent
        rule of train-mode batch norm, with the batch's statistics (see _fusable)."""
        pools = self.source_pools() if probes else {}
        bn_inputs = {name for m in bn_modules for name in (bn_nodes or {}).get(id(m), [])}
        self.eval_from = eval_from
        try:
            return self._pass(self.sources if probes else [], pools, probes, want, set(pool_names), bn_inputs, None, seed, signs)
        finally:
            self.eval_from = None

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
            self.notes.append(f"probes run one by one (vmap failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            try:
                return self._pass_once(sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs)
            except Exception as exc2:
                raise MeasureError(f"the model failed during the measurement: {type(exc2).__name__}: {exc2}") from exc2

    def _pass_once(self, sources, pools, probes, want, pool_names, bn_inputs, stop_after, seed, signs) -> _PassResult:
        generator = torch.Generator().manual_seed(seed)
        perms = [torch.randperm(self.n, generator=generator).to(self.run.device) for _ in range(probes)]
        means = {s: pools[s].mean(0) for s in sources}
        bds = {s: self._source_batch_dim(s) for s in sources}
        accs: dict[str, _NodeAcc] = {}
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in pool_names}
        for lo, hi in self.groups:
            # Rows lo..hi of each probe's permutation: without replacement within a batch, so
            # the rows' directions are (nearly) independent draws, as batch-NLC needs.
            dirs = {s: torch.stack([(pools[s][p[lo:hi]] - means[s]).movedim(0, bds[s]) for p in perms]) for s in sources}
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
        info = self.info

        def body(shifts: dict[str, torch.Tensor]) -> dict:
            out: dict[str, dict] = {"nodes": {}, "pools": {}}

            def on_node(name: str, t: torch.Tensor):
                replaced = None
                if name in shifts:
                    # Adding a zero whose tangent is the direction: the value is unchanged and
                    # the tangent enters here.
                    replaced = t = t + shifts[name]
                if name in want or name in pool_names or name in bn_inputs:
                    info.seen.add(name)
                    primal, tangent = fwAD.unpack_dual(t)
                    if not primal.is_floating_point():
                        info.not_float.add(name)
                    else:
                        bd = _batch_dim(graph[name], primal, n, self.trace_batch)
                        info.batch_dim[name] = bd
                        if bd is not None and (name in want or name in bn_inputs):
                            out["nodes"][name] = _node_stats(primal, tangent, bd, n, signs and name in self.preacts, name in bn_inputs)
                        if bd is not None and name in pool_names:
                            # A copy: in-place ops further on (ReLU(inplace), +=) may reuse it.
                            out["pools"][name] = primal.movedim(bd, 0).clone()
                if name == stop_after:
                    raise _Stop
                return replaced

            try:
                execute(graph, args, on_node)
            except _Stop:
                pass
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
                if "a" in stats:
                    stats["a"] = torch.stack([p["nodes"][name]["a"] for p in per_probe])
            return out

        def one_probe(*directions):
            def f(*z):
                return z, body(dict(zip(names, z)))

            return jvp(f, zeros, directions, has_aux=True)[2]

        with self._eval_probes(self.eval_from):
            out = vmap(one_probe)(*(dirs[s] for s in names))
        # vmap stacks every output over the probes; only the tangent terms ("a") differ.
        for stats in out["nodes"].values():
            for key in stats:
                if key != "a":
                    stats[key] = stats[key][0]
        out["pools"] = {k: v[0] for k, v in out["pools"].items()}
        return out


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


def _node_stats(p: torch.Tensor, tangent: torch.Tensor | None, bd: int, n: int, signs: bool, bn_input: bool) -> dict:
    """The sufficient statistics of one node over one batch, as tensors (under vmap they are
    the only way out): m, the per-unit mean; b, each row's squared distance from it; a, each
    row's squared tangent norm per probe; pos, per-unit counts of positive values; chan_*,
    BatchNorm's per-channel batch statistics of this (input) node.

    Writing a new tensor the size of a node costs several times more than reading one on a
    CPU, so everything here is a reduction that reads the node without temporaries; cdist
    without the matrix-product shortcut computes the centred row norms exactly that way."""
    flat = p.movedim(bd, 0).reshape(n, -1)
    if flat.dtype in _LOW_PRECISION:
        # The model computed in half precision; its statistics need not (cdist has no half
        # kernel on CPU, and squared norms overflow float16).
        flat = flat.float()
        tangent = tangent.float() if tangent is not None else None
    m = flat.mean(0)
    distance = torch.cdist(flat[None], m[None, None], compute_mode="donot_use_mm_for_euclid_dist")
    stats = {"m": m, "b": distance.view(n).square()}
    if tangent is not None:
        # Reduced over all other dims in place: a reshape would copy a tangent whose probe
        # dimension vmap keeps in another position.
        others = [d for d in range(tangent.dim()) if d != bd]
        stats["a"] = torch.linalg.vector_norm(tangent, dim=others).square() if others else tangent.square()
    if signs:
        stats["pos"] = (flat > 0).sum(0, dtype=torch.int32)
    if bn_input and bd == 0 and p.dim() >= 2:
        # Per channel (dim 1) over the batch and all positions, as BatchNorm computes them
        # (its own kernel is several times faster than var_mean over those dimensions).
        _, mean, invstd = torch.native_batch_norm(p, None, None, None, None, True, 0.0, 0.0)
        count = p.numel() // p.shape[1]
        stats["chan_mean"] = mean
        stats["chan_var"] = invstd.pow(-2) * (count / max(count - 1, 1))  # unbiased, as PyTorch keeps it
    return stats


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

    def add(self, s: dict) -> None:
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


# --------------------------------------------------------------------------------------
# From accumulated sums to numbers


@dataclass
class _Value:
    """The NLC part of a node's result, with what it needs to decide on a float64 re-check."""

    status: str
    nlc: float | None = None
    se: float | None = None
    stats: dict[str, float | None] = field(default_factory=dict)
    # Why float32 cannot be trusted here (None when it can).
    doubt: str | None = None


def _evaluate(acc: _NodeAcc | None, info: _NodeInfo, name: str, dtype: torch.dtype) -> _Value:
    if name not in info.seen:
        return _Value("not-tensor")
    if name in info.not_float:
        return _Value("not-float")
    if acc is None:
        return _Value("not-per-sample")
    acc = _on_host(acc)
    n = acc.n
    mean = acc.mean
    var = float(acc.m2) / n  # tr Cov over the sample (biased, like the directions)
    msq = float(mean.square().sum())
    units = mean.numel()
    a = torch.cat(acc.a, dim=1).mean(0) if acc.has_tangent and acc.a else None  # per row, over probes
    b = torch.cat(acc.b)
    checked = [mean, b] + ([a] if a is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in checked):
        # A unit that overflowed has an infinite mean (NaN once +inf meets -inf in the
        # centring): any inf means the signal exploded, NaN alone that the model made NaNs.
        exploded = any(bool(torch.isinf(t).any()) for t in checked)
        status = "exploded" if exploded else "nan"
        return _Value(status, doubt=status)
    scale = var + msq
    stats: dict[str, float | None] = {
        "mean": float(mean.mean()),
        "rms": math.sqrt(scale / units),
        "std": math.sqrt(max(scale / units - float(mean.mean()) ** 2, 0.0)),
        "neuron_bias": math.sqrt(msq / scale) if scale > 0 else None,
        "spread": math.sqrt(var / scale) if scale > 0 else None,
        "unit_var": var / units,
        "unit_mean_sq": msq / units,
    }
    if acc.pos is not None:
        # N counts the values that are not positive: exact zeros are as inactive as negatives.
        pos = acc.pos.double()
        stats["sign_diversity"] = float(torch.minimum(pos, n - pos).mean() / n)
        stats["dead_fraction"] = float((acc.pos == 0).double().mean())
    finfo = torch.finfo(dtype)
    # Rounding makes any variance below (eps * scale)^2 meaningless; near the underflow
    # threshold values lose their precision altogether.
    # float16's smallest normal number (6e-5) is itself a plausible activation scale: for it
    # the margin is a factor 10 on the RMS instead of 1e6 on the mean square.
    floor = (10 * finfo.tiny) ** 2 if dtype == torch.float16 else finfo.tiny * 1e6
    resolved = var > (64 * finfo.eps) ** 2 * scale and scale / units > floor
    if a is None:
        return _Value("constant" if var == 0 else "no-gradient", stats=stats)
    if not resolved:
        # Rechecked in float64 unless all-zero weights made it (see _Result._doubts).
        return _Value("vanished", stats=stats, doubt="vanished")
    numerator = float(a.mean())
    if numerator == 0:
        return _Value("no-gradient", nlc=0.0, se=0.0, stats=stats)
    nlc = math.sqrt(numerator / var)
    se = nlc * _relative_se(a, b)
    doubt = "spread" if stats["spread"] is not None and stats["spread"] < PRECISION_SPREAD else None
    return _Value("ok", nlc=nlc, se=se, stats=stats, doubt=doubt)


def _on_host(acc: _NodeAcc) -> _NodeAcc:
    """The sums _evaluate reads, copied to the CPU at once: it reads a dozen scalars per
    node, and on a GPU each would be a small kernel and a synchronisation."""
    if acc.mean is None or acc.mean.device.type == "cpu":
        return acc
    host = copy.copy(acc)
    host.mean, host.m2 = acc.mean.cpu(), acc.m2.cpu()
    host.a = [torch.cat(acc.a, dim=1).cpu()] if acc.a else []
    host.b = [torch.cat(acc.b).cpu()]
    host.pos = acc.pos.cpu() if acc.pos is not None else None
    return host


def _relative_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of sqrt(mean a / mean b) relative to it, by the delta method: a and b
    are per-row numerator and denominator terms, correlated through the row."""
    n = a.numel()
    if n < 2:
        return float("nan")
    ma, mb = a.mean(), b.mean()
    da, db = a / ma - 1, b / mb - 1
    var_log = (da.var() + db.var() - 2 * ((da - da.mean()) * (db - db.mean())).sum() / (n - 1)) / n
    return 0.5 * math.sqrt(max(float(var_log), 0.0))


class _Result:
    """The numbers of one run of the plan (one precision), before they become a Report."""

    def __init__(self, plan: _Plan, run: _Runnable, mode, main: _PassResult, pop, segs, pop_segs, notes, sources):
        self.plan = plan
        self.sources = sources
        self.graph = run.graph
        self.dtype = run.dtype
        self.mode = mode
        self.notes = notes + _run_notes(run)
        self.main = {name: _evaluate(main.accs.get(name), main.info, name, run.dtype) for name in plan.wanted}
        self.pop = None
        if pop is not None:
            self.pop = {name: _evaluate(pop.accs.get(name), pop.info, name, run.dtype) for name in plan.wanted}
        self.segs = {k: _evaluate(r.acc, r.info, r.name, run.dtype) for k, r in segs.items()}
        self.pop_segs = {k: _evaluate(r.acc, r.info, r.name, run.dtype) for k, r in pop_segs.items()}
        self.reasons = self._doubts(run)
        self.output_nlc_float32: float | None = None
        self.output_by_dtype: dict[str, NodeStats] = {}
        self.probes = plan.probes
        self.population_probes: int | None = None

    def _doubts(self, run: _Runnable) -> list[str]:
        """Why a float64 re-check is needed: nodes whose float32 numbers are rounding artefacts.
        An exact zero made by all-zero weights (zero-initialised layers) is not one."""
        structural: set[str] = set()
        reasons = []
        out = self.main[self.graph.output]
        if out.nlc is not None and out.nlc > PRECISION_NLC:
            reasons.append(f"{self.graph.output} (NLC {out.nlc:.3g} > {PRECISION_NLC:g})")
        low = sorted({n.dtype for n in self.graph if n.dtype in ("float16", "bfloat16")} | (
            {_dtype_name(self.dtype)} if self.dtype in _LOW_PRECISION else set()))
        if low and self.dtype != torch.float64:
            reasons.append(f"{'/'.join(low)} computation (precision check)")
        for values in [self.main] + ([self.pop] if self.pop else []):
            for node in self.graph:
                v = values.get(node.name)
                if v is None:
                    continue  # not asked for
                if v.status == "vanished" and (_zero_weight(run.module(node)) or any(i in structural for i in node.inputs)):
                    structural.add(node.name)
                    continue
                if v.doubt is not None:
                    reasons.append(f"{node.name} ({v.doubt})")
        for v, (start, end) in [(v, k) for k, v in list(self.segs.items()) + list(self.pop_segs.items())]:
            if v.doubt is not None and end not in structural:
                reasons.append(f"segment {start}->{end} ({v.doubt})")
        return list(dict.fromkeys(reasons))

    @property
    def needs_float64(self) -> bool:
        return bool(self.reasons)

    def report_nodes(self) -> dict[str, NodeStats]:
        nodes = {}
        for name in self.plan.wanted:
            node, v = self.graph[name], self.main[name]
            s = NodeStats(name=node.name, kind=node.kind.value, op=node.op, status=v.status, nlc=v.nlc, nlc_se=v.se,
                          dtype=_dtype_name(self.dtype), **v.stats)
            if self.pop is not None:
                p = self.pop[node.name]
                s.nlc_population, s.nlc_population_se, s.status_population = p.nlc, p.se, p.status
            nodes[node.name] = s
        return nodes

    def report(self, model_name: str, device: str) -> Report:
        segments = {}
        for key, v in self.segs.items():
            seg = SegmentStats(start=key[0], end=key[1], status=v.status, nlc=v.nlc, nlc_se=v.se, dtype=_dtype_name(self.dtype))
            if key in self.pop_segs:
                p = self.pop_segs[key]
                seg.nlc_population, seg.nlc_population_se, seg.status_population = p.nlc, p.se, p.status
            segments[key] = seg
        plan = self.plan
        return Report(
            model=model_name,
            output=self.graph.output,
            mode=self.mode,
            device=device,
            dtype=_dtype_name(self.dtype),
            batch_size=plan.batch_size,
            samples=_groups(plan.args[0].shape[plan.batch_dims[0]], plan.batch_size, self.mode == "train-bn")[-1][1],
            probes=self.probes,
            population_probes=self.population_probes,
            sources=list(self.sources),
            nodes=self.report_nodes(),
            segments=segments,
            output_nlc_float32=self.output_nlc_float32,
            notes=self.notes,
        )


def _run_notes(run: _Runnable) -> list[str]:
    notes = []
    if not run.in_place:
        notes.append(f"measured a copy of the model on {run.device} ({_dtype_name(run.dtype)})")
    return notes


def _zero_weight(module: nn.Module | None) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.numel() > 0 and not bool(w.detach().any())


# --------------------------------------------------------------------------------------
# Function overrides during a measurement


def _has_tangent(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None


class _AffineInInput(torch.autograd.Function):
    """y = func(x, *args) for a func that is affine in x: its tangent is the linear part,
    tangent_func(t, *tangent_args) (for convolution and linear: the same call without the
    bias). PyTorch's own forward-mode rules for convolution and linear also convolve the input
    with a zero weight tangent, a third convolution."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, func, args, kwargs, tangent_func, tangent_args, tangent_kwargs):
        return func(x, *args, **kwargs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, _, ctx.tangent_func, ctx.tangent_args, ctx.tangent_kwargs = inputs

    @staticmethod
    def jvp(ctx, x_t, *_):
        return ctx.tangent_func(x_t, *ctx.tangent_args, **ctx.tangent_kwargs)


def _scale_channels(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The tangent of eval-mode batch norm: a per-channel (dim 1) scale. A plain broadcast
    product: under vmap, F.batch_norm would fold the probes into the channels (a copy)."""
    return t * scale.view([1, -1] + [1] * (t.dim() - 2))


class _BatchNormTrain(torch.autograd.Function):
    """Batch normalisation with the statistics of the batch, with a lean tangent rule.

    With batch means <.> per channel, xhat = (x - mu) / sigma and s = gamma / sigma:
        dy = s * (dx - <dx> - xhat * <dx * xhat>).
    That is also the formula of its gradient (the Jacobian is symmetric within a channel), so
    PyTorch's fused batch-norm backward kernel computes the tangent in one pass over the data;
    PyTorch's forward-mode rule takes about six and materialises zero tangents for the running
    statistics."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, eps, eval_from):
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        return out, mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps, eval_from = inputs
        _, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_forward(x, mean, invstd)
        ctx.weight, ctx.eps, ctx.eval_from = weight, eps, eval_from

    @staticmethod
    def jvp(ctx, x_t, *_):
        x, mean, invstd = ctx.saved_tensors
        return _BatchNormTangent.apply(x_t, x, ctx.weight, mean, invstd, ctx.eps, ctx.eval_from), None, None


class _BatchNormTangent(torch.autograd.Function):
    """The train-mode batch-norm tangent through the fused backward kernel, one probe at a
    time under vmap: that kernel's own batching rule is several times slower.

    Probes from ``eval_from`` on (None: none) take the population rule instead: the batch
    statistics held fixed, a per-channel scale (see _fusable)."""

    @staticmethod
    def forward(x_t, x, weight, mean, invstd, eps, eval_from):
        if eval_from == 0:
            return _scale_channels(x_t, invstd if weight is None else invstd * weight)
        return torch.ops.aten.native_batch_norm_backward(x_t, x, weight, None, None, mean, invstd, True, eps, [True, False, False])[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, *args):
        size = info.batch_size
        eval_from = args[-1]
        per_probe = [
            _BatchNormTangent.apply(*(a.select(d, k) if d is not None else a for a, d in zip(args[:-1], in_dims)),
                                    None if eval_from is None or k < eval_from else 0)
            for k in range(size)
        ]
        return torch.stack(per_probe), 0


_AFFINE_FUNCS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout}
_BN_ARGS = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
# The oneDNN (mkldnn) recurrent kernels have no forward-mode derivative; PyTorch's own have.
# cuDNN's are turned off too, assuming they lack one as well (unchecked: no GPU was at hand).
_RNN_FUNCS = {torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu}


class _MeasureMode(TorchFunctionMode):
    """Dropout off (fx bakes ``training=True`` into functional calls), recurrent layers on
    kernels that have forward-mode derivatives, and cheaper tangent rules for the layers that
    dominate the cost: convolutions, linear layers and batch norm."""

    # Probes from this index on take the population rule of train-mode batch norm (set by
    # the runner around a pass; None: all probes take the batch rule).
    eval_from: int | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DROPOUT_FUNCS:
            return args[0] if args else kwargs["input"]
        if func in _RNN_FUNCS:
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
                return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            if "dropout_p" in kwargs:
                kwargs = {**kwargs, "dropout_p": 0.0}
            elif len(args) > 4:
                args = args[:4] + (0.0,) + tuple(args[5:])
        if (func in _AFFINE_FUNCS or func is F.batch_norm) and args and _has_tangent(args[0]):
            if func in _AFFINE_FUNCS and not any(_has_tangent(a) for a in list(args[1:]) + list(kwargs.values())):
                rest, tangent_rest = tuple(args[1:]), list(args[1:])
                tangent_kwargs = dict(kwargs)
                if len(tangent_rest) >= 2:
                    tangent_rest[1] = None  # the bias: linear(x, w, b), conv*(x, w, b, ...)
                if "bias" in tangent_kwargs:
                    tangent_kwargs["bias"] = None
                return _AffineInInput.apply(args[0], func, rest, kwargs, func, tuple(tangent_rest), tangent_kwargs)
            if func is F.batch_norm:
                bn = dict(zip(_BN_ARGS, args[1:]), **kwargs)
                weight, bias, eps = bn.get("weight"), bn.get("bias"), bn.get("eps", 1e-5)
                if not (_has_tangent(weight) or _has_tangent(bias)):
                    if bn.get("training", False):
                        return _BatchNormTrain.apply(args[0], weight, bias, eps, self.eval_from)[0]
                    rest = (bn["running_mean"], bn["running_var"], weight, bias, False, 0.0, eps)
                    scale = torch.rsqrt(bn["running_var"] + eps)
                    if weight is not None:
                        scale = scale * weight
                    return _AffineInInput.apply(args[0], F.batch_norm, rest, {}, _scale_channels, (scale,), {})
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------
# ``archlint.measure(model, ...)``: the module is callable


class _CallableModule(types.ModuleType):
    """``archlint.measure(...)`` calls ``archlint.measure.measure(...)``.

    The public API is ``archlint.measure(model)``, and ``archlint.measure`` is also this
    module, which rules and the engine import (``from archlint.measure import Report``).
    Making the module callable keeps both spellings working with one object, where renaming
    the module would break every existing import of it."""

    def __call__(self, model: nn.Module, inputs: Any = None, **kwargs: Any) -> Report:
        return measure(model, inputs, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# inspect.signature(archlint.measure) and help() show measure()'s parameters.
__signature__ = inspect.signature(measure)
