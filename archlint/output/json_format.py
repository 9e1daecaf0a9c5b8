"""A JSON array with ruff's field names plus archlint's ``status``, ``severity`` and values.

ruff's fields: ``code``, ``message``, ``filename`` (absolute), ``location`` and
``end_location`` (``row``/``column``, 1-based; the end column exclusive), ``fix``,
``noqa_row``, ``url``, ``cell``. ``fix`` is ruff's object (``applicability``, ``message``,
``edits`` with ``content``, ``location``, ``end_location``) when fixes were asked for
(``--show-fixes``, ``--fix``, ``--diff``) and the rule has one: ``safe`` when the fix was
verified (``--fix`` applies it), ``display-only`` when it is a suggestion.
"""

from __future__ import annotations

import json

from archlint.output import Context, evidence, rule_url
from archlint.rule import Finding


def finding_dict(f: Finding) -> dict:
    end_line = f.span.end_line if f.span.end_line is not None else f.span.line
    end_col = f.span.end_col if f.span.end_col is not None else f.span.col
    return {
        "cell": None,
        "code": f.code,
        "name": f.name,
        "message": f.message,
        "filename": f.span.path,
        "location": {"row": f.span.line, "column": f.span.col + 1},
        "end_location": {"row": end_line, "column": end_col + 1},
        "fix": fix_dict(f),
        "noqa_row": f.span.line,
        "url": rule_url(f.name),
        "severity": f.severity,
        **evidence(f),
    }


def fix_dict(f: Finding) -> dict | None:
    if f.autofix is None:
        return None
    return {
        "applicability": f.autofix.applicability,
        "message": f.autofix.summary,
        "edits": [
            {
                "content": e.content,
                "location": {"row": e.line, "column": e.col + 1},
                "end_location": {"row": e.end_line, "column": e.end_col + 1},
            }
            for e in f.autofix.edits
        ],
    }


def render(findings: list[Finding], ctx: Context) -> str:
    return json.dumps([finding_dict(f) for f in findings], indent=2, allow_nan=False) + "\n"
