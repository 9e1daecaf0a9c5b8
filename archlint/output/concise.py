"""``path:line:col: CODE message [status]``, one finding per line (columns 1-based)."""

from __future__ import annotations

from archlint.output import Context, display_path
from archlint.rule import Finding


def location(f: Finding, ctx: Context) -> str:
    return f"{display_path(f.span.path, ctx.root)}:{f.span.line}:{f.span.col + 1}"


def render(findings: list[Finding], ctx: Context) -> str:
    # ruff's "[*]": a verified fix is available (--fix applies it).
    return "".join(
        f"{location(f, ctx)}: {f.code}{' [*]' if f.autofix is not None and f.autofix.verified else ''} {f.message} [{f.status}]\n"
        for f in findings
    )
