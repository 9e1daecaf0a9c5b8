"""Output formats: one module per format, each with ``render(findings, ctx) -> str``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from archlint.rule import Finding

FORMATS = ("full", "concise", "json", "sarif", "github", "junit")
HOMEPAGE = "https://archlint.dev"


@dataclass
class Context:
    """What a renderer may need besides the findings."""

    # Root that paths are shown relative to (the working directory).
    root: str
    # Source text by absolute path, for formats that show the offending line.
    sources: dict[str, str]


def display_path(path: str, root: str) -> str:
    """A path relative to ``root`` when it lies under it (as ruff shows paths)."""
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return path
    return rel.as_posix() if os.sep == "/" else str(rel)


def render(fmt: str, findings: list[Finding], ctx: Context) -> str:
    from archlint.output import concise, full, github, json_format, junit, sarif

    renderers = {
        "full": full.render,
        "concise": concise.render,
        "json": json_format.render,
        "sarif": sarif.render,
        "github": github.render,
        "junit": junit.render,
    }
    return renderers[fmt](findings, ctx)


def fix_mark(f: Finding) -> str:
    """ruff's `` [*]``: a verified fix is available (``--fix`` applies it)."""
    return " [*]" if f.autofix is not None and f.autofix.verified else ""


def status_tag(f: Finding) -> str:
    """`` [confirmed]`` after a rule's finding; nothing after a meta diagnostic (ARC9xx),
    which has no measurement status."""
    return f" [{f.status}]" if f.status else ""


def rule_url(name: str) -> str:
    return f"{HOMEPAGE}/rules/{name}"


def finite(value: float | None) -> float | None:
    """JSON has no inf/nan: a vanished or exploded value is explained in ``reason`` instead."""
    return value if value is not None and math.isfinite(value) else None


def evidence(f: Finding) -> dict:
    """archlint's own fields of a finding, as the machine-readable formats give them (JSON
    beside ruff's fields, SARIF as result properties): one list for both."""
    return {
        "status": f.status,
        "predicted": finite(f.predicted),
        "measured": finite(f.measured),
        "threshold": finite(f.threshold),
        "model": f.model,
        "node": f.node,
        "explanation": f.explanation or None,
        "help": f.fix or None,
        "reason": f.reason,
        "built_as": f.built_as,
    }


def fails(f: Finding) -> bool:
    """Whether a finding makes the run fail (exit 1): not dismissed, and its rule counts.

    Informational meta diagnostics such as ARC901 set ``AFFECTS_EXIT = False``. A question
    only the measurement could answer (``needs_measurement``: nothing was predicted) that
    stayed unanswered because the model was not measured is reported, never dropped, but has
    no value on either side of its threshold: it does not fail the run (ARC905 says why it
    was not measured).
    """
    from archlint import rule as rules_api

    if f.needs_measurement and f.status == "predicted":
        return False
    rule = rules_api.registry().get(f.code)
    return f.status != "dismissed" and (rule is None or rule.affects_exit)
