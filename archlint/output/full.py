"""The default format: the concise line, the source line with a caret, numbers and the fix."""

from __future__ import annotations

from archlint.evidence import fmt, fmt_beside
from archlint.output import Context, fix_mark, status_tag
from archlint.output.concise import location
from archlint.rule import Finding


def render(findings: list[Finding], ctx: Context) -> str:
    out = []
    for f in findings:
        out.append(f"{location(f, ctx)}: {f.code}{fix_mark(f)}{status_tag(f)} {f.message}\n")
        lines = ctx.sources.get(f.span.path, "").splitlines()
        if 1 <= f.span.line <= len(lines):
            text = lines[f.span.line - 1]
            gutter = " " * len(str(f.span.line))
            end = f.span.end_col if f.span.end_col is not None and (f.span.end_line in (None, f.span.line)) else len(text)
            width = max(1, end - f.span.col)
            out.append(f"{gutter} |\n{f.span.line} | {text}\n{gutter} | {' ' * f.span.col}{'^' * width}\n")
        numbers = []
        if f.predicted is not None:
            numbers.append(f"predicted {fmt_beside(f.predicted, f.threshold)}")
        if f.measured is not None:
            numbers.append(f"measured {fmt_beside(f.measured, f.threshold)}")
        if f.threshold is not None:
            numbers.append(f"threshold {fmt(f.threshold)}")
        if numbers:
            out.append(f"  = values: {', '.join(numbers)}\n")
        if f.reason:
            out.append(f"  = note: {f.reason}\n")
        if f.built_as:
            out.append(f"  = built as: {f.built_as}\n")
        if f.explanation:
            out.append(f"  = why: {f.explanation}\n")
        if f.fix:
            out.append(f"  = help: {f.fix}\n")
        if f.autofix is not None:
            kind = "fix" if f.autofix.verified else "suggestion"
            out.append(f"  = {kind}: {f.autofix.summary}\n")
        out.append("\n")
    return "".join(out)
