"""The rule API and the registry.

A rule is one module in ``rules/`` (installed as ``archlint.rules``) with:

- metadata as module constants: ``CODE`` ("ARC103"), ``NAME`` (kebab-case, names the risk),
  ``SEVERITY`` ("error" | "warning" | "info"), ``SUMMARY`` (one line), and ``OPTIONS`` (a dict
  of option name to default value, e.g. ``{"threshold": 3.0}``);
- its documentation as the module docstring, with the sections What it does / Why is this
  bad? / Example / Use instead / Options / References;
- ``check(graph, options, context) -> list[Finding]``: a pure function over the ArchGraph
  that returns findings with a predicted value (status ``predicted``), built with
  ``at_node``/``at_model``; ``options`` are the rule's own (kebab-case names), ``context`` the
  run's settings a rule may read (``RunContext``);
- ``confirm(finding, measurements, options) -> Verdict``: decides ``confirmed`` or
  ``dismissed`` from the measured value against the rule's threshold;
- optionally ``find(graph, report, options, context) -> list[Finding]``: findings from the
  measurement alone, for what the static pass missed or could not predict (every model is
  measured when verification is on). They are reported ``confirmed``, with the measured
  value, and only where the rule's ``check`` found nothing for the model.

Meta rules (ARC9xx) are raised by the engine, not by ``check``: their modules carry the
metadata and documentation, and ``check`` returns nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
import re
from dataclasses import asdict, dataclass, field, fields, replace
from types import ModuleType
from typing import Any, Callable

from archlint.graph import ArchGraph, Node, Span

SEVERITIES = ("error", "warning", "info")
STATUSES = ("predicted", "confirmed", "dismissed")
DOC_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "Options", "References")
CODE_RE = re.compile(r"^ARC\d{3}$")


# Codes that moved, old to new, as ruff remaps renamed rules: a selector, an ignore or a
# suppression comment naming the old code means the new one. ARC105 became ARC403 and ARC102
# became ARC406 (off by default) when the validation study found no predictive power in them.
REDIRECTS = {"ARC105": "ARC403", "ARC102": "ARC406"}


def redirect(code: str) -> str:
    """The code ``code`` names today (itself, unless it moved). Case-sensitive, as codes are
    in suppression comments."""
    return REDIRECTS.get(code, code)


def is_meta_code(code: str) -> bool:
    """ARC9xx: a diagnostic about the analysis itself, raised by the engine, not a rule's finding."""
    return code.startswith("ARC9")
NAME_RE = re.compile(r"^[a-z]+(-[a-z0-9]+)*$")


@dataclass
class Finding:
    """One diagnostic: a rule's finding, or a meta diagnostic (ARC9xx)."""

    code: str
    message: str
    span: Span
    severity: str = "warning"
    # predicted | confirmed | dismissed; None for meta diagnostics, which nothing measures.
    status: str | None = "predicted"
    # The rule's kebab-case name, filled from the registry when empty.
    name: str = ""
    predicted: float | None = None
    measured: float | None = None
    threshold: float | None = None
    # Why it matters (one sentence of mechanism) and what to do (a concrete fix).
    explanation: str = ""
    fix: str = ""
    # The model it was found in, and the node it is about, if any.
    model: str | None = None
    node: str | None = None
    # Why the finding stayed ``predicted`` (no measurement possible) or was dismissed.
    reason: str | None = None
    # What the engine reads, set by the rule's check():
    # - the sub-network (start node, end node) whose NLC the finding is about: the
    #   verification pass measures it, and the rule's confirm() reads it;
    segment: tuple[str, str] | None = None
    # - raised because the prediction was unavailable: a question for the measurement, dropped
    #   when no measurement answers it (``settle``);
    needs_measurement: bool = False
    # - the value is a fraction, shown as a percentage;
    percent: bool = False
    # - raised by the rule's find() from the measurement, not by the static pass.
    found_by_measurement: bool = False
    # How the model was built when it was built from a call in the file ("VGG('VGG11') (from
    # test() at line 141)"); None otherwise.
    built_as: str | None = None
    # Free-form data a rule hands from its check() to its own confirm(); the engine never reads it.
    data: dict[str, Any] = field(default_factory=dict)
    # The machine-applicable fix (archlint.fix.edits.Fix), when fixes were asked for and the
    # rule has a fixer; ``fix`` above stays the human-readable help.
    autofix: Any = None

    @property
    def is_meta(self) -> bool:
        """A meta diagnostic (ARC9xx) about the analysis itself, not a rule's finding."""
        return is_meta_code(self.code)

    def with_status(self, status: str, measured: float | None = None, reason: str | None = None) -> "Finding":
        assert status in STATUSES, status
        return replace(self, status=status, measured=measured if measured is not None else self.measured, reason=reason or self.reason)

    def sort_key(self) -> tuple:
        return (self.span.path, self.span.line, self.span.col, self.code, self.message)

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain JSON values: how it crosses the worker's process boundary
        and how the cache stores it. Values a rule computed as tensors or numpy scalars
        become floats; rule data that JSON cannot hold is dropped (tuples become lists)."""
        out = {k.name: getattr(self, k.name) for k in fields(self)}
        out["span"] = asdict(self.span)
        for key in ("predicted", "measured", "threshold"):
            out[key] = _float(out[key])
        data = {}
        for key, value in self.data.items():
            with contextlib.suppress(TypeError, ValueError):
                data[str(key)] = json.loads(json.dumps(value))
        out["data"] = data
        out["autofix"] = self.autofix.to_dict() if self.autofix is not None else None
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        """A finding from its fields as JSON gave them back (a worker's report, a cache entry)."""
        from archlint.fix.edits import Fix

        segment = tuple(d["segment"]) if d.get("segment") is not None else None
        autofix = Fix.from_dict(d["autofix"]) if d.get("autofix") else None
        return cls(**{**d, "span": Span(**d["span"]), "segment": segment, "autofix": autofix})


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``confirm``: did the measurement cross the threshold? None when the
    quantity could not be measured (e.g. the signal vanished): the finding then stays
    ``predicted``, with ``note`` as the reason."""

    confirmed: bool | None
    measured: float | None
    note: str | None = None


@dataclass(frozen=True)
class RunContext:
    """The run's settings a rule may read; they are not the rule's options, which a user sets
    per rule. ``batch_size``: the batch the model is trained with, and measured with."""

    batch_size: int = 128


@dataclass(frozen=True)
class Rule:
    """A loaded rule module with its metadata."""

    code: str
    name: str
    severity: str
    summary: str
    doc: str
    options: dict[str, Any]
    module: ModuleType
    # False for informational diagnostics (ARC901) that must not fail a pre-commit hook.
    affects_exit: bool = True

    @property
    def is_meta(self) -> bool:
        return is_meta_code(self.code)

    def check(self, graph: ArchGraph, options: dict[str, Any] | None = None, context: RunContext | None = None) -> list[Finding]:
        findings = self.module.check(graph, {**self.options, **(options or {})}, context or RunContext())
        return [replace(f, name=f.name or self.name, model=f.model or graph.name) for f in findings]

    def find(self, graph: ArchGraph, report: Any, options: dict[str, Any] | None = None, context: RunContext | None = None) -> list[Finding]:
        find: Callable[..., list[Finding]] | None = getattr(self.module, "find", None)
        if find is None:
            return []
        findings = find(graph, report, {**self.options, **(options or {})}, context or RunContext())
        return [replace(f, name=f.name or self.name, model=f.model or graph.name, status="confirmed", found_by_measurement=True)
                for f in findings]

    def confirm(self, finding: Finding, measurements: Any, options: dict[str, Any] | None = None) -> Verdict:
        confirm: Callable[..., Verdict] | None = getattr(self.module, "confirm", None)
        if confirm is None:
            # Static-only rules (a pattern, not a number) are confirmed by construction.
            return Verdict(True, None)
        return confirm(finding, measurements, {**self.options, **(options or {})})


def _load(module: ModuleType) -> Rule:
    code = getattr(module, "CODE")
    name = getattr(module, "NAME")
    severity = getattr(module, "SEVERITY", "warning")
    if not CODE_RE.match(code):
        raise ValueError(f"{module.__name__}: bad rule code {code!r}")
    if not NAME_RE.match(name):
        raise ValueError(f"{module.__name__}: rule name {name!r} is not kebab-case")
    for option in getattr(module, "OPTIONS", {}):
        if not NAME_RE.match(option):
            raise ValueError(f"{module.__name__}: option {option!r} is not kebab-case")
    if severity not in SEVERITIES:
        raise ValueError(f"{module.__name__}: severity {severity!r} not in {SEVERITIES}")
    return Rule(
        code=code,
        name=name,
        severity=severity,
        summary=getattr(module, "SUMMARY"),
        doc=(module.__doc__ or "").strip(),
        options=dict(getattr(module, "OPTIONS", {})),
        module=module,
        affects_exit=bool(getattr(module, "AFFECTS_EXIT", True)),
    )


_REGISTRY: dict[str, Rule] | None = None


def registry() -> dict[str, Rule]:
    """All rules by code, loaded once from the ``archlint.rules`` package."""
    global _REGISTRY
    if _REGISTRY is None:
        import archlint.rules as pkg

        rules: dict[str, Rule] = {}
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            rule = _load(importlib.import_module(f"{pkg.__name__}.{info.name}"))
            if rule.code in rules:
                raise ValueError(f"duplicate rule code {rule.code} in {info.name} and {rules[rule.code].module.__name__}")
            rules[rule.code] = rule
        _REGISTRY = dict(sorted(rules.items()))
    return _REGISTRY


def get(code: str) -> Rule:
    return registry()[code]


def meta(code: str, message: str, span: Span, *, model: str | None = None, **extra: Any) -> Finding:
    """A meta diagnostic (ARC9xx) raised by the engine, with the rule's severity and name."""
    rule = get(code)
    return Finding(
        code=code,
        name=rule.name,
        message=message,
        span=span,
        severity=rule.severity,
        status=None,
        model=model,
        **extra,
    )


def at_node(graph: ArchGraph, where: Node | str | None, **fields: Any) -> Finding:
    """A rule's finding about node ``where``, located at its line (the layer's construction or
    the op in ``forward``; the model's line when the node has none). ``fields`` may name
    another ``node`` the finding reports on."""
    if isinstance(where, str):
        where = graph[where]
    located = {"span": node_span(graph, where), "node": where.name if where is not None else None, "model": graph.name}
    return Finding(**{**located, **fields})


def at_model(graph: ArchGraph, about: str | None = None, **fields: Any) -> Finding:
    """A rule's finding about the model as a whole, located at its class (or factory) line;
    ``about`` names the node whose value it reports (usually the output)."""
    assert graph.span is not None, f"model {graph.name} has no source span"
    return Finding(span=graph.span, node=about, model=graph.name, **fields)


def not_verified(model: str, findings: list[Finding], reason: str, where: Span) -> list[Finding]:
    """A model the verification pass could not measure (over the memory budget, the
    measurement raised, died or timed out): its findings stay ``predicted`` with the reason,
    none dropped, and the info diagnostic ARC905 says so, so that no output format reads as a
    measured "clean"."""
    kept = [f if f.is_meta else f.with_status("predicted", reason=f"not verified: {reason}") for f in findings]
    return kept + [meta("ARC905", f"{model} was not measured: {reason}; its verdicts are static predictions", where, model=model)]


def node_span(graph: ArchGraph, node: Node | str | None) -> Span:
    """Where a finding about ``node`` points: the node's own span, else the model's line."""
    if isinstance(node, str):
        node = graph[node]
    if node is not None and node.span is not None:
        return node.span
    assert graph.span is not None, f"model {graph.name} has no source span"
    return graph.span


def settle(findings: list[Finding]) -> list[Finding]:
    """Drop what the static pass could not decide and what a more specific finding explains.

    - A finding with ``needs_measurement`` was raised because the prediction was
      unavailable (an op the mean-field predictor does not model): it is a question for the
      measurement, not a finding, and is dropped when no measurement was asked (--no-verify).
      When the measurement was asked and could not answer, it stays ``predicted`` with the
      reason: a verdict that needed the measurement is never dropped silently.
    - A rule's ``SUBSUMED_BY`` codes name more specific rules: when one of them stands for the
      same model (not dismissed), the general finding is redundant (ARC101 "the NLC is too
      high" beside ARC103 "this plain stack makes it so").
    """
    kept = [f for f in findings if not (f.needs_measurement and f.status == "predicted" and not f.reason)]
    standing = {(f.model, f.code) for f in kept if f.status != "dismissed"}
    out = []
    for f in kept:
        subsumed_by = () if f.is_meta else getattr(get(f.code).module, "SUBSUMED_BY", ())
        if f.status != "dismissed" and any((f.model, code) in standing for code in subsumed_by):
            continue
        out.append(compose(f))
    return out


def compose(f: Finding) -> Finding:
    """Fill a rule's ``{value}`` with the measured value (else the predicted one) and append
    the predicted value and the threshold: "... compound to NLC 47.7 (predicted 46.1;
    threshold 3)". A dismissed finding keeps the predicted value and names the measured one
    beside it: "... NLC 3.5 (measured 2.4; threshold 3)"."""
    from archlint.evidence import fmt_beside

    if f.is_meta:
        return f
    # Fractions (dead units) read better as percentages.
    if f.percent:
        show = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    else:
        # A value on the other side of the threshold never reads as equal to it.
        show = lambda v: fmt_beside(v, f.threshold)  # noqa: E731
    # The sentence states the standing value: the measured one when it confirms, the
    # predicted one otherwise; a dismissing measurement is then named beside it. Where the
    # static pass could not predict (the rule asked the measurement), the value is the
    # measured one either way, and the parenthesis says so.
    unpredicted = f.predicted is None and f.measured is not None
    best = f.measured if f.measured is not None and (f.status != "dismissed" or unpredicted) else f.predicted
    message = f.message.replace("{value}", show(best) if best is not None else "(not predicted)")
    extras = []
    if f.found_by_measurement:
        extras.append("found by measurement" + (f"; predicted {show(f.predicted)}" if f.predicted is not None else ""))
    elif unpredicted:
        extras.append("measured; not predicted")
    elif f.status == "dismissed" and f.measured is not None:
        extras.append(f"measured {show(f.measured)}")
    elif f.measured is not None and f.predicted is not None:
        extras.append(f"predicted {show(f.predicted)}")
    if f.threshold is not None:
        extras.append(f"threshold {show(f.threshold)}")
    if extras:
        message += f" ({'; '.join(extras)})"
    return replace(f, message=message)
