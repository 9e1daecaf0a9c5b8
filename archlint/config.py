"""Resolved settings for a run: configuration files, rule selection with ruff's precedence.

Where settings come from, lowest to highest priority: archlint's defaults, the nearest
configuration file of the checked file (``[tool.archlint]`` in ``pyproject.toml``, or the
top level of ``archlint.toml``), then the command line.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from archlint import device
from archlint.rule import REDIRECTS

# ARC4xx rules are off unless selected explicitly (by code, by prefix, or by ALL).
DEFAULT_SELECT = ("ARC1", "ARC2", "ARC3", "ARC9")


class UsageError(Exception):
    """A bad option or config value: exit code 2, with a message naming what is wrong."""


@dataclass(frozen=True)
class Selection:
    """One level of rule selection (a config file, or the command line), as in ruff:
    ``select`` (None: keep what the level below chose), then ``extend-select`` and ``ignore``."""

    select: tuple[str, ...] | None = None
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


@dataclass
class Settings:
    # The command line's selection; the config file's is in ``config_selection``.
    select: tuple[str, ...] | None = None
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
    # Seconds one model's measurement may take; None: the device's default
    # (archlint.measure.budget.default_budget).
    measure_budget: float | None = None
    # How many files are analysed at once (--jobs): they share the memory budget. A property
    # of the run, not of the file's analysis, so the cache leaves it out of its key.
    workers: int = 1
    # Per-rule options by rule name: {"deep-plain-stack": {"threshold": 3.0}}.
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [[tool.archlint.models]] entries, for the files they name.
    models: tuple["ModelEntryConfig", ...] = ()
    # Filled per checked file from its configuration file (see ``resolve_settings``).
    config_file: str | None = None
    config_selection: tuple[Selection, ...] = ()
    # Selectors of the per-file-ignores entries that match this file.
    per_file_ignores: tuple[str, ...] = ()
    # Fixes (archlint.fix): ``fixes`` asks the engine to propose and verify them (--fix,
    # --diff, --fix-only, --show-fixes); ``fixable``/``unfixable`` are ruff's per-rule
    # settings (codes or prefixes; None: every rule with a fixer).
    fixes: bool = False
    fixable: tuple[str, ...] | None = None
    unfixable: tuple[str, ...] = ()

    def is_selected(self, code: str) -> bool:
        layers = (*self.config_selection, Selection(self.select, self.extend_select, self.ignore))
        if not resolve_selection(code, layers):
            return False
        return _specificity(code, self.per_file_ignores) is None

    def is_fixable(self, code: str) -> bool:
        return is_selected(code, self.fixable if self.fixable is not None else ("ALL",), self.unfixable)


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
    """ruff's rule within one level: the most specific matching prefix wins; on a tie,
    ignore wins."""
    chosen = _specificity(code, select)
    if chosen is None:
        return False
    dropped = _specificity(code, ignore)
    return dropped is None or chosen > dropped


def resolve_selection(code: str, layers: Iterable[Selection]) -> bool:
    """ruff's resolution across levels (defaults, config file, command line): a level with
    ``select`` starts afresh from it; a level without one adjusts what the level below
    chose with its ``extend-select`` and ``ignore``. So ``--select ARC903`` runs ARC903
    whatever the config ignores, and ``--extend-select ARC4`` keeps the config's ignores."""
    enabled = is_selected(code, DEFAULT_SELECT, ())
    for layer in layers:
        touched = _specificity(code, (*(layer.select or ()), *layer.extend_select, *layer.ignore)) is not None
        if touched:
            enabled = is_selected(code, (*(layer.select or ()), *layer.extend_select), layer.ignore)
        elif layer.select is not None:
            enabled = False
    return enabled


def validate_codes(values: Iterable[str], known: Iterable[str], what: str) -> tuple[str, ...]:
    """Reject selectors that match no rule (a typo must not silently select nothing)."""
    known = list(known)
    out = []
    for raw in values:
        value = raw.strip().upper()
        if not value:
            continue
        if value in REDIRECTS:
            print(f"archlint: warning: {what}: {value} is now {REDIRECTS[value]}; using {REDIRECTS[value]}", file=sys.stderr)
            value = REDIRECTS[value]
        if value != "ALL" and not any(code.startswith(value) for code in known):
            raise UsageError(f"{what}: {raw!r} matches no rule code (known codes: {', '.join(known)}; prefixes like ARC1 and ALL work too)")
        out.append(value)
    return tuple(out)


def validate_measure_budget(value: Any, what: str) -> float:
    """Seconds, a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise UsageError(f"{what} must be a number of seconds > 0, e.g. 30; got {value!r}")
    return float(value)


def validate_device(value: str, what: str) -> str:
    try:
        return device.validate(value, what)
    except device.DeviceError as exc:
        raise UsageError(str(exc)) from None


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
    """The nearest ``archlint.toml`` (its top-level table, like ruff.toml) or
    ``pyproject.toml`` with a ``[tool.archlint]`` table, searching upward from ``start``;
    pyproject files without the table are skipped. In one folder archlint.toml wins."""
    start = start.resolve()
    for folder in [start, *start.parents] if start.is_dir() else list(start.parents):
        own = folder / "archlint.toml"
        if own.is_file():
            return own, _load_toml(own)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _load_toml(pyproject).get("tool", {}).get("archlint")
            if table is not None:
                return pyproject, table
    return None


def _section(config_file: Path) -> str:
    """How keys are named in messages: ``tool.archlint.select`` or ``select``."""
    return "tool.archlint." if config_file.name == "pyproject.toml" else ""


_MODEL_KEYS = {"path", "build", "inputs"}


def model_entries(config_file: Path, table: dict[str, Any]) -> list[ModelEntryConfig]:
    """The validated ``models`` entries of a config table, paths made absolute."""
    key = f"{_section(config_file)}models"
    raw = table.get("models", [])
    if not isinstance(raw, list):
        raise UsageError(f"{config_file}: {key} must be an array of tables ([[{key}]])")
    entries = []
    for i, item in enumerate(raw):
        where = f"{config_file}: {key}[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be a table with path, build and optionally inputs")
        unknown = set(item) - _MODEL_KEYS
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: path, build, inputs)")
        for name in ("path", "build"):
            if not isinstance(item.get(name), str) or not item[name].strip():
                raise UsageError(f"{where}: {name!r} must be a non-empty string")
        if "inputs" in item and not isinstance(item["inputs"], str):
            raise UsageError(f"{where}: 'inputs' must be a string (a Python expression)")
        path = (config_file.parent / item["path"]).resolve()
        entries.append(ModelEntryConfig(str(path), item["build"], item.get("inputs")))
    return entries


CONFIG_KEYS = (
    "select", "extend-select", "ignore", "per-file-ignores",
    "device", "batch-size", "seed", "measure-budget", "rules", "models", "exclude", "extend-exclude",
    "fixable", "unfixable",
)


@dataclass(frozen=True)
class FileConfig:
    """A validated configuration file."""

    path: Path
    selection: Selection = Selection()
    # (glob, selectors) pairs; a glob starting with ``!`` applies to the files it misses.
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Values for Settings fields (device, batch_size, seed, rule_options, models).
    values: Mapping[str, Any] = field(default_factory=dict)

    def ignores_for(self, path: Path) -> tuple[str, ...]:
        """Selectors of the per-file-ignores that apply to ``path`` (ruff's matching: the
        glob is relative to the config file's folder, and also tried on the bare file name)."""
        try:
            rel = Path(path).resolve().relative_to(self.path.parent).as_posix()
        except ValueError:
            rel = Path(path).resolve().as_posix()
        out: list[str] = []
        for pattern, codes in self.per_file_ignores:
            negated = pattern.startswith("!")
            glob = pattern[1:] if negated else pattern
            glob = glob[2:] if glob.startswith("./") else glob
            hit = fnmatch.fnmatchcase(rel, glob) or fnmatch.fnmatchcase(Path(rel).name, glob)
            if hit != negated:
                out.extend(codes)
        return tuple(out)


def _unknown(where: str, what: str, value: str, allowed: Iterable[str], label: str = "allowed") -> UsageError:
    """``<file>: [table] unknown key 'selct' (did you mean 'select'?); allowed: ...``"""
    allowed = list(allowed)
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{where} unknown {what} {value!r}{hint}; {label}: {', '.join(allowed) or 'none'}")


def load_config(config_file: Path, table: dict[str, Any], rules: Mapping[str, Any]) -> FileConfig:
    """Validate a config table against the schema; ``rules`` is the registry (code -> Rule).
    Every error names the file, the key and what is allowed."""
    section = _section(config_file)
    where = f"{config_file}: [{section.rstrip('.')}]" if section else f"{config_file}:"
    for key in table:
        if key not in CONFIG_KEYS:
            raise _unknown(where, "key", key, CONFIG_KEYS)
    codes = list(rules)

    def code_list(key: str) -> tuple[str, ...]:
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{config_file}: {section}{key} must be a list of rule codes or prefixes, e.g. [\"ARC1\", \"ARC903\"]; got {value!r}")
        return validate_codes(value, codes, f"{config_file}: {section}{key}")

    selection = Selection(
        select=code_list("select") if "select" in table else None,
        extend_select=code_list("extend-select") if "extend-select" in table else (),
        ignore=code_list("ignore") if "ignore" in table else (),
    )

    per_file: list[tuple[str, tuple[str, ...]]] = []
    raw_pfi = table.get("per-file-ignores", {})
    if not isinstance(raw_pfi, dict):
        raise UsageError(f"{config_file}: {section}per-file-ignores must be a table of glob = [codes], e.g. \"tests/*\" = [\"ARC903\"]")
    for pattern, value in raw_pfi.items():
        key = f"{section}per-file-ignores.{pattern!r}"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{config_file}: {key} must be a list of rule codes or prefixes; got {value!r}")
        per_file.append((pattern, validate_codes(value, codes, f"{config_file}: {key}")))

    values: dict[str, Any] = {}
    if "fixable" in table:
        values["fixable"] = code_list("fixable")
    if "unfixable" in table:
        values["unfixable"] = code_list("unfixable")
    if "device" in table:
        if not isinstance(table["device"], str):
            raise UsageError(f"{config_file}: {section}device must be a string: auto, cpu, cuda or cuda:N; got {table['device']!r}")
        values["device"] = validate_device(table["device"], f"{config_file}: {section}device")
    for key, attr, low in (("batch-size", "batch_size", 2), ("seed", "seed", 0)):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{config_file}: {section}{key} must be an integer >= {low}; got {value!r}")
            values[attr] = value
    if "measure-budget" in table:
        values["measure_budget"] = validate_measure_budget(table["measure-budget"], f"{config_file}: {section}measure-budget")
    exclude_patterns(config_file, table)  # validated here; applied when files are collected
    values["rule_options"] = _rule_options(config_file, section, table.get("rules", {}), rules)
    values["models"] = tuple(model_entries(config_file, table))
    return FileConfig(config_file, selection, tuple(per_file), values)


def _rule_options(config_file: Path, section: str, raw: Any, rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``[tool.archlint.rules.<rule-name>]`` tables, checked against each rule's OPTIONS:
    known option names, and values of the defaults' types (an int is fine for a float)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{config_file}: {section}rules must be a table of [{section}rules.<rule-name>] tables")
    by_name = {rule.name: rule for rule in rules.values()}
    out: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        where = f"{config_file}: [{section}rules.{name}]"
        if name not in by_name:
            raise _unknown(f"{config_file}: [{section}rules]", "rule", name, sorted(by_name), "known rules")
        if not isinstance(options, dict):
            raise UsageError(f"{where} must be a table of options")
        defaults = by_name[name].options
        checked: dict[str, Any] = {}
        for option, value in options.items():
            if option not in defaults:
                raise _unknown(where, "option", option, defaults, f"options of {name}")
            default = defaults[option]
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if default is not None and type(value) is not type(default):
                raise UsageError(f"{where}: {option} must be a {type(default).__name__} like its default {default!r}; got {value!r}")
            checked[option] = value
        out[name] = checked
    return out


class ConfigFinder:
    """Finds, loads and validates the nearest configuration of each checked file, loading
    every configuration file once per run."""

    def __init__(self, rules: Mapping[str, Any]):
        self.rules = rules
        self._by_file: dict[Path, FileConfig] = {}

    def config_for(self, path: Path) -> FileConfig | None:
        found = find_config(Path(path))
        if found is None:
            return None
        config_file, table = found
        if config_file not in self._by_file:
            self._by_file[config_file] = load_config(config_file, table, self.rules)
        return self._by_file[config_file]


def resolve_settings(path: Path, cli: Mapping[str, Any], config: FileConfig | None) -> Settings:
    """The settings of one checked file: defaults, then its config file, then the command
    line (``cli`` holds only the options given there), which wins."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(config.values)
        values["config_file"] = str(config.path)
        values["config_selection"] = (config.selection,)
        values["per_file_ignores"] = config.ignores_for(path)
    values.update(cli)
    return Settings(**values)


def exclude_patterns(config_file: Path, table: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The validated ``exclude`` and ``extend-exclude`` glob lists of a config table."""
    out = []
    for key in ("exclude", "extend-exclude"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise UsageError(f"{config_file}: tool.archlint.{key} must be a list of glob patterns (strings), e.g. [\"generated\", \"legacy/*.py\"]")
        out.append(tuple(value))
    return out[0], out[1]
