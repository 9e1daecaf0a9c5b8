"""A finding's machine-applicable fix, as plain data.

Positions follow archlint's convention (``archlint.graph.Span``): 1-based lines, 0-based
code-point columns, exclusive end. Output formats convert at the edge (ruff's JSON and
SARIF use 1-based columns).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Edit:
    """Replace the text from (line, col) to (end_line, end_col) by ``content``."""

    content: str
    line: int
    col: int
    end_line: int
    end_col: int

    def to_dict(self) -> dict[str, Any]:
        return {"content": self.content, "line": self.line, "col": self.col, "end_line": self.end_line, "end_col": self.end_col}


@dataclass(frozen=True)
class Fix:
    """What a fix does (``message``), its edits, and what its verification found.

    ``verified``: the edited copy was checked and measured, and passed; only verified fixes
    are applied by ``--fix`` (ruff's applicability "safe"); the others are suggestions
    ("display-only"). ``outcome`` says what the verification measured ("fix verified:
    NLC 47.9 -> 2.6") or why the fix is not offered. ``source_hash`` is the SHA-256 of the
    file the edits apply to. ``apply_now``: part of the file's combination of fixes that was
    verified together and is applied in this round of ``--fix``.
    """

    message: str
    edits: tuple[Edit, ...] = ()
    verified: bool = False
    outcome: str = ""
    source_hash: str = ""
    apply_now: bool = False

    @property
    def applicability(self) -> str:
        return "safe" if self.verified else "display-only"

    @property
    def summary(self) -> str:
        return f"{self.message} ({self.outcome})" if self.outcome else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "edits": [e.to_dict() for e in self.edits],
            "verified": self.verified,
            "outcome": self.outcome,
            "source_hash": self.source_hash,
            "apply_now": self.apply_now,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fix":
        return cls(
            message=d["message"],
            edits=tuple(Edit(**e) for e in d.get("edits", ())),
            verified=bool(d.get("verified")),
            outcome=d.get("outcome", ""),
            source_hash=d.get("source_hash", ""),
            apply_now=bool(d.get("apply_now")),
        )


def source_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def line_edits(old: str, new: str) -> tuple[Edit, ...]:
    """The edits turning ``old`` into ``new``, one per changed run of lines (whole lines,
    line breaks included): what a unified diff shows, in ruff's edit shape."""
    import difflib

    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        out.append(Edit("".join(b[j1:j2]), i1 + 1, 0, i2 + 1, 0))
    return tuple(out)


def _offsets(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def apply_edits(text: str, edits: list[Edit] | tuple[Edit, ...]) -> str:
    """``text`` with ``edits`` applied; they must not overlap (ValueError otherwise)."""
    starts = _offsets(text)

    def offset(line: int, col: int) -> int:
        if line - 1 >= len(starts):
            return len(text)
        return starts[line - 1] + col

    spans = sorted((offset(e.line, e.col), offset(e.end_line, e.end_col), e.content) for e in edits)
    for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError("overlapping edits")
    out, pos = [], 0
    for start, end, content in spans:
        out.append(text[pos:start])
        out.append(content)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def overlaps(a: tuple[Edit, ...], b: tuple[Edit, ...]) -> bool:
    """Whether two fixes touch the same lines (whole-line edits: adjacent is fine)."""
    for x in a:
        for y in b:
            if (x.line, x.col) < (y.end_line, y.end_col) and (y.line, y.col) < (x.end_line, x.end_col):
                return True
            # Two insertions at the same point conflict too.
            if (x.line, x.col) == (y.line, y.col):
                return True
    return False


