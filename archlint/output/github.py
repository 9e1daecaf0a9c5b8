"""GitHub Actions workflow commands: one ``::error``/``::warning``/``::notice`` per finding.

``::warning file=models/net.py,line=12,col=9,endLine=12,endColumn=30,title=ARC103 name::message``

Escaping is the actions toolkit's (``packages/core/src/command.ts``): the message escapes
``%``, CR and LF; property values also escape ``:`` and ``,``, which would otherwise end the
value. Columns are 1-based with an exclusive end, and are only sent for one-line spans (the
toolkit: "cannot be sent when startLine and endLine are different values"). GitHub shows at
most 10 annotations of each kind per step: pair this with a SARIF upload for the rest.
"""

from __future__ import annotations

from archlint.output import Context, display_path, fails, status_tag
from archlint.rule import Finding

COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(f: Finding, ctx: Context) -> str:
    span = f.span
    end_line = span.end_line if span.end_line is not None else span.line
    props = {"file": display_path(span.path, ctx.root), "line": str(span.line)}
    if end_line == span.line:
        props["col"] = str(span.col + 1)
    props["endLine"] = str(end_line)
    if end_line == span.line and span.end_col is not None:
        props["endColumn"] = str(span.end_col + 1)
    props["title"] = f"{f.code} {f.name}" if f.name else f.code
    # A finding that does not fail the run (dismissed, or informational) is only a notice.
    kind = COMMANDS[f.severity] if fails(f) else "notice"
    message = f"{f.message}{status_tag(f)}"
    if f.fix:
        message += f"\nhelp: {f.fix}"
    fields = ",".join(f"{key}={escape_property(value)}" for key, value in props.items())
    return f"::{kind} {fields}::{escape_data(message)}\n"


def render(findings: list[Finding], ctx: Context) -> str:
    return "".join(command(f, ctx) for f in findings)
