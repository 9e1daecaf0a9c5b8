"""The measurement plan: which passes run, in which module configuration, with how many
probes; and which BatchNorm layers get their running statistics populated first."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from archlint import memory, patterns
from archlint.graph import ArchGraph, OpKind
from archlint.measure import cotangents, deflate
from archlint.measure.evaluate import _Result
from archlint.measure.model import _configure, _is_fresh, _measuring, _Runnable
from archlint.measure.replay import Replay
from archlint.measure.report import MeasureError, failure
from archlint.measure.runner import _groups, _NodeAcc, _PassResult, _Runner

# Tangent directions per input row, at least. Each probe costs about one forward pass. The
# probe noise of the numerator shrinks like 1/sqrt(samples * probes) and depends on the
# model: an output whose Jacobian has few large singular values needs more probes. So the
# part of the output NLC's relative standard error that comes from the probes is estimated
# (from the spread between the probes of each row), and if it is above PROBE_SE a second
# pass adds probes (up to MAX_PROBES in all). 1.75% keeps the estimate within 5% of the
# sample's exact NLC at about 3 sigma, and adds about 15% to the ~3% sampling error of 128
# samples; a CIFAR ResNet-18 with a 10-way head meets it with 2 probes.
PROBES = 2
# An output of more units per row than this (a language model's logits at every position, an
# image-to-image network) starts with ONE probe. Its Jacobian has many directions, so one
# probe per row is far inside the target: a GPT's (64 positions x 512 logits) relative
# variance per probe was 5e-6 against the target's 3.1e-4, a 32-step LSTM language model's
# 8e-6. With one probe the spread between a row's probes is unknown, but the spread between
# the rows bounds it (_probe_noise), and a pass adds probes where the bound asks for them.
# The limit deflate.wide tests (deflate.MAX_UNITS): an output up to it may be deflated instead.
WIDE_OUTPUT_UNITS = deflate.MAX_UNITS
PROBE_SE = 0.0175
MAX_PROBES = 16
# The population (eval) pass of a train-mode BatchNorm model is a second full pass. Its
# value is compared with the batch NLC, whose differences of interest are 10% and more, so
# its probe noise may be larger: the probes it needs for this, at least POPULATION_PROBES.
POPULATION_PROBE_SE = 0.025
POPULATION_PROBES = 1


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
        # Probes per sample the noise may ask for (fewer under a time budget: measure.budget).
        self.max_probes = MAX_PROBES
        # Probes per sample the caller asked for (None: as the plan chooses).
        self.asked_probes: int | None = None
        # The wanted nodes whose NLC is asked for (None: all of them); the others need only
        # their signal statistics.
        self.nlc_wanted: set[str] | None = None
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
            if (fused or not populatable) and by_cotangents(graph, runner.trace_batch, self.batch_size, run.dtype, run.device,
                                                            set(self.wanted), self.nlc_wanted, bool(self.segments)):
                found = self._by_cotangents(runner, fused, notes)
                if found is not None:
                    main, pop, probes, pop_probes = found
                    result = _Result(self, run, mode, main, pop, {}, {}, notes + runner.notes, runner.sources)
                    result.probes, result.population_probes = probes, (pop_probes if populatable else None)
                    return result
            starts = {s for s, _ in self.segments}
            every = set(self.wanted)
            pop_probes = self.population_probes if fused else 0
            if deflate.wanted(graph, runner.trace_batch, self.batch_size, run.dtype, run.device):
                runner.keep_tangent = {graph.output}
            # Passes after the main one over the same batch are likely where the output has few
            # units per row (its probe noise may ask for more probes or a deflation) and
            # where there are segments. Elsewhere keeping them only costs: the GPT's linear
            # values (about 240 MB) kept, its output NLC took 1.45 s against 1.38 s
            # (benchmarks/bench_cost.py --part replay, before this condition).
            likely = bool(runner.keep_tangent or self.segments)
            if likely and len(groups) == 1 and _replayable(graph, runner.trace_batch, self.batch_size, run.dtype, run.device):
                measure_mode.replay = Replay()
            main = runner.run_pass(self.probes + pop_probes, want=every, pool_names=starts,
                                   bn_modules=batch_bns if populatable and not fused else [], bn_nodes=bn_nodes,
                                   seed=self.seed, signs=True, eval_from=self.probes if fused else None)
            if measure_mode.replay is not None:
                measure_mode.replay.recording = False
            main, pop = _split_probes(main, self.probes) if fused else (main, None)
            # Probe noise of one probe per row, relative, at the output: decides how many
            # probes each pass needs (not below the minimum asked for).
            per_probe = _probe_noise(main.accs.get(graph.output))
            deflated = pop_deflated = None
            # Only where it saves probes that would run (the time budget caps them).
            needed = min(_probes_needed(per_probe, PROBE_SE), self.max_probes)
            if runner.keep_tangent and needed - self.probes >= deflate.MIN_SAVED_PROBES:
                out = main.accs[graph.output]
                v = deflate.direction(out.t)
                left = _probe_noise(deflate.left_to_probes(out, v))
                after = max(self.probes, _probes_needed(left, PROBE_SE))
                if needed - after >= deflate.MIN_SAVED_PROBES:
                    # The population riding along takes its part along v from the batch's where each
                    # of its probes shares a batch probe's directions and no more will be needed
                    # (deflate.project_paired); else its own direction, in the same forward pass.
                    paired = (fused and deflate.PAIRED and pop_probes <= self.probes
                              and self._population_probes(left) <= pop_probes)
                    try:
                        directions = [(v, False)] + ([(deflate.direction(pop.accs[graph.output].t), True)]
                                                     if fused and not paired else [])
                        deflated, *rest = deflate.find(runner, directions, self.seed + 700)
                        pop_deflated = rest[0] if rest else None
                    except Exception as exc:  # an optimisation: the probes measure without it
                        deflated = pop_deflated = None
                        notes.append(f"probes not deflated (the reverse-mode pass failed: {failure(exc)})")
                    else:
                        deflate.project(out, deflated)
                        if paired:
                            deflate.project_paired(pop.accs[graph.output], out, deflated)
                        elif pop_deflated is not None:
                            deflate.project(pop.accs[graph.output], pop_deflated)
                        notes.append("the output's numerator along the direction its rows share computed exactly by "
                                     "a reverse-mode pass, the probes estimating the rest (measure.deflate)")
                        per_probe = _probe_noise(out)
            probes = max(self.probes, _probes_needed(per_probe, PROBE_SE))
            if probes > self.max_probes:
                notes.append(_capped(self.max_probes, probes))
                probes = max(self.probes, self.max_probes)
            needed_pop = self._population_probes(per_probe) if fused else 0
            if probes > self.probes or needed_pop > pop_probes:
                extra = runner.run_pass(probes - self.probes + needed_pop - pop_probes, want=every, seed=self.seed + 500,
                                        eval_from=probes - self.probes if fused else None, tangent_only=True)
                extra_main, extra_pop = _split_probes(extra, probes - self.probes) if fused else (extra, None)
                if deflated is not None:
                    deflate.project(extra_main.accs[graph.output], deflated)
                _add_probes(main, extra_main)
                if fused:
                    if pop_deflated is not None:
                        deflate.project(extra_pop.accs[graph.output], pop_deflated)
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
                # Batch norm on running statistics: other values from here on.
                measure_mode.replay = None
                _populate(batch_bns, bn_nodes, main)
                _configure(run.root, train_norms - {id(m) for m in batch_bns}, tracking)
                pop_probes = self._population_probes(per_probe)
                pop = runner.run_pass(pop_probes, want=every, pool_names=starts, seed=self.seed + 1000)
                if deflated is not None:
                    try:
                        pop_out = pop.accs[graph.output]
                        deflate.project(pop_out, deflate.find(runner, [(deflate.direction(pop_out.t), False)], self.seed + 701)[0])
                    except Exception as exc:  # as above
                        notes.append(f"population probes not deflated (the reverse-mode pass failed: {failure(exc)})")
                pop_segs = {seg: runner.segment(seg, pop_probes, pop.pools, seed=self.seed + 1001 + i)
                            for i, seg in enumerate(self.segments)}
        if not populatable:
            pop_probes = None
        result = _Result(self, run, mode, main, pop, segs, pop_segs, notes + runner.notes, runner.sources)
        result.probes, result.population_probes = probes, pop_probes
        return result

    def _population_probes(self, per_probe: float | None) -> int:
        """Population probes per row for the output's probe noise ``per_probe`` (relative, of
        one probe per row): at least the minimum asked for, at most the budget's."""
        return max(self.population_probes, min(self.max_probes, _probes_needed(per_probe, POPULATION_PROBE_SE)))

    def _by_cotangents(self, runner: _Runner, fused: bool, notes: list[str]):
        """The output's NLC by reverse-mode probes (measure.cotangents), the other wanted nodes'
        signal statistics from the same forward passes: (main pass, population pass or None,
        probes, population probes). One probe per row first (or as many as were
        asked for), and more where its noise asks for them: on the first batch's recorded
        graph, and if the whole sample still asks for more, by another pass. None where a
        reverse-mode pass fails: forward-mode probes measure instead (noted)."""
        output = runner.run.graph.output

        def asked_for(per_probe: float | None) -> tuple[int, int]:
            return (_probes_needed(per_probe, PROBE_SE),
                    min(self.max_probes, _probes_needed(per_probe, POPULATION_PROBE_SE)) if fused else 0)

        def needed(a: torch.Tensor) -> tuple[int, int]:
            # The first batch's rows (a: probes x rows) as if they were the whole sample's.
            per_probe = _spread_noise(a)
            probes, pop_probes = asked_for(per_probe * a.shape[1] / runner.n if per_probe is not None else None)
            return min(self.max_probes, probes), pop_probes

        try:
            main, pop = cotangents.measure_output(runner, self.asked_probes or 1, self.population_probes if fused else 0,
                                                  self.seed, needed, frozenset(self.wanted) - {output})
            have, have_pop = (len(p.accs[output].a[0]) if p is not None else 0 for p in (main, pop))
            probes, pop_probes = asked_for(_probe_noise(main.accs[output]))
            if probes > self.max_probes:
                notes.append(_capped(self.max_probes, probes))
            probes, pop_probes = max(have, min(probes, self.max_probes)), max(have_pop, pop_probes)
            if probes > have or pop_probes > have_pop:
                extra_main, extra_pop = cotangents.measure_output(runner, probes - have, pop_probes - have_pop, self.seed + 500)
                _add_probes(main, extra_main)
                if extra_pop is not None:
                    _add_probes(pop, extra_pop)
        except Exception as exc:  # an optimisation: forward-mode probes measure without it
            notes.append(f"forward-mode probes measured the output (its reverse-mode pass failed: {failure(exc)})")
            return None
        notes.append("the output's numerator by reverse-mode probes, one backward pass per probe (measure.cotangents)")
        return main, pop, probes, pop_probes


def by_cotangents(graph: ArchGraph, traced_batch: int | None, rows: int, dtype: torch.dtype, device: torch.device,
                  wanted: set[str] | None, nlc_wanted: set[str] | None, segments: bool) -> bool:
    """Whether the output's NLC is measured by reverse-mode probes (measure.cotangents): it is
    the only NLC wanted (of the ``wanted`` nodes, those in ``nlc_wanted``; None: all), there
    are no segments, and the output suits a reverse pass (deflate.wanted). The plan also needs
    the population value, if one is asked for, to ride along in the main pass (_fusable); the
    time budget estimates this route's cost by it."""
    nlc_at = {node.name for node in graph
              if (wanted is None or node.name in wanted) and (nlc_wanted is None or node.name in nlc_wanted)}
    return (cotangents.ENABLED and nlc_at <= {graph.output} and not segments
            and deflate.wanted(graph, traced_batch, rows, dtype, device))


def first_probes(graph: ArchGraph, batch_dims: list[int]) -> int:
    """Probes per row of the main pass when none are asked for: PROBES, or one for an output
    of more than WIDE_OUTPUT_UNITS units per row (by the shapes the graph was traced with)."""
    return 1 if deflate.wide(graph, _trace_batch(graph, batch_dims)) else PROBES


def _capped(max_probes: int, asked: int) -> str:
    """The note of a measurement whose probe noise asked for more probes than the budget allows."""
    return (f"{max_probes} probe{'s' if max_probes > 1 else ''} per sample where the probe noise asked for {asked}: "
            "the time budget allows no more")


def _probe_noise(acc: "_NodeAcc | None") -> float | None:
    """The relative variance that ONE probe per row contributes to the NLC estimate, from
    the spread between the probes of each row; with one probe per row, an upper bound: the
    spread between the rows, which adds their own differences to the probes' noise."""
    if acc is None or not acc.has_tangent or not acc.a:
        return None
    return _spread_noise(torch.cat(acc.a, dim=1))


def _spread_noise(a: torch.Tensor) -> float | None:
    """_probe_noise of the tangent terms ``a`` (probes x rows)."""
    mean = a.mean()
    if a.shape[1] < 2 or not bool(torch.isfinite(mean)) or float(mean) <= 0:
        return None
    # Var of the numerator with one probe per row is mean_row Var_probe(a) / rows; the NLC
    # is its square root, which halves the relative error. (Relative first: the squared
    # tangents of a tiny signal underflow when squared again.)
    spread = (a / mean).var(0).mean() if a.shape[0] > 1 else (a[0] / mean).var()
    return float(spread) / a.shape[1] / 4


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
            acc.t = [torch.cat([a, b]) for a, b in zip(acc.t, more.t)]


def _split_probes(result: "_PassResult", k: int) -> tuple["_PassResult", "_PassResult"]:
    """A pass whose first k probes carried the batch tangent rule and the rest the
    population one, as two passes: the values (and their statistics) are shared."""
    first, rest = {}, {}
    for name, acc in result.accs.items():
        first[name], rest[name] = copy.copy(acc), copy.copy(acc)
        if acc.has_tangent:
            first[name].a, rest[name].a = [a[:k] for a in acc.a], [a[k:] for a in acc.a]
            first[name].t, rest[name].t = [t[:k] for t in acc.t], [t[k:] for t in acc.t]
    return _PassResult(first, result.pools, result.info), _PassResult(rest, result.pools, result.info)


# With this many values per channel or more, normalising by the biased batch variance (the
# trained function) instead of the unbiased one that PyTorch keeps as running_var changes a
# layer's scale by under 0.05%. A CIFAR ResNet at batch 128 has 2048 and more; a BatchNorm1d
# MLP has the batch size (128), where deep chaotic stacks amplify the difference (a depth-20
# BN-ReLU MLP at batch 32: 24%), so such models keep their own population pass.
FUSED_MIN_COUNT = 1024


def _replayable(graph: ArchGraph, traced_batch: int | None, rows: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the values of a batch's convolutions, linear layers and batch norms (by the
    shapes the graph was traced with, ``traced_batch`` rows; every norm layer counted) may be
    kept for the passes that follow (measure.replay): within half of what a measurement may
    hold (memory.measurement_room)."""
    if not traced_batch:
        return False
    kinds = (OpKind.CONV, OpKind.LINEAR, OpKind.NORM)
    kept = memory.values_size((node.shape for node in graph if node.kind in kinds and node.shape), traced_batch, rows,
                              dtype.itemsize)
    return kept <= memory.measurement_room(device) / 2


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


def _sources(graph: ArchGraph) -> list[str]:
    """Where the tangent enters: where the signal enters for the rules too (``patterns.sources``)."""
    sources = patterns.sources(graph)
    if not sources:
        raise MeasureError("no floating-point node depends on the inputs: nothing to measure")
    return sources


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
