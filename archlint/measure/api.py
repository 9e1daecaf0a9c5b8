"""The entry point, ``measure()``: resolve the inputs and the graph, run the plan, and run it
again in float64 where float32 cannot resolve the numbers."""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from archlint.graph import ArchGraph
from archlint.measure.data import _resolve_inputs
from archlint import device as device_setting
from archlint import dtypes
from archlint.measure.model import _model_device, _Runnable
from archlint.measure import budget as time_budget
from archlint.measure.plan import MAX_PROBES, POPULATION_PROBES, _Plan, _trace_batch, by_cotangents, first_probes
from archlint.measure.report import MeasureError, Report
from archlint.trace import trace


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
    probes: int | None = None,
    population_probes: int = POPULATION_PROBES,
    nodes: Iterable[str] | None = None,
    budget: float | None = None,
    nlc_nodes: Iterable[str] | None = None,
) -> Report:
    """Measure every node of ``model`` (see the docstring of the package, archlint.measure).

    ``inputs``: None (synthetic inputs of the family ``archlint.inputs`` infers), a tensor or
    tuple of tensors (the forward's positional arguments, batch first), or "module:func"
    (``func()`` returns them). ``samples`` rows are measured (default: all given rows, or at
    least 128 synthetic ones) in batches of ``batch_size``; with train-mode BatchNorm every
    batch is one input of the trained function, so ``batch_size`` is part of what is measured.
    ``segments``: (start node, end node) pairs whose own NLC is measured, the tangent entering
    at the start node with directions drawn from that node's batch distribution.
    ``population``: for train-mode BatchNorm models, also measure the eval-mode model with
    populated running statistics.
    ``probes``: tangent directions per row, at least (default: two, one for an output of
    more than ``plan.WIDE_OUTPUT_UNITS`` units per row); a noisy output gets more.
    ``nodes``: the nodes whose statistics are wanted (default: every node); the output is
    always measured. Fewer nodes cost less: each one's statistics read its values and tangents.
    ``nlc_nodes``: of those, the nodes whose NLC is wanted (default: all); the others get their
    signal statistics only (mean, spread, neuron bias, sign counts; ``nlc`` None). With the
    output's NLC alone, reverse-mode probes measure it (``cotangents``) and no forward-mode
    probe runs.
    ``budget``: seconds the measurement may take (None: no limit). One plain forward pass is
    timed first; fewer samples (whole batches), probes or no population value are used where
    the estimate says so (``archlint.measure.budget``; the report's first note says what was
    given up), and ``budget.OverBudget`` (a MeasureError) is raised where even one batch with
    one probe would not fit.
    """
    started = time.perf_counter()
    if probes is not None and probes < 1:
        raise ValueError("probes must be at least 1")
    target = device_setting.resolve(device)
    # Tracing runs the model as it is (dropout included): the global RNG is put back after.
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        report = _measure(model, inputs, graph, target, batch_size, seed, segments, population, samples, probes,
                          population_probes, nodes, budget, started, nlc_nodes)
    report.seconds = time.perf_counter() - started
    return report


def _measure(model, inputs, graph, target, batch_size, seed, segments, population, samples, probes, population_probes,
             nodes, budget, started, nlc_nodes=None) -> Report:
    home = _model_device(model)
    args, batch_dims = _resolve_inputs(model, inputs, batch_size, samples, seed, graph)
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

    asked_probes = probes
    if probes is None:
        probes = first_probes(graph, batch_dims)
    wanted = None
    if nodes is not None:
        wanted = set(nodes) | {graph.output}
        unknown = sorted(wanted - {node.name for node in graph})
        if unknown:
            raise ValueError(f"not nodes of the graph: {', '.join(unknown)}")
    nlc_wanted = set(nlc_nodes) | {graph.output} if nlc_nodes is not None else None
    run = _Runnable(graph, model, target)
    fitted = None
    if budget is not None:
        batch = min(batch_size, n_rows)
        populatable, fused, fresh = time_budget.passes(run, batch, population)
        trace_batch = _trace_batch(graph, batch_dims)

        def reverse(rows: int) -> bool:
            # The plan's own test for reverse-mode probes at a batch of that many rows.
            return by_cotangents(graph, trace_batch, rows, run.dtype, run.device, wanted, nlc_wanted, bool(segments))

        # Reverse-mode probes start with one (plan._by_cotangents); with a population value
        # the plan takes them only where it rides along in the main pass (one batch).
        one = reverse(batch) and (not populatable or (fused and n_rows <= batch))
        fitted = time_budget.fit(
            run, args, batch_dims, batch_size=batch_size, probes=(asked_probes or 1) if one else probes,
            max_probes=MAX_PROBES, population=population_probes if populatable else 0, fused=fused, fresh=fresh,
            segments=len(segments), budget=budget, spent=time.perf_counter() - started, reverse=reverse)
        args = tuple(a.narrow(d, 0, fitted.rows) for a, d in zip(args, batch_dims))
        probes, population = fitted.probes, population and (fitted.population or not populatable)
        batch_size = fitted.batch_size
    plan = _Plan(graph, args, batch_dims, batch_size, seed, list(segments), probes, population_probes, population, wanted)
    # Asked for: at least that many (fewer where the budget gave some up), on either kind of probe.
    plan.asked_probes = probes if asked_probes is not None else None
    plan.nlc_wanted = nlc_wanted
    if fitted is not None:
        plan.max_probes = fitted.max_probes
    given_up = [fitted.note] if fitted is not None and fitted.note else []
    run_started = time.perf_counter()
    result = plan.run(run)
    run_seconds = time.perf_counter() - run_started
    # Only a float32 measurement's re-check may be left out for the budget: a low-precision
    # model's float64 pass is what its rounding error is measured against (ARC304), and its
    # cost is not a multiple of the low-precision pass's (emulated on many CPUs).
    if result.needs_float64 and result.dtype == torch.float32 and not time_budget.allows_float64(
            fitted, run_seconds, time.perf_counter() - started, target.type):
        given_up.append(f"no float64 re-check of {', '.join(result.reasons)}: it would not fit the measurement "
                        f"budget of {budget:g} s (numbers are {dtypes.name(result.dtype)})")
    elif result.needs_float64 and result.dtype != torch.float64:
        try:
            precise = plan.run(_Runnable(graph, model, target, dtype=torch.float64))
        except Exception as exc:  # a model that cannot run in float64 keeps its own numbers
            result.notes.append(f"float64 re-check failed ({type(exc).__name__}: {exc}); numbers are {dtypes.name(result.dtype)}")
        else:
            precise.notes.insert(0, "float64 re-check of: " + ", ".join(result.reasons))
            precise.output_nlc_float32 = result.report_nodes()[graph.output].nlc
            precise.output_by_dtype = {dtypes.name(result.dtype): result.report_nodes()[graph.output]}
            result = precise
    report = result.report(model_name=graph.name, device=str(target))
    if given_up:
        report.notes[:0] = given_up
        report.budget_note = "; ".join(given_up)
    report.output_by_dtype = {**result.output_by_dtype, report.dtype: report.output_stats}
    graph.measured = report
    return report
