"""Propose fixes for a checked file's findings and verify each by checking an edited copy.

The copy lives in a temporary folder under the file's own name (so it imports as the same
module name; the original's folder stays importable for its sibling modules) and is checked
with the same settings by ``engine.check_file``. A fix is offered (``Fix.verified``) only if

- its rule no longer reports on that model,
- no finding appears that was not there before, on any model of the file, and the file
  still imports and builds every model it built,
- every model's forward pass runs with the same input and output shapes,
- the fixed model could be measured: the message gives the measured values before and
  after (``fix verified: NLC 47.9 -> 2.6``).

Anything else leaves the fix a suggestion (``display-only``) with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from archlint import rule as rules_api
from archlint.evidence import fmt
from archlint.fix import registry
from archlint.fix.edits import Fix, apply_edits, line_edits, overlaps, source_hash

log = logging.getLogger("archlint")


def attach_fixes(result: Any, settings: Any, source: str | None) -> None:
    """Give each fixable finding of ``result`` (a FileResult fresh from the engine, with its
    models) its ``autofix``, verified or not; mark the verified ones that are applied
    together in this round (``apply_now``)."""
    from archlint.fix.base import FixContext
    from archlint.fix.cst import Source

    if source is None:
        return
    try:
        data = Path(result.path).read_bytes()
    except OSError:
        return
    # Fixes edit the text that was analysed: a file changed meanwhile gets none.
    if data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n") != source:
        return
    digest = source_hash(data)
    graphs = {m.name: m for m in result.models if m.graph is not None}
    todo = [i for i, f in enumerate(result.findings)
            if not f.is_meta and f.status != "dismissed" and registry.has_fixer(f.code)
            and settings.is_fixable(f.code) and f.model in graphs]
    if not todo:
        return
    try:
        parsed = Source(source)
    except Exception as exc:  # libcst cannot parse what Python imported: no fixes
        log.warning("%s: no fixes: libcst cannot parse the file (%s)", result.path, exc)
        return
    proposals: dict[int, Fix] = {}
    for i in todo:
        f = result.findings[i]
        try:
            proposal = registry.fixer(f.code)(FixContext(parsed, graphs[f.model].graph, f))
        except Exception as exc:  # a fixer's bug must not cost the user their findings
            log.warning("%s: the %s fixer failed (%s: %s)", result.path, f.code, type(exc).__name__, exc)
            proposal = None
        if proposal is not None and proposal.code != source:
            proposals[i] = Fix(proposal.message, line_edits(source, proposal.code), source_hash=digest)
    if not proposals:
        return
    if not settings.verify:
        for i, fix in proposals.items():
            _give(result, i, dataclasses.replace(fix, outcome="not verified: --no-verify measures nothing"))
        return
    # The fixes that can go together (no shared lines) are first checked together: one
    # check of the file instead of one per fix. If they pass, each is verified (and applied
    # in this round); otherwise, and for the rest, each fix is checked on its own, and one
    # is applied per round of --fix.
    together: list[int] = []
    for i, fix in proposals.items():
        if not any(overlaps(fix.edits, proposals[j].edits) for j in together):
            together.append(i)
    if len(together) > 1:
        code = apply_edits(source, [e for i in together for e in proposals[i].edits])
        ok, outcomes = check_copy(result, settings, code, [result.findings[i] for i in together])
        if ok:
            for i, outcome in zip(together, outcomes):
                note = f", together with {len(together) - 1} other fix{'es' if len(together) > 2 else ''} of this file"
                _give(result, i, dataclasses.replace(proposals[i], verified=True, outcome=outcome + note, apply_now=True))
            for i in proposals:
                if i not in together:
                    _give(result, i, _alone(result, settings, source, proposals[i], i, apply_now=False))
            return
    first = True
    for i, fix in proposals.items():
        checked = _alone(result, settings, source, fix, i, apply_now=first)
        first = first and not checked.verified
        _give(result, i, checked)


def _give(result: Any, i: int, fix: Fix) -> None:
    result.findings[i] = dataclasses.replace(result.findings[i], autofix=fix)


def _alone(result: Any, settings: Any, source: str, fix: Fix, i: int, apply_now: bool) -> Fix:
    """``fix`` checked on its own; ``apply_now`` if verified and asked for."""
    ok, outcomes = check_copy(result, settings, apply_edits(source, fix.edits), [result.findings[i]])
    return dataclasses.replace(fix, verified=ok, outcome=outcomes[0], apply_now=ok and apply_now)


def _standing(findings: list) -> dict[tuple[str | None, str], Any]:
    return {(f.model, f.code): f for f in findings if not f.is_meta and f.status != "dismissed"}


def check_copy(before: Any, settings: Any, code: str, fixed: list) -> tuple[bool, list[str]]:
    """Check ``code`` as the file of ``before`` (a FileResult with its models); ``fixed``
    are the findings the edit is meant to remove. Returns whether it is verified, and per
    fixed finding what was measured (or, for all, why it is not verified)."""
    from archlint import engine

    path = Path(before.path)
    with tempfile.TemporaryDirectory(prefix="archlint-fix-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(code, encoding="utf-8")
        copy_settings = dataclasses.replace(
            settings,
            fixes=False,
            models=tuple(dataclasses.replace(m, path=str(copy)) if m.path == str(path) else m for m in settings.models),
        )
        # The original's folder stays importable (after the copy's) for its sibling modules.
        sys.path.append(str(path.parent))
        try:
            after = engine.check_file(copy, copy_settings)
            models = {m.name: m for m in after.models if m.graph is not None}
            problem = _compare(before, after, models, fixed)
            if problem is not None:
                return False, [f"not verified: {problem}"] * len(fixed)
            return _measured(before, models, fixed, settings)
        finally:
            # The entry appended above: the last one equal to it.
            del sys.path[len(sys.path) - 1 - sys.path[::-1].index(str(path.parent))]


def _compare(before: Any, after: Any, models: dict, fixed: list) -> str | None:
    old_meta = {(f.model, f.code) for f in before.findings if f.is_meta}
    for f in after.findings:
        # ARC901 (traced eagerly) and ARC902 (unused suppression) say nothing about the fix.
        if f.is_meta and f.code not in ("ARC901", "ARC902") and (f.model, f.code) not in old_meta:
            return f"the fixed file reports {f.code}: {f.message}"
    for m in before.models:
        if m.graph is None:
            continue
        new = models.get(m.name)
        if new is None:
            return f"the fixed file no longer builds {m.name}"
        shapes = _shapes(m.graph), _shapes(new.graph)
        if shapes[0] != shapes[1]:
            return f"{m.name}'s input/output shapes change from {shapes[0]} to {shapes[1]}"
    old, now = _standing(before.findings), _standing(after.findings)
    for f in fixed:
        if (f.model, f.code) in now:
            return f"{f.code} still reports: {now[(f.model, f.code)].message}"
    for key, f in sorted(now.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if key not in old:
            return f"the fix raises {f.code}: {f.message}"
    return None


def _shapes(graph: Any) -> tuple:
    inputs = tuple(tuple(getattr(t, "shape", ())) for t in graph.example_inputs)
    out = graph[graph.output].shape if graph.output is not None else None
    return inputs, tuple(out) if out is not None else None


def _measured(before: Any, models: dict, fixed: list, settings: Any) -> tuple[bool, list[str]]:
    """Measure the fixed models of ``fixed``: the verified message, or why there is none."""
    from archlint import device, engine

    target = device.resolve(settings.device)
    parts = []
    for f in fixed:
        old = next(m for m in before.models if m.name == f.model)
        new = models[f.model]
        segment = f.segment if f.segment and all(n in new.graph for n in f.segment) else None
        try:
            report = engine.measure_graph(new.graph, new.entry, settings, target, [segment] if segment else [])
        except Exception as exc:  # the fixed model's code fails on the measurement batch
            return False, [f"not verified: the fixed model could not be measured ({type(exc).__name__}: {exc})"] * len(fixed)
        nlc_before = old.measured.output_nlc if old.measured is not None else None
        nlc_after = report.output_nlc
        if nlc_after is None:
            return False, [f"not verified: the fixed model's NLC could not be measured (signal {report.status})"] * len(fixed)
        text = f"NLC {fmt(nlc_before)} -> {fmt(nlc_after)}"
        rule = rules_api.get(f.code)
        try:
            value = rule.confirm(f, report, settings.rule_options.get(rule.name)).measured if segment or not f.segment else None
        except Exception:  # a rule's confirm that needs what the fixed model lacks
            value = None
        if value is not None and f.measured is not None:
            text += f", {rule.name} {fmt(f.measured)} -> {fmt(value)}"
        parts.append("fix verified: " + text)
    return True, parts
