"""SARIF 2.1.0, for GitHub code scanning (``upload-sarif``) and SARIF viewers.

Follows GitHub's list of supported properties: every registered rule in
``tool.driver.rules[]`` (id, name, short and full description, ``helpUri``, the rule doc as
``help``, the default level), and per result ``ruleId``/``ruleIndex``, ``level``,
``message.text`` and one physical location. URIs are relative to the working directory
(``uriBaseId`` ``%SRCROOT%``, resolved by ``originalUriBaseIds``) so that alert fingerprints
stay stable across machines; run archlint from the repository root. Regions are 1-based with
an exclusive ``endColumn`` ("the column number of the character following the end of the
region"), counted in characters (``columnKind: unicodeCodePoints``), as archlint's spans are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

from archlint import __version__
from archlint.graph import Span
from archlint.output import HOMEPAGE, Context, evidence, rule_url
from archlint.rule import Finding, Rule

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
# GitHub shows at most 1024 characters of a rule's short and full description.
MAX_DESCRIPTION = 1024


def _doc_section(doc: str, title: str) -> str:
    """The text of one ``## title`` section of a rule doc, joined into one paragraph."""
    match = re.search(rf"^## {re.escape(title)}\s*\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    return " ".join(match.group(1).split()) if match else ""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def rule_descriptor(rule: Rule) -> dict:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": _clip(rule.summary)},
        "fullDescription": {"text": _clip(_doc_section(rule.doc, "What it does") or rule.summary)},
        "help": {"text": rule.doc or rule.summary, "markdown": rule.doc or rule.summary},
        "helpUri": rule_url(rule.name),
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
    }


def artifact_location(path: str, root: str) -> dict:
    """A URI relative to ``root`` (with its base id), or an absolute file URI outside it."""
    absolute = Path(path).resolve()
    try:
        rel = absolute.relative_to(Path(root).resolve())
    except ValueError:
        return {"uri": absolute.as_uri()}
    return {"uri": quote(rel.as_posix()), "uriBaseId": SRCROOT}


def region(span: Span) -> dict:
    """Span (1-based line, 0-based columns, exclusive end) -> SARIF region (1-based columns)."""
    out = {"startLine": span.line, "startColumn": span.col + 1}
    if span.end_line is not None or span.end_col is not None:
        out["endLine"] = span.end_line if span.end_line is not None else span.line
    if span.end_col is not None:
        out["endColumn"] = span.end_col + 1
    # With no end column SARIF's default is the end of the line: the whole line is meant.
    return out


def result(f: Finding, ctx: Context, index: dict[str, int]) -> dict:
    out: dict = {"ruleId": f.code}
    if f.code in index:
        out["ruleIndex"] = index[f.code]
    if f.status == "dismissed":
        # The measurement says the rule holds here: SARIF's "pass", whose level must be none.
        out["kind"] = "pass"
        out["level"] = "none"
    else:
        out["level"] = LEVELS[f.severity]
    out["message"] = {"text": f.message}
    out["locations"] = [{"physicalLocation": {"artifactLocation": artifact_location(f.span.path, ctx.root), "region": region(f.span)}}]
    out["properties"] = {k: v for k, v in evidence(f).items() if v is not None}
    if f.autofix is not None and f.autofix.verified:
        # Only verified fixes: SARIF has no notion of a suggestion that must not be applied.
        out["fixes"] = [{
            "description": {"text": f.autofix.summary},
            "artifactChanges": [{
                "artifactLocation": artifact_location(f.span.path, ctx.root),
                "replacements": [
                    {
                        "deletedRegion": {"startLine": e.line, "startColumn": e.col + 1, "endLine": e.end_line, "endColumn": e.end_col + 1},
                        "insertedContent": {"text": e.content},
                    }
                    for e in f.autofix.edits
                ],
            }],
        }]
    return out


def render(findings: list[Finding], ctx: Context) -> str:
    from archlint.rule import registry

    rules = list(registry().values())
    index = {rule.code: i for i, rule in enumerate(rules)}
    run = {
        "tool": {
            "driver": {
                "name": "archlint",
                "version": __version__,
                "semanticVersion": __version__,
                "informationUri": HOMEPAGE,
                "rules": [rule_descriptor(rule) for rule in rules],
            }
        },
        "originalUriBaseIds": {SRCROOT: {"uri": Path(ctx.root).resolve().as_uri().rstrip("/") + "/"}},
        "columnKind": "unicodeCodePoints",
        "results": [result(f, ctx, index) for f in findings],
    }
    log = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
