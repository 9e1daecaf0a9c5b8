"""Resolved settings for a run, and rule selection with ruff's precedence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

# ARC4xx rules are off unless selected explicitly (by code, by prefix, or by ALL).
DEFAULT_SELECT = ("ARC1", "ARC2", "ARC3", "ARC9")


class UsageError(Exception):
    """A bad option or config value: exit code 2, with a message naming what is wrong."""


@dataclass
class Settings:
    select: tuple[str, ...] = DEFAULT_SELECT
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    # Choosing what to build and feed (command line or config).
    model: str | None = None
    inputs: str | None = None
    input_shape: str | None = None
    data: str | None = None
    # Verification pass.
    verify: bool = True
    device: str = "auto"
    batch_size: int = 128
    seed: int = 0
    show_dismissed: bool = False
    # Per-rule options by rule name: {"deep-plain-stack": {"threshold": 3.0}}.
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_selected(self, code: str) -> bool:
        return is_selected(code, self.select + self.extend_select, self.ignore)


def _specificity(code: str, prefixes: Iterable[str]) -> int | None:
    """Length of the longest prefix matching ``code`` (``ALL`` matches with length 0)."""
    best = None
    for prefix in prefixes:
        prefix = prefix.strip().upper()
        length = 0 if prefix == "ALL" else len(prefix) if code.startswith(prefix) else None
        if length is not None and (best is None or length > best):
            best = length
    return best


def is_selected(code: str, select: Iterable[str], ignore: Iterable[str]) -> bool:
    """ruff's rule: the most specific matching prefix wins; on a tie, ignore wins."""
    chosen = _specificity(code, select)
    if chosen is None:
        return False
    dropped = _specificity(code, ignore)
    return dropped is None or chosen > dropped


def validate_codes(values: Iterable[str], known: Iterable[str], what: str) -> tuple[str, ...]:
    """Reject selectors that match no rule (a typo must not silently select nothing)."""
    known = list(known)
    out = []
    for raw in values:
        value = raw.strip().upper()
        if not value:
            continue
        if value != "ALL" and not any(code.startswith(value) for code in known):
            raise UsageError(f"{what}: {raw!r} matches no rule code (known codes: {', '.join(known)}; prefixes like ARC1 and ALL work too)")
        out.append(value)
    return tuple(out)
