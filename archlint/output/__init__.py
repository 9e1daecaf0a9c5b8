"""Output formats: one module per format, each with ``render(findings, ctx) -> str``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from archlint.rule import Finding

FORMATS = ("full", "concise", "json")


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
    from archlint.output import concise, full, json_format

    renderers = {"full": full.render, "concise": concise.render, "json": json_format.render}
    return renderers[fmt](findings, ctx)


def rule_url(name: str) -> str:
    return f"https://archlint.dev/rules/{name}"
