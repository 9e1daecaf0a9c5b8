"""Suppression comments, and ARC902 for the ones that suppressed nothing.

Three forms, each with explicit codes (a blanket ``# noqa`` does not silence archlint:
an accidental one must not hide an architecture risk, as Fixit argues):

- ``# noqa: ARC103`` or ``# noqa: ARC103, ARC201``: the finding on that line;
- ``# archlint: ignore[ARC103]``: as a trailing comment, that line; on its own line, the
  next statement: all its lines for a simple statement (a multi-line
  ``self.layers = nn.Sequential(...)``), the header for a compound one (``class Net(...):``
  with its decorators, not the whole body);
- ``# archlint: file-ignore[ARC103]`` anywhere: the whole file.

A finding is matched by the line it starts on. Codes match exactly and case-sensitively, as
in ruff (``# noqa: ARC1`` is not a prefix and suppresses nothing). Codes of other tools in
the same comment (``# noqa: E501, ARC103``) are left alone. Comments are found with
``tokenize``, so text inside strings never counts.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from archlint import rule as rules_api
from archlint.files import read_source
from archlint.graph import Span
from archlint.rule import Finding

if TYPE_CHECKING:
    from archlint.config import Settings

UNUSED_CODE = "ARC902"

# flake8's grammar: `noqa` case-insensitive, then `:` and codes separated by commas or spaces.
_NOQA = re.compile(r"#\s*noqa\s*:\s*(?P<codes>[A-Za-z]+[0-9]+(?:[,\s]+[A-Za-z]+[0-9]+)*)", re.IGNORECASE)
# Brackets optional here so that a `# archlint: ignore` without codes can be reported.
_ARCHLINT = re.compile(r"#\s*archlint\s*:\s*(?P<kind>file-ignore|ignore)\b(?:\[(?P<codes>[^\]]*)\])?")
_CODE = re.compile(r"[A-Za-z]+[0-9]+")


@dataclass
class Code:
    """One code inside a directive, with its position (1-based line, 0-based column)."""

    code: str
    line: int
    col: int
    used: bool = False


@dataclass
class Directive:
    kind: str  # "noqa" | "ignore" | "file-ignore"
    text: str  # the directive as written, e.g. "# noqa: ARC103"
    line: int
    col: int
    # Lines it covers (first, last), None for the whole file.
    lines: tuple[int, int] | None
    codes: list[Code] = field(default_factory=list)

    def covers(self, finding: Finding) -> bool:
        return self.lines is None or self.lines[0] <= finding.span.line <= self.lines[1]


def parse(source: str) -> list[Directive]:
    """Every archlint directive in ``source`` (codes of other tools dropped)."""
    comments, next_code_line = _comments(source)
    statements = _statement_lines(source)
    directives = []
    lines = source.splitlines()
    for line, col, text in comments:
        own_line = not lines[line - 1][:col].strip()
        for m in _NOQA.finditer(text):
            codes = _codes(m, line, col, foreign=False)
            if codes:
                directives.append(Directive("noqa", m.group(0).rstrip(", "), line, col + m.start(), (line, line), codes))
        for m in _ARCHLINT.finditer(text):
            codes = _codes(m, line, col, foreign=True)
            if m.group("kind") == "file-ignore":
                covered = None
            elif own_line and line in next_code_line:
                target = next_code_line[line]
                covered = (target, statements.get(target, target))
            else:
                covered = (line, line)
            directives.append(Directive(m.group("kind"), m.group(0), line, col + m.start(), covered, codes))
    return directives


def _codes(match: re.Match, line: int, col: int, foreign: bool) -> list[Code]:
    """The codes of a directive; ``foreign``: keep codes of other tools (an archlint
    directive has only archlint codes, so any other is a mistake to report)."""
    if match.group("codes") is None:
        return []
    start = col + match.start("codes")
    return [
        Code(c.group(0), line, start + c.start())
        for c in _CODE.finditer(match.group("codes"))
        if foreign or c.group(0).upper().startswith("ARC")
    ]


def _comments(source: str) -> tuple[list[tuple[int, int, str]], dict[int, int]]:
    """(line, col, text) of every comment, and for each comment line the line of the next
    token that is code. A file tokenize gives up on (ARC900) keeps what came before."""
    comments: list[tuple[int, int, str]] = []
    next_code_line: dict[int, int] = {}
    waiting: list[int] = []
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments.append((tok.start[0], tok.start[1], tok.string))
                waiting.append(tok.start[0])
            elif tok.type not in skip:
                for line in waiting:
                    next_code_line[line] = tok.start[0]
                waiting.clear()
    except (tokenize.TokenError, SyntaxError):
        pass
    return comments, next_code_line


def _statement_lines(source: str) -> dict[int, int]:
    """First line -> last line of the statements starting on each line: the whole statement
    for simple ones, the header (decorators included) for compound ones."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    out: dict[int, int] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            end = max(node.lineno, body[0].lineno - 1)
        else:
            end = node.end_lineno or node.lineno
        out[start] = max(out.get(start, start), end)
    return out


def apply(findings: Iterable[Finding], directives: list[Directive]) -> list[Finding]:
    """The findings no directive suppresses; marks the codes that suppressed something."""
    return [f for f in findings if not _suppressed(f, directives)]


def _suppressed(finding: Finding, directives: list[Directive]) -> bool:
    hit = False
    for d in directives:
        if d.covers(finding):
            for c in d.codes:
                if rules_api.redirect(c.code) == finding.code:
                    c.used = hit = True
    return hit


def unused(directives: list[Directive], path: str, judged: Callable[[str], bool]) -> list[Finding]:
    """ARC902 findings for directive codes that suppressed nothing.

    ``judged(code)`` says whether an unused code of a known rule can be told apart from a
    needed one in this run (see the engine); unknown ARC codes are always reported. A
    directive that names ARC902 itself is kept as it is, as ruff does for RUF100."""
    known = rules_api.registry()
    out = []
    for d in directives:
        if any(c.code == UNUSED_CODE for c in d.codes):
            continue
        if not d.codes:
            span = Span(path, d.line, d.col, d.line, d.col + len(d.text))
            out.append(_finding(span, f"`{d.text}` names no rule codes and suppresses nothing; archlint needs explicit codes, e.g. `# archlint: {d.kind}[ARC103]`", "add the codes to suppress"))
            continue
        unknown = [c for c in d.codes if rules_api.redirect(c.code) not in known]
        stale = [c for c in d.codes if rules_api.redirect(c.code) in known and not c.used and judged(rules_api.redirect(c.code))]
        if not unknown and not stale:
            continue
        if d.lines is None:
            where = "in this file"
        elif d.lines[0] == d.lines[1]:
            where = f"on line {d.lines[0]}"
        else:
            where = f"on lines {d.lines[0]}-{d.lines[1]}"
        reasons = []
        if stale:
            reasons.append(f"no {_join(stale)} finding {where}")
        if unknown:
            reasons.append(f"{_join(unknown)} {'is not a rule code' if len(unknown) == 1 else 'are not rule codes'} (codes are case-sensitive)")
        bad = sorted(stale + unknown, key=lambda c: c.col)
        if len(bad) == len(d.codes):
            span = Span(path, d.line, d.col, d.line, d.col + len(d.text))
            subject, fix = f"`{d.text}`", "remove the comment"
        else:
            span = Span(path, d.line, bad[0].col, d.line, bad[0].col + len(bad[0].code))
            subject, fix = f"{_join(bad)} in `{d.text}`", f"remove {_join(bad)} from the comment"
        out.append(_finding(span, f"{subject} suppresses nothing: {'; '.join(reasons)}", fix))
    return out


def _finding(span: Span, message: str, fix: str) -> Finding:
    f = rules_api.meta(UNUSED_CODE, message, span)
    f.fix = fix
    return f


def _join(codes: Iterable[Code]) -> str:
    return ", ".join(c.code for c in codes)


def suppress(findings: list[Finding], source: str, path: str, *, report_unused: bool, judged: Callable[[str], bool]) -> list[Finding]:
    """``findings`` of the file ``path`` less the suppressed ones, plus ARC902 for its
    suppressions that suppressed nothing when ``report_unused`` (ARC902 obeys suppressions
    too). A finding located in another file (a block imported from a module of the
    project) obeys that file's comments."""
    by_path = {path: parse(source)}
    kept = []
    for f in findings:
        if f.span.path not in by_path:
            other = read_source(Path(f.span.path))
            by_path[f.span.path] = parse(other) if other is not None else []
        if not _suppressed(f, by_path[f.span.path]):
            kept.append(f)
    if report_unused:
        kept += apply(unused(by_path[path], path, judged), by_path[path])
    return kept


# Diagnostics that mean a model (or the whole file) was not analysed.
NOT_ANALYSED = ("ARC900", "ARC903", "ARC904")


def finalise(findings: list[Finding], path: str, settings: "Settings", source: str | None) -> list[Finding]:
    """What the user sees of a file's findings: the selected codes, minus suppressed ones
    (plus ARC902 for unused suppressions), minus dismissed ones unless asked, sorted."""
    kept = [f for f in findings if settings.is_selected(f.code)]
    if source is not None:
        # Only a rule that ran can show that a suppression of its code is unused: the code
        # must be selected for this file, and every model of it analysed (the import,
        # ARC900, always is).
        complete = not any(f.code in NOT_ANALYSED for f in findings)

        def judged(code: str) -> bool:
            return settings.is_selected(code) and (complete or code == "ARC900")

        # Dismissed findings are matched too: a suppression must not turn "unused" when a
        # different seed or batch dismisses the finding it is there for.
        kept = suppress(kept, source, path, report_unused=settings.is_selected(UNUSED_CODE), judged=judged)
    if not settings.show_dismissed:
        kept = [f for f in kept if f.status != "dismissed"]
    return sorted(kept, key=Finding.sort_key)
