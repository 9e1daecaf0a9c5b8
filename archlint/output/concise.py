"""``path:line:col: CODE message [status]``, one finding per line (columns 1-based)."""

from __future__ import annotations

from archlint.output import Context, display_path, fix_mark, status_tag
from archlint.rule import Finding


def location(f: Finding, ctx: Context) -> str:
    return f"{display_path(f.span.path, ctx.root)}:{f.span.line}:{f.span.col + 1}"


def render(findings: list[Finding], ctx: Context) -> str:
    # ruff's "[*]": a verified fix is available (--fix applies it).
    return "".join(
        f"{location(f, ctx)}: {f.code}{fix_mark(f)} {f.message}{status_tag(f)}\n"
        for f in findings
    )
