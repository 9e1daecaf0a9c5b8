"""Resolved settings for a run, and rule selection with ruff's precedence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    # Bytes a model's parameters and buffers may take to be built for real and measured;
    # None: a share of the available memory (archlint.load.default_memory_budget).
    memory_budget: int | None = None
    # Per-rule options by rule name: {"deep-plain-stack": {"threshold": 3.0}}.
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [[tool.archlint.models]] entries, for the files they name.
    models: tuple["ModelEntryConfig", ...] = ()

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


@dataclass(frozen=True)
class ModelEntryConfig:
    """One ``[[tool.archlint.models]]`` entry: how to build (and feed) a model of a file."""

    path: str  # absolute
    build: str
    inputs: str | None = None


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the configuration: {exc}") from exc


def find_config(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``archlint.toml`` or ``pyproject.toml`` with a ``[tool.archlint]`` table,
    searching upward from ``start``; pyproject files without the table are skipped."""
    start = start.resolve()
    for folder in [start, *start.parents] if start.is_dir() else list(start.parents):
        own = folder / "archlint.toml"
        if own.is_file():
            data = _load_toml(own)
            return own, data.get("tool", {}).get("archlint", data)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _load_toml(pyproject).get("tool", {}).get("archlint")
            if table is not None:
                return pyproject, table
    return None


_MODEL_KEYS = {"path", "build", "inputs"}


def model_entries(config_file: Path, table: dict[str, Any]) -> list[ModelEntryConfig]:
    """The validated ``models`` entries of a config table, paths made absolute."""
    raw = table.get("models", [])
    if not isinstance(raw, list):
        raise UsageError(f"{config_file}: tool.archlint.models must be an array of tables ([[tool.archlint.models]])")
    entries = []
    for i, item in enumerate(raw):
        where = f"{config_file}: tool.archlint.models[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be a table with path, build and optionally inputs")
        unknown = set(item) - _MODEL_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: path, build, inputs)")
        for key in ("path", "build"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise UsageError(f"{where}: {key!r} must be a non-empty string")
        if "inputs" in item and not isinstance(item["inputs"], str):
            raise UsageError(f"{where}: 'inputs' must be a string (a Python expression)")
        path = (config_file.parent / item["path"]).resolve()
        entries.append(ModelEntryConfig(str(path), item["build"], item.get("inputs")))
    return entries
