"""Findings to LSP diagnostics, and the edits and hover text built on suppression comments.

archlint's columns count code points; the client counts in the negotiated position encoding
(UTF-16 code units unless it offered another), so every column goes through pygls's
``PositionCodec`` with the text of the line it is on.

Findings arrive as the dicts of ``archlint check --output-format json`` (the server never
holds a torch object, and a worker may run another Python): ruff's field names, 1-based rows
and columns, the end column exclusive.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Sequence

from lsprotocol import types

from archlint import suppress

SOURCE = "archlint"
SEVERITY = {
    "error": types.DiagnosticSeverity.Error,
    "warning": types.DiagnosticSeverity.Warning,
    "info": types.DiagnosticSeverity.Information,
}


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _range(lines: Sequence[str], codec: Any, f: dict[str, Any]) -> types.Range:
    """The finding's range in client units; a span without an end covers the rest of its
    line, so the editor has something to underline."""
    line = max(0, f["location"]["row"] - 1)
    col = max(0, f["location"]["column"] - 1)
    end = f.get("end_location") or f["location"]
    end_line, end_col = max(0, end["row"] - 1), max(0, end["column"] - 1)
    if (end_line, end_col) <= (line, col):
        end_line, end_col = line, len(lines[line]) if line < len(lines) else col
    return codec.range_to_client_units(lines, types.Range(
        start=types.Position(line=line, character=col),
        end=types.Position(line=end_line, character=end_col),
    ))


def to_diagnostic(f: dict[str, Any], phase: str, path: str, lines: Sequence[str], codec: Any,
                  related_support: bool = True, version: int | None = None) -> types.Diagnostic:
    """One finding as a diagnostic of the document ``path`` whose text is ``lines``.

    A finding located in another file (a block the model imports from a module of the
    project) is shown on the document's first line, with its real place as related
    information (or in the message, for a client without related-information support).

    A finding with a fix (verified runs ask for them) carries it in ``data["fix"]``: the JSON
    output's object (archlint's 1-based code-point rows and columns, converted only when the
    edit is offered) plus the document ``version`` the run checked, since the edits apply to
    that text only.
    """
    message = f["message"]
    if f.get("status") and f["status"] != "confirmed":
        message += f" [{f['status']}]"
    if f.get("reason"):
        message += f" ({f['reason']})"
    if f.get("help"):
        message += f"\nfix: {f['help']}"
    related = None
    if _same_file(f["filename"], path):
        rng = _range(lines, codec, f)
    else:
        rng = types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0))
        try:
            other_lines = Path(f["filename"]).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            other_lines = []
        where = f"{f['filename']}:{f['location']['row']}:{f['location']['column']}"
        if related_support:
            related = [types.DiagnosticRelatedInformation(
                location=types.Location(uri=Path(f["filename"]).as_uri(), range=_range(other_lines, codec, f)),
                message=f"{f['code']} is located here",
            )]
        else:
            message += f"\nat {where}"
    data: dict[str, Any] = {"phase": phase, "status": f.get("status"), "predicted": f.get("predicted"), "measured": f.get("measured")}
    if f.get("fix") and _same_file(f["filename"], path):
        data["fix"] = {**f["fix"], "version": version}
    return types.Diagnostic(
        range=rng,
        message=message,
        severity=SEVERITY.get(f.get("severity", "warning"), types.DiagnosticSeverity.Warning),
        code=f["code"],
        code_description=types.CodeDescription(href=f["url"]) if f.get("url") else None,
        source=SOURCE,
        related_information=related,
        data=data,
    )


def message_diagnostic(message: str, phase: str, line: int = 0) -> types.Diagnostic:
    """A diagnostic that is not a finding: archlint itself could not run (a bad config, an
    interpreter without archlint)."""
    return types.Diagnostic(
        range=types.Range(start=types.Position(line=line, character=0), end=types.Position(line=line, character=0)),
        message=message, severity=types.DiagnosticSeverity.Error, source=SOURCE,
        data={"phase": phase, "status": "error"},
    )


def syntax_diagnostic(source: str, path: str, lines: Sequence[str], codec: Any) -> types.Diagnostic | None:
    """ARC900 for a buffer that does not parse, found without importing anything (the
    static pass of an unsaved buffer can do no more)."""
    try:
        ast.parse(source, path)
    except SyntaxError as exc:
        line = max(1, exc.lineno or 1)
        col = max(0, (exc.offset or 1) - 1)
        text = lines[line - 1] if line <= len(lines) else ""
        finding = {
            "code": "ARC900", "message": f"cannot import the file: {exc.msg} (line {line})",
            "filename": path, "location": {"row": line, "column": min(col, len(text)) + 1},
            "end_location": None, "severity": "error", "status": "predicted",
            "url": _url("ARC900"),
        }
        return to_diagnostic(finding, "buffer", path, lines, codec)
    except ValueError:  # null bytes: the import reports it
        return None
    return None


def _url(code: str) -> str | None:
    from archlint import rule as rules_api
    from archlint.output import rule_url

    rule = rules_api.registry().get(code)
    return rule_url(rule.name) if rule else None


# --------------------------------------------------------------------------------------
# Suppression edits (the grammar is archlint.suppress's)


def _pos(lines: Sequence[str], codec: Any, line: int, col: int) -> types.Position:
    return codec.position_to_client_units(lines, types.Position(line=line, character=col))


def suppress_line_edit(source: str, line: int, code: str, codec: Any) -> types.TextEdit:
    """Add ``code`` to the ``# noqa:`` comment on ``line`` (0-based), or append one."""
    lines = source.splitlines()
    comments, _ = suppress._comments(source)
    for cline, ccol, text in comments:
        if cline - 1 != line:
            continue
        match = suppress._NOQA.search(text)
        if match:
            at = ccol + match.end("codes")
            pos = _pos(lines, codec, line, at)
            return types.TextEdit(range=types.Range(start=pos, end=pos), new_text=f", {code}")
    text = lines[line] if line < len(lines) else ""
    end = len(text.rstrip())
    start, stop = _pos(lines, codec, line, end), _pos(lines, codec, line, len(text))
    return types.TextEdit(range=types.Range(start=start, end=stop), new_text=f"  # noqa: {code}")


def suppress_file_edit(source: str, code: str, codec: Any) -> types.TextEdit:
    """Add ``code`` to the file's ``# archlint: file-ignore[...]``, or add one at the top
    (after a shebang or encoding line, which must stay first)."""
    lines = source.splitlines()
    for d in suppress.parse(source):
        if d.kind == "file-ignore" and d.text.endswith("]"):
            at = d.col + len(d.text) - 1
            pos = _pos(lines, codec, d.line - 1, at)
            sep = ", " if d.codes else ""
            return types.TextEdit(range=types.Range(start=pos, end=pos), new_text=f"{sep}{code}")
    line = 0
    while line < len(lines) and line < 2 and (lines[line].startswith("#!") or "coding" in lines[line] and lines[line].startswith("#")):
        line += 1
    pos = types.Position(line=line, character=0)
    return types.TextEdit(range=types.Range(start=pos, end=pos), new_text=f"# archlint: file-ignore[{code}]\n")


def fix_edits(source: str, fix: dict[str, Any], codec: Any) -> list[types.TextEdit] | None:
    """A fix's edits (the JSON output's, 1-based code-point rows and columns, the end
    exclusive; an end at the row after the last line is the end of the text) as text edits
    in client units, on the text ``source`` they were computed for; None for a text mixing
    line endings, which ``archlint check --fix`` leaves alone too.

    archlint makes its edits on the text with ``\n`` line breaks (``archlint.fix.apply``):
    the rows are the same in the document, and the new lines get the document's own break."""
    from archlint.fix.apply import NotApplied, _decode

    try:
        _, newline = _decode(source.encode("utf-8"))
    except NotApplied:
        return None
    lines = source.splitlines()
    out = []
    for edit in fix["edits"]:
        start, end = edit["location"], edit.get("end_location") or edit["location"]
        out.append(types.TextEdit(
            range=types.Range(start=_pos(lines, codec, start["row"] - 1, start["column"] - 1),
                              end=_pos(lines, codec, end["row"] - 1, end["column"] - 1)),
            new_text=edit["content"].replace("\n", newline),
        ))
    return out


def code_at(source: str, line: int, col: int) -> tuple[str, types.Range] | None:
    """The rule code under (``line``, ``col``) (0-based, code points) inside a suppression
    comment, with its range in code points."""
    for d in suppress.parse(source):
        for c in d.codes:
            if c.line - 1 == line and c.col <= col <= c.col + len(c.code):
                return c.code, types.Range(
                    start=types.Position(line=line, character=c.col),
                    end=types.Position(line=line, character=c.col + len(c.code)),
                )
    return None
