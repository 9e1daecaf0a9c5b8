"""One file end to end: load, discover, build, trace, check, verify.

``check_file`` never raises for problems in the user's code: those become ARC9xx
diagnostics at the line that caused them. Only bugs in archlint itself escape (the CLI turns
them into exit code 2).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from archlint import device, memory, patterns
from archlint import rule as rules_api
from archlint.config import Settings
from archlint.files import mentions_torch
from archlint.graph import ArchGraph, Span
from archlint.results import FileResult
from archlint.rule import Finding

log = logging.getLogger("archlint")

# Example inputs for tracing: small, since only shapes matter there.
TRACE_BATCH = 2


@dataclass
class ModelResult:
    name: str
    graph: ArchGraph | None
    measured: Any = None
    # The measurement was the screening one (one batch, no population pass, some nodes).
    screened: bool = False
    # The discovered or configured entry the model was built from (its explicit inputs).
    entry: Any = None
    # Its measurement was cut to fit the time budget, or did not fit at all.
    over_budget: bool = False


def _no_progress(stage: str, model: str | None = None, span: Span | None = None, findings: list[Finding] = (), pending: list[Finding] = ()) -> None:
    pass


def check_file(path: str | Path, settings: Settings, progress: Callable[..., None] = _no_progress) -> FileResult:
    """Analyse one model file. Findings are sorted and filtered by the settings.

    ``progress(stage, model, span, findings, pending)`` is called as the user's code is about
    to run: stage "import", "build", "forward" (per model) and "measure" (with the model's
    findings pending verification). ``archlint.worker`` uses it to report a process that
    dies or hangs at the right stage, model and line, keeping the findings made so far.
    """
    from archlint import load, sourcemap

    path = str(Path(path).resolve())
    result = FileResult(path=path)
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.findings.append(rules_api.meta("ARC900", f"cannot read the file: {exc}", Span(path, 1)))
        return _finish(result, settings, None)
    if settings.model is None and not mentions_torch(source):
        result.skipped = True
        return result

    progress("import")
    with sourcemap.record_constructions() as sites:
        try:
            with load.preserved_torch_globals(), load.isolated_import(path, imported=result.local_modules) as module:
                _check_module(module, path, settings, sites, result, progress)
        except load.LoadError as exc:
            result.findings.append(rules_api.meta("ARC900", exc.message, exc.span))
    result = _finish(result, settings, source)
    if settings.fixes:
        # Fixes are proposed for the findings as the user sees them (suppressed ones are
        # gone); each is verified by checking an edited copy of the file.
        from archlint.fix import verify

        # A worker that dies now (a timeout) keeps the findings, without fixes.
        progress("fix", findings=result.findings)
        verify.attach_fixes(result, settings, source)
    return result


def _check_module(module: Any, path: str, settings: Settings, sites: Any, result: FileResult, progress: Callable[..., None]) -> None:
    from archlint import load

    configured = [(settings.model, settings.inputs)] if settings.model is not None else [
        (m.build, m.inputs) for m in settings.models if m.path == path
    ]
    if configured:
        # Explicit entries replace discovery for this file.
        entries = []
        for build, inputs in configured:
            try:
                entries.append(load.explicit_entry(module, path, build, inputs))
            except load.BuildError as exc:
                result.findings.append(rules_api.meta("ARC903", str(exc), Span(path, 1)))
        discovery = load.Discovery(entries=entries)
    else:
        discovery = load.discover(module, path)
    # The device is resolved once: the budget and the verification pass use the same one.
    target = device.resolve(settings.device) if settings.verify else torch.device("cpu")
    budget = settings.memory_budget
    if budget is None:
        budget = memory.default_memory_budget(target)
    # The files analysed at once (--jobs) share the budget.
    budget = memory.share(budget, settings.workers)
    progress("build", findings=result.findings)
    # Each entry is progress: many models that are slow to build are not a hang.
    built, not_built = load.build_all(discovery, seed=settings.seed, memory_budget=budget,
                                      on_entry=lambda entry: progress("build", span=entry.span, findings=result.findings))
    for nb in not_built:
        result.findings.append(rules_api.meta("ARC903", nb.message, nb.span, model=nb.name))
    for bm in built:
        if bm.entry.built_as:
            log.info("%s: built as %s", bm.entry.name, bm.entry.built_as)
        progress("forward", bm.entry.name, bm.entry.span, result.findings)
        graph = _trace_model(bm, module, path, settings, sites, result)
        model_result = ModelResult(bm.entry.name, graph, entry=bm.entry)
        result.models.append(model_result)
        if graph is None:
            continue
        if bm.meta_reason:
            log.warning("%s: %s", graph.name, bm.meta_reason)
        if graph.traced_with == "eager":
            result.findings.append(rules_api.meta(
                "ARC901",
                f"torch.fx could not trace {graph.name} ({graph.fallback_reason}); "
                f"captured the graph eagerly on the example inputs instead",
                graph.span or Span(path, 1),
                model=graph.name,
            ))
        _predict(graph)
        findings = _run_rules(graph, settings)
        # Every model is measured when verification is on, not only those with findings:
        # what the predictor misses or cannot model (a NaN, a collapse after pooling) is
        # only seen there.
        if settings.verify:
            if bm.meta_reason:
                findings = rules_api.not_verified(graph.name, findings, bm.meta_reason, graph.span)
            else:
                progress("measure", graph.name, graph.span, result.findings, findings)
                findings = _verify(graph, bm.entry, findings, settings, target, model_result)
        result.findings.extend(rules_api.settle(findings))
    # Each finding of a model built from a call in the file says which call (full, JSON and
    # SARIF output show it).
    built_as = {bm.entry.name: bm.entry.built_as for bm in built if bm.entry.built_as}
    result.findings = [replace(f, built_as=built_as[f.model]) if f.model in built_as else f for f in result.findings]


def _trace_model(bm: Any, module: Any, path: str, settings: Settings, sites: Any, result: FileResult) -> ArchGraph | None:
    from archlint import inputs as inputs_mod
    from archlint import trace as trace_mod

    entry = bm.entry
    span = entry.span or Span(path, 1)
    try:
        example = _example_inputs(bm.model, entry, module, settings)
    except (inputs_mod.InputInferenceError, inputs_mod.InputsError) as exc:
        result.findings.append(rules_api.meta("ARC904", f"{entry.name}: {exc}", span, model=entry.name))
        return None
    if bm.meta_reason:
        # A model on the meta device runs on meta inputs: shapes only, no values.
        example = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in example)
    try:
        return trace_mod.trace(bm.model, example, name=entry.name, span=span, sites=sites)
    except trace_mod.ForwardError as exc:
        where = _user_frame_span(exc.exc, path) or span
        on_meta = f" on the meta device ({bm.meta_reason})" if bm.meta_reason else ""
        advice = memory.EXHAUSTED_HINT if memory.exhausted(exc.exc) else "give them with --inputs or --input-shape"
        result.findings.append(rules_api.meta(
            "ARC904",
            f"{entry.name} raised {exc} on the example inputs {_describe_inputs(example)}{on_meta}; {advice}",
            where,
            model=entry.name,
        ))
        return None


def _example_inputs(model: torch.nn.Module, entry: Any, module: Any, settings: Settings) -> tuple:
    from archlint import inputs as inputs_mod

    expr = entry.inputs or settings.inputs
    if expr:
        return inputs_mod.eval_inputs(expr, module, model, settings.seed)
    shape = settings.input_shape or entry.input_shape
    spec = inputs_mod.parse_input_shape(shape) if shape else inputs_mod.infer_inputs(model)
    gen = torch.Generator().manual_seed(settings.seed)
    return inputs_mod.make_batch(spec, TRACE_BATCH, gen)


def _predict(graph: ArchGraph) -> None:
    """The static mean-field prediction every rule reads (graph.prediction)."""
    from archlint.predict import predict

    try:
        predict(graph)
    except Exception as exc:  # a bug or an op the predictor chokes on: rules fall back to measuring
        log.warning("%s: mean-field prediction failed (%s: %s); rules rely on measurement", graph.name, type(exc).__name__, exc)
        graph.prediction = None


def _run_rules(graph: ArchGraph, settings: Settings) -> list[Finding]:
    context = _run_context(settings)
    findings: list[Finding] = []
    for code, rule in rules_api.registry().items():
        if rule.is_meta or not settings.is_selected(code):
            continue
        findings.extend(rule.check(graph, settings.rule_options.get(rule.name), context))
    return findings


def _run_context(settings: Settings) -> rules_api.RunContext:
    return rules_api.RunContext(batch_size=settings.batch_size)


def _verify(graph: ArchGraph, entry: Any, findings: list[Finding], settings: Settings, target: torch.device, model_result: ModelResult) -> list[Finding]:
    """Measure the model; let each rule confirm or dismiss its own findings, and find what
    the static pass missed.

    A model without static findings gets a screening measurement first (one batch, no
    population pass, only the nodes the rules' ``find`` reads, only the output's NLC): a clean model costs that
    much. Where a static finding stands or the screening finds something, the full
    measurement decides, and its numbers are the ones reported.
    """
    from archlint.measure.budget import OverBudget

    static = [f for f in findings if not f.is_meta]
    # One budget for the model: a full measurement after the screening one gets what is left.
    budget = measure_budget(settings, target)
    try:
        report = screened = None
        if not static:
            report = screened = measure_graph(graph, entry, settings, target, [], screening=True, budget=budget)
            if not _found_by_measurement(graph, report, settings, static):
                graph.measured = model_result.measured = report
                model_result.screened = True
                model_result.over_budget = report.budget_note is not None
                return findings
        # A segment that starts where the signal enters is the end node's own NLC, which every
        # measurement has: only the others need their own probes.
        sources = set(patterns.sources(graph))
        segments = sorted({f.segment for f in static if f.segment is not None and f.segment[0] not in sources})
        try:
            report = measure_graph(graph, entry, settings, target, segments,
                                   budget=max(0.0, budget - (screened.seconds if screened else 0.0)))
        except OverBudget as exc:
            if screened is None:
                raise
            # What the screening found stands on its one batch.
            model_result.screened = model_result.over_budget = True
            screened.notes.insert(0, f"screening measurement only: the full one does not fit ({exc})")
            screened.budget_note = "the screening measurement only (one batch): the full one does not fit the measurement budget"
    except OverBudget as exc:  # a slow model, not a failure: its findings stay predictions
        model_result.over_budget = True
        return rules_api.not_verified(graph.name, findings, str(exc), graph.span)
    except Exception as exc:  # the model's code may fail on the measurement batch
        where = _user_frame_span(exc, graph.span.path) if graph.span is not None else None
        hint = f"; {memory.EXHAUSTED_HINT}" if memory.exhausted(exc) else ""
        return rules_api.not_verified(graph.name, findings, f"the measurement failed ({type(exc).__name__}: {exc}){hint}",
                                      where or graph.span)
    graph.measured = model_result.measured = report
    model_result.over_budget = model_result.over_budget or report.budget_note is not None
    out = []
    for f in findings:
        if f.is_meta:
            out.append(f)
            continue
        rule = rules_api.get(f.code)
        verdict = rule.confirm(f, report, settings.rule_options.get(rule.name))
        status = {True: "confirmed", False: "dismissed", None: "predicted"}[verdict.confirmed]
        out.append(f.with_status(status, measured=verdict.measured, reason=verdict.note))
    return _with_budget_note(out + _found_by_measurement(graph, report, settings, static), report)


def measure_budget(settings: Settings, target: torch.device) -> float:
    """Seconds one model's measurement may take (--measure-budget, else the device's default)."""
    from archlint.measure import budget

    return settings.measure_budget if settings.measure_budget is not None else budget.default_budget(target.type)


def _with_budget_note(findings: list[Finding], report: Any) -> list[Finding]:
    """Findings judged by a measurement that gave up samples or probes to fit its time
    budget say so, with the standard error it reached."""
    if not report.budget_note:
        return findings
    se = report.output_nlc_se
    precision = f"; the output NLC is {report.output_nlc:.3g} ± {se:.2g}" if se is not None and report.output_nlc else ""
    note = f"measured with {report.budget_note}{precision}"
    return [f if f.is_meta else replace(f, reason=f"{f.reason}; {note}" if f.reason else note) for f in findings]


def _found_by_measurement(graph: ArchGraph, report: Any, settings: Settings, static: list[Finding]) -> list[Finding]:
    """The rules' findings from the measurement alone, for rules whose static check found
    nothing in this model (where it did, that finding was judged by the same measurement)."""
    context = _run_context(settings)
    judged = {f.code for f in static}
    found: list[Finding] = []
    for code, rule in rules_api.registry().items():
        if rule.is_meta or code in judged or not settings.is_selected(code):
            continue
        found.extend(rule.find(graph, report, settings.rule_options.get(rule.name), context))
    return found


def measure_graph(graph: ArchGraph, entry: Any, settings: Settings, target: torch.device,
                  segments: list[tuple[str, str]], *, screening: bool = False, budget: float | None = None) -> Any:
    """Measure a traced model on the batch the settings ask for (the verification pass, and
    a fixed model's verification in archlint.fix), seeded like the build: ``--data``'s
    function may draw random numbers too. ``screening``: one batch, no population pass,
    only the nodes the rules' ``find`` reads, and of them only the output's NLC (reverse-mode
    probes, measure.cotangents; the others' signal statistics). ``budget``: seconds (default: the settings'
    measurement budget); raises ``archlint.measure.budget.OverBudget`` where even one batch
    does not fit."""
    from archlint import inputs as inputs_mod
    from archlint import measure as measure_mod

    if entry.inputs or settings.inputs:
        # Explicit inputs are the batch the user wants measured.
        batch: Any = graph.example_inputs
    elif settings.data:
        batch = settings.data
    elif settings.input_shape or entry.input_shape:
        spec = inputs_mod.parse_input_shape(settings.input_shape or entry.input_shape)
        batch = inputs_mod.make_batch(spec, max(settings.batch_size, measure_mod.MIN_SAMPLES), torch.Generator().manual_seed(settings.seed))
    else:
        batch = None
    screen = {"samples": settings.batch_size, "population": False, "nodes": patterns.screened_nodes(graph),
              "nlc_nodes": [graph.output]} if screening else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return measure_mod.measure(
            graph.model, batch, graph=graph, device=target,
            batch_size=settings.batch_size, seed=settings.seed, segments=segments, **screen,
            budget=measure_budget(settings, target) if budget is None else budget,
        )


def _finish(result: FileResult, settings: Settings, source: str | None) -> FileResult:
    from archlint import suppress

    result.findings = suppress.finalise(result.findings, result.path, settings, source)
    result.n_models = sum(1 for m in result.models if m.graph is not None)
    result.over_budget = any(m.over_budget for m in result.models)
    return result


def _user_frame_span(exc: BaseException, path: str) -> Span | None:
    """The deepest frame of ``exc``'s traceback in a user file, preferring ``path``; an
    exception that wraps the user's (``raise ... from exc``) is followed to its cause."""
    while exc.__traceback__ is not None and (exc.__cause__ or exc.__context__) is not None and not any(
            f.filename == path for f in traceback.extract_tb(exc.__traceback__)):
        exc = exc.__cause__ or exc.__context__
    frames = traceback.extract_tb(exc.__traceback__)
    in_file = [f for f in frames if f.filename == path]
    frame = in_file[-1] if in_file else None
    if frame is None or frame.lineno is None:
        return None
    col = getattr(frame, "colno", None) or 0
    end_col = getattr(frame, "end_colno", None)
    end_line = getattr(frame, "end_lineno", None) or frame.lineno
    return Span(path, frame.lineno, col, end_line, end_col)


def _describe_inputs(example: tuple) -> str:
    parts = []
    for t in example:
        if isinstance(t, torch.Tensor):
            parts.append(f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}")
        else:
            parts.append(type(t).__name__)
    return "(" + ", ".join(parts) + ")"
