"""pre-commit: the published hooks run by the real pre-commit tool, and what the hook relies
on (--force-exclude, exit 0 with nothing to check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import cli
from archlint.files import is_excluded
from conftest import FIXTURES, REPO

GOOD_MODEL = '''
import torch.nn as nn


class SmallMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.fc1(x))
'''
BAD_MODEL = (FIXTURES / "ARC904" / "bad_wrong_flatten_size.py").read_text()


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------------------
# --force-exclude and exclusion patterns


@pytest.mark.parametrize(
    "relative, patterns, excluded",
    [
        ("generated/net.py", ["generated"], True),  # a folder name, anywhere below the base
        ("src/generated/net.py", ["generated"], True),
        ("src/net_pb2.py", ["*_pb2.py"], True),  # a file name glob
        ("legacy/net.py", ["legacy/*.py"], True),  # a path relative to the base
        ("src/legacy/net.py", ["legacy/*.py"], False),
        ("src/net.py", ["generated", "legacy/*.py"], False),
        ("src/net.py", [], False),
    ],
)
def test_exclusion_patterns_match_as_in_ruff(tmp_path, relative, patterns, excluded):
    assert is_excluded(tmp_path / relative, patterns, tmp_path) is excluded


def test_folders_above_the_base_do_not_match(tmp_path):
    # A project that happens to live in a folder called `generated` is not excluded.
    base = tmp_path / "generated" / "proj"
    assert not is_excluded(base / "net.py", ["generated"], base)


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    write(root, "pyproject.toml", '[tool.archlint]\nextend-exclude = ["generated"]\n')
    write(root, "generated/bad.py", BAD_MODEL)
    write(root, "src/bad.py", BAD_MODEL)
    monkeypatch.chdir(root)
    return root


def codes(result) -> list[str]:
    return [f["code"] for f in json.loads(result.stdout)]


def test_walked_folders_always_honour_exclusions(project):
    result = run("check", ".", "--no-verify", "--output-format", "json")
    assert [Path(f["filename"]).parent.name for f in json.loads(result.stdout)] == ["src"]


def test_explicit_paths_are_excluded_only_with_force_exclude(project):
    generated = str(project / "generated" / "bad.py")
    assert codes(run("check", generated, "--no-verify", "--output-format", "json")) == ["ARC904"]
    forced = run("check", generated, "--no-verify", "--output-format", "json", "--force-exclude")
    assert forced.exit_code == 0 and codes(forced) == []
    assert "no model files to check" in forced.stderr
    # Files that are not excluded are still checked.
    both = run("check", generated, "src/bad.py", "--no-verify", "--output-format", "json", "--force-exclude")
    assert both.exit_code == 1 and codes(both) == ["ARC904"]


def test_command_line_exclusions(project):
    # --extend-exclude adds to the config's list; --exclude replaces the config's `exclude`.
    args = ("check", "generated/bad.py", "src/bad.py", "--no-verify", "--output-format", "json", "--force-exclude")
    assert codes(run(*args, "--extend-exclude", "src/*.py")) == []
    write(project, "pyproject.toml", '[tool.archlint]\nexclude = ["generated"]\n')
    assert codes(run(*args)) == ["ARC904"]
    assert codes(run(*args, "--exclude", "src")) == ["ARC904"]  # generated/ is back in
    result = run(*args, "--exclude", "src")
    assert [Path(f["filename"]).parent.name for f in json.loads(result.stdout)] == ["generated"]


def test_bad_exclude_config_is_a_usage_error(project):
    write(project, "pyproject.toml", '[tool.archlint]\nexclude = "generated"\n')
    result = run("check", "src/bad.py", "--force-exclude")
    assert result.exit_code == 2
    assert "pyproject.toml" in result.stderr and "tool.archlint.exclude" in result.stderr


def test_nothing_to_check_exits_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["check"], ["check", "--force-exclude"]):
        result = run(*args)
        assert result.exit_code == 0 and "no model files to check" in result.stderr
    plain = write(tmp_path, "util.py", "def add(a, b):\n    return a + b\n")
    assert run("check", str(plain), "--force-exclude").exit_code == 0
    # A file that mentions torch but defines no model is clean too.
    helpers = write(tmp_path, "helpers.py", "import torch\n\n\ndef norm(x):\n    return x / x.norm()\n")
    result = run("check", str(helpers), "--force-exclude", "--output-format", "json")
    assert result.exit_code == 0 and codes(result) == []


# --------------------------------------------------------------------------------------
# The real pre-commit


def _hooks() -> dict[str, dict]:
    import yaml  # a dependency of pre-commit

    return {hook["id"]: hook for hook in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}


def test_published_hooks(tmp_path):
    pytest.importorskip("pre_commit", reason="pre-commit is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-manifest", str(REPO / ".pre-commit-hooks.yaml")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = _hooks()
    for hook_id, language in (("archlint", "python"), ("archlint-system", "system")):
        hook = hooks[hook_id]
        assert hook["language"] == language
        assert hook["entry"] == "archlint check --force-exclude"
        assert hook["types"] == ["python"] and hook["require_serial"] is True


def _git(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)


def test_pre_commit_hook_blocks_a_bad_model_and_passes_a_good_one(tmp_path):
    pytest.importorskip("pre_commit", reason="pre-commit is in the test extra: pip install -e '.[test]'")
    import yaml

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    bin_dir = os.path.dirname(sys.executable)
    assert shutil.which("archlint", path=bin_dir), f"no archlint console script next to {sys.executable}"

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        # The published entry (`archlint check --force-exclude`) finds this environment's archlint.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
    }
    assert _git(repo, "init", "-q", env=env).returncode == 0

    # The `archlint-system` hook as published, run from a `repo: local` entry (a `language:
    # python` hook would build an environment with torch: gigabytes, minutes).
    hook = _hooks()["archlint-system"]
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [hook]}]}))
    write(repo, "pyproject.toml", '[tool.archlint]\nextend-exclude = ["generated"]\n')
    write(repo, "models/bad_model.py", BAD_MODEL)
    write(repo, "models/good_model.py", GOOD_MODEL)
    write(repo, "models/util.py", "def add(a, b):\n    return a + b\n")
    write(repo, "generated/also_bad.py", BAD_MODEL)  # excluded, though pre-commit names it
    install = subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=repo, env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr

    assert _git(repo, "add", ".", env=env).returncode == 0
    blocked = _git(repo, "commit", "-m", "add models", env=env)
    output = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0, output
    assert "Failed" in output and "exit code: 1" in output
    assert "models/bad_model.py:15:" in output and "ARC904" in output  # the finding, at its line
    assert "also_bad" not in output  # --force-exclude: never even checked
    assert _git(repo, "rev-parse", "--verify", "HEAD", env=env).returncode != 0  # nothing committed

    assert _git(repo, "rm", "-q", "--cached", "models/bad_model.py", env=env).returncode == 0
    passed = _git(repo, "commit", "-m", "add the good model", env=env)
    output = passed.stdout + passed.stderr
    assert passed.returncode == 0, output
    assert "Passed" in output and "ARC9" not in output
    committed = _git(repo, "ls-files", env=env).stdout.split()
    assert "models/good_model.py" in committed and "models/bad_model.py" not in committed
