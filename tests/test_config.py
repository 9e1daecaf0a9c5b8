"""Configuration: discovery per checked file, validation, precedence, per-file-ignores,
rule options."""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import cli
from archlint import rule as rules_api
from archlint.config import (
    ConfigFinder, FileConfig, Selection, Settings, UsageError, find_config, load_config,
    resolve_selection, resolve_settings,
)

# A top-level model that needs constructor arguments: ARC903 at its class line, without
# building or tracing anything (cheap).
NEEDS_ARGS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
'''

SMALL_MLP = '''
import torch.nn as nn


class SmallMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def codes(*args: str) -> list[tuple[str, str]]:
    """(file name, code) of each finding of a static run."""
    result = run("check", *args, "--no-verify", "--output-format", "json")
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return [(Path(f["filename"]).name, f["code"]) for f in json.loads(result.stdout)]


# -- discovery ---------------------------------------------------------------------------

def test_nearest_config_wins_and_pyproject_without_table_is_skipped(tmp_path):
    write(tmp_path, "pyproject.toml", '[tool.archlint]\nignore = ["ARC903"]\n')
    write(tmp_path, "sub/archlint.toml", 'select = ["ARC9"]\n')
    write(tmp_path, "sub/deeper/pyproject.toml", '[project]\nname = "x"\n[tool.other]\nkey = 1\n')
    deep = write(tmp_path, "sub/deeper/deep.py", NEEDS_ARGS)
    top = write(tmp_path, "top.py", NEEDS_ARGS)

    assert find_config(deep)[0] == tmp_path / "sub" / "archlint.toml"
    assert find_config(top)[0] == tmp_path / "pyproject.toml"
    # One run, two files, two configs: the root's ignore does not leak into sub/ (no
    # merging, as in ruff), and the table-less pyproject in between is passed over.
    assert codes(str(deep), str(top)) == [("deep.py", "ARC903")]


def test_archlint_toml_beats_pyproject_in_the_same_folder(tmp_path):
    write(tmp_path, "pyproject.toml", '[tool.archlint]\nselect = ["ARC9"]\n')
    write(tmp_path, "archlint.toml", 'ignore = ["ARC903"]\n')
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    assert find_config(path)[0].name == "archlint.toml"
    assert codes(str(path)) == []


def test_no_config_means_defaults(tmp_path):
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    settings = resolve_settings(path, {}, None)
    assert settings.is_selected("ARC903") and not settings.is_selected("ARC401")
    assert (settings.device, settings.batch_size, settings.seed) == ("auto", 128, 0)


# -- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("name, body, expected", [
    ("pyproject.toml", '[tool.archlint]\nselct = ["ARC1"]\n',
     ["pyproject.toml: [tool.archlint] unknown key 'selct'", "did you mean 'select'", "allowed: select, extend-select"]),
    ("archlint.toml", 'selct = ["ARC1"]\n', ["archlint.toml: unknown key 'selct'"]),
    ("archlint.toml", '[tool.archlint]\nselect = ["ARC1"]\n', ["unknown key 'tool'"]),
    ("pyproject.toml", '[tool.archlint]\nselect = "ARC1"\n', ["tool.archlint.select must be a list"]),
    ("pyproject.toml", '[tool.archlint]\nignore = ["XYZ9"]\n', ["tool.archlint.ignore", "'XYZ9' matches no rule code"]),
    ("pyproject.toml", '[tool.archlint]\ndevice = "tpu"\n', ["tool.archlint.device", "'tpu' is not one of auto, cpu, cuda"]),
    ("pyproject.toml", '[tool.archlint]\nbatch-size = 1\n', ["tool.archlint.batch-size must be an integer >= 2; got 1"]),
    ("pyproject.toml", '[tool.archlint]\nseed = "zero"\n', ["tool.archlint.seed must be an integer"]),
    ("pyproject.toml", '[tool.archlint.per-file-ignores]\n"tests/*" = "ARC903"\n', ["per-file-ignores.'tests/*' must be a list"]),
    ("pyproject.toml", '[tool.archlint.per-file-ignores]\n"tests/*" = ["ARC5"]\n', ["'ARC5' matches no rule code"]),
    ("pyproject.toml", '[tool.archlint.rules.forward-faild]\n',
     ["[tool.archlint.rules] unknown rule 'forward-faild'", "did you mean 'forward-failed'", "known rules:"]),
    ("pyproject.toml", '[tool.archlint.rules.forward-failed]\nthreshold = 3\n',
     ["[tool.archlint.rules.forward-failed] unknown option 'threshold'"]),
    ("pyproject.toml", "[tool.archlint]\n[[tool.archlint.models]]\npath = 'net.py'\nbuld = 'Net(4)'\n", ["models[0]", "'buld'"]),
    ("pyproject.toml", "[tool.archlint\n", ["pyproject.toml: cannot read the configuration"]),
])
def test_bad_config_is_exit_2_naming_file_key_and_what_is_allowed(tmp_path, name, body, expected):
    write(tmp_path, name, body)
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    result = run("check", str(path), "--no-verify")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stdout == ""
    message = " ".join(result.stderr.split())  # click wraps long lines
    for part in expected:
        assert part in message, message


# -- rule selection ----------------------------------------------------------------------

def test_selection_within_one_level_follows_specificity():
    assert resolve_selection("ARC903", [Selection(select=("ALL",), ignore=("ARC9",))]) is False
    assert resolve_selection("ARC903", [Selection(select=("ARC903",), ignore=("ARC9",))]) is True
    # Same specificity: ignore wins.
    assert resolve_selection("ARC903", [Selection(select=("ARC9",), ignore=("ARC9",))]) is False
    # Untouched by an explicit select: off, even if on by default.
    assert resolve_selection("ARC103", [Selection(select=("ARC9",))]) is False
    # ARC4 is off by default; extend-select adds it to the defaults.
    assert resolve_selection("ARC401", []) is False
    assert resolve_selection("ARC401", [Selection(extend_select=("ARC4",))]) is True
    assert resolve_selection("ARC103", [Selection(extend_select=("ARC4",))]) is True


def test_command_line_level_overrides_the_config_level_as_in_ruff():
    config = Selection(select=("ARC1", "ARC9"), ignore=("ARC903",))
    # --select starts afresh: the config's ignore no longer applies (ruff: `--select F401`
    # enforces F401 whatever pyproject.toml ignores).
    assert resolve_selection("ARC903", [config, Selection(select=("ARC903",))]) is True
    assert resolve_selection("ARC101", [config, Selection(select=("ARC903",))]) is False
    # --extend-select adjusts the config's selection, keeping its ignores.
    cli_extend = Selection(extend_select=("ARC2",))
    assert resolve_selection("ARC201", [config, cli_extend]) is True
    assert resolve_selection("ARC101", [config, cli_extend]) is True
    assert resolve_selection("ARC903", [config, cli_extend]) is False
    # --ignore on the command line wins over a more specific select in the config.
    assert resolve_selection("ARC903", [Selection(select=("ARC903",)), Selection(ignore=("ARC9",))]) is False
    # The config alone.
    assert resolve_selection("ARC903", [config]) is False and resolve_selection("ARC101", [config]) is True


def test_command_line_wins_over_config_end_to_end(tmp_path):
    write(tmp_path, "pyproject.toml", """
        [tool.archlint]
        ignore = ["ARC903"]
        device = "cpu"
        batch-size = 16
        seed = 3
    """)
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    assert codes(str(path)) == []
    assert codes(str(path), "--select", "ARC903") == [("net.py", "ARC903")]
    # --extend-select of something else keeps the config's ignore.
    assert codes(str(path), "--extend-select", "ARC901") == []

    options = cli._cli_options(None, None, None, None, None, None, None, False, None, None, 5, False)
    settings = cli._file_settings([path], options)[path]
    assert (settings.device, settings.batch_size, settings.seed) == ("cpu", 16, 5)
    assert settings.config_file == str(tmp_path / "pyproject.toml")


def test_per_file_ignores_relative_to_the_config_folder(tmp_path):
    write(tmp_path, "pyproject.toml", """
        [tool.archlint.per-file-ignores]
        "legacy/*" = ["ARC903"]
        "scratch.py" = ["ARC9"]
        "!models/*" = ["ARC904"]
    """)
    legacy = write(tmp_path, "legacy/old/net.py", NEEDS_ARGS)
    models = write(tmp_path, "models/net.py", NEEDS_ARGS)
    scratch = write(tmp_path, "deep/er/scratch.py", NEEDS_ARGS)
    assert codes(str(legacy), str(models), str(scratch)) == [("net.py", "ARC903")]
    assert codes(str(models)) == [("net.py", "ARC903")]

    config = ConfigFinder(rules_api.registry()).config_for(models)
    # `*` crosses folders, as in ruff's globs; the bare file name is tried too; `!` negates.
    assert config.ignores_for(legacy) == ("ARC903", "ARC904")
    assert config.ignores_for(models) == ()
    assert config.ignores_for(scratch) == ("ARC9", "ARC904")


def test_per_file_ignores_beat_a_command_line_select(tmp_path):
    # ruff applies per-file-ignores after selection, whatever selected the rule.
    config = FileConfig(tmp_path / "pyproject.toml", per_file_ignores=(("tests/*", ("ARC903",)),))
    cli_select = {"select": ("ARC903",)}
    assert not resolve_settings(tmp_path / "tests" / "net.py", cli_select, config).is_selected("ARC903")
    assert resolve_settings(tmp_path / "net.py", cli_select, config).is_selected("ARC903")


def test_models_entries_still_work_next_to_other_keys(tmp_path):
    write(tmp_path, "pyproject.toml", """
        [tool.archlint]
        select = ["ARC9"]

        [[tool.archlint.models]]
        path = "net.py"
        build = "Net(width=6)"
        inputs = "torch.randn(3, 6)"
    """)
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    assert codes(str(path)) == []
    settings = cli._file_settings([path], {})[path]
    assert [(m.path, m.build) for m in settings.models] == [(str(path.resolve()), "Net(width=6)")]


# -- rule options ------------------------------------------------------------------------

@pytest.fixture
def node_count_rule(monkeypatch):
    """A rule with a threshold, registered for one test: flags models with more than
    ``max_nodes`` graph nodes."""
    module = types.ModuleType("fake_node_count")

    def check(graph, options, context):
        n = len(graph.nodes)
        if n <= options["max_nodes"]:
            return []
        return [rules_api.Finding("ARC399", f"{n} nodes > max_nodes {options['max_nodes']}", rules_api.node_span(graph, None))]

    module.check = check
    rule = rules_api.Rule("ARC399", "too-many-nodes", "warning", "too many nodes", "", {"max_nodes": 100, "scale": 1.0}, module)
    monkeypatch.setitem(rules_api.registry(), "ARC399", rule)
    return rule


def test_rule_options_from_config_reach_the_rule(tmp_path, node_count_rule):
    path = write(tmp_path, "net.py", SMALL_MLP)
    assert codes(str(path), "--no-isolation") == []  # default max_nodes = 100
    write(tmp_path, "pyproject.toml", """
        [tool.archlint.rules.too-many-nodes]
        max_nodes = 2
        scale = 2
    """)
    # In this process: the test's rule is registered here, not in a worker.
    result = run("check", str(path), "--no-verify", "--output-format", "json", "--no-isolation")
    (finding,) = json.loads(result.stdout)
    assert finding["code"] == "ARC399" and finding["message"].endswith("> max_nodes 2")
    settings = cli._file_settings([path], {})[path]
    # An int is fine where the default is a float, and becomes one.
    assert settings.rule_options == {"too-many-nodes": {"max_nodes": 2, "scale": 2.0}}


@pytest.mark.parametrize("body, expected", [
    ("max_nodes = 2.5", "max_nodes must be a int like its default 100; got 2.5"),
    ("max_nodes = true", "max_nodes must be a int"),
    ("scale = 'big'", "scale must be a float like its default 1.0"),
    ("max_node = 2", "unknown option 'max_node' (did you mean 'max_nodes'?); options of too-many-nodes: max_nodes, scale"),
])
def test_rule_option_names_and_types_are_checked(tmp_path, node_count_rule, body, expected):
    config_file = write(tmp_path, "pyproject.toml", f"[tool.archlint.rules.too-many-nodes]\n{body}\n")
    table = find_config(config_file)[1]
    with pytest.raises(UsageError) as err:
        load_config(config_file, table, rules_api.registry())
    assert str(config_file) in str(err.value) and "[tool.archlint.rules.too-many-nodes]" in str(err.value)
    assert expected in str(err.value)


def test_settings_without_config_keep_the_command_line_values():
    settings = resolve_settings(Path("net.py"), {"select": ("ARC903",), "seed": 7}, None)
    assert settings == Settings(select=("ARC903",), seed=7)
