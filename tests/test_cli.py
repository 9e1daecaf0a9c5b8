"""The command line end to end: routing, exit codes, formats, meta diagnostics."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from archlint import cli
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


def run(*args: str):
    # click 8.2+ keeps stderr apart from stdout.
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_bare_path_means_check(tmp_path):
    bad = FIXTURES / "ARC900" / "bad_syntax_error.py"
    bare = run(str(bad), "--output-format", "concise")
    explicit = run("check", str(bad), "--output-format", "concise")
    assert bare.exit_code == explicit.exit_code == 1
    assert bare.stdout == explicit.stdout
    assert "ARC900" in bare.stdout


def test_exit_0_on_a_clean_model(tmp_path):
    path = write(tmp_path, "good.py", GOOD_MODEL)
    result = run("check", str(path), "--no-verify", "--output-format", "concise")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_exit_0_when_no_file_mentions_torch(tmp_path):
    path = write(tmp_path, "plain.py", "x = 1\n")
    # Nothing to check must not even import torch: run in a fresh interpreter to see.
    code = (
        "import sys; from archlint.cli import main\n"
        "try:\n    main([sys.argv[1]])\nexcept SystemExit as e:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n    raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_exit_1_on_findings_and_exit_zero_flag():
    bad = FIXTURES / "ARC900" / "bad_import_time_exception.py"
    assert run("check", str(bad)).exit_code == 1
    assert run("check", str(bad), "--exit-zero").exit_code == 0


def test_exit_2_on_usage_errors(tmp_path):
    path = write(tmp_path, "good.py", GOOD_MODEL)
    assert run("check", str(path), "--select", "XYZ9").exit_code == 2
    assert run("check", str(path), "--device", "tpu").exit_code == 2
    assert run("check", str(path), "--input-shape", "3,x").exit_code == 2
    assert run("check", str(tmp_path / "missing.py")).exit_code == 2


def test_exit_2_on_internal_crash(tmp_path, monkeypatch):
    from archlint import engine

    def boom(*args, **kwargs):
        raise RuntimeError("a bug in archlint")

    monkeypatch.setattr(engine, "check_file", boom)
    path = write(tmp_path, "good.py", GOOD_MODEL)
    # In this process: a worker would not see the monkeypatch (test_worker covers workers).
    result = CliRunner().invoke(cli.main, ["check", str(path), "--no-isolation"])
    assert result.exit_code == 2
    assert "internal error" in result.stderr and "a bug in archlint" in result.stderr


def test_syntax_error_is_arc900_at_its_line():
    bad = FIXTURES / "ARC900" / "bad_syntax_error.py"
    result = run("check", str(bad), "--output-format", "json")
    (finding,) = json.loads(result.stdout)
    assert finding["code"] == "ARC900"
    assert finding["location"]["row"] == 9  # `def forward(self, x)` lacks its colon
    assert result.exit_code == 1


def test_import_time_exception_is_arc900_at_the_raising_line():
    bad = FIXTURES / "ARC900" / "bad_import_time_exception.py"
    result = run("check", str(bad), "--output-format", "json")
    (finding,) = json.loads(result.stdout)
    assert finding["code"] == "ARC900"
    assert finding["location"] == {"row": 4, "column": 1}
    assert "KeyError" in finding["message"]


def test_model_needing_arguments_is_arc903_with_the_missing_parameters():
    bad = FIXTURES / "ARC903" / "bad_needs_arguments.py"
    result = run("check", str(bad), "--output-format", "json", "--no-verify")
    findings = json.loads(result.stdout)
    assert [f["code"] for f in findings] == ["ARC903"]
    (f,) = findings
    assert f["location"]["row"] == 15  # class WideNet, not the Block used inside it
    assert "width" in f["message"] and "depth" in f["message"]
    assert "num_classes" not in f["message"].split("--model")[0]


def test_json_has_ruff_fields_plus_status_and_severity():
    bad = FIXTURES / "ARC903" / "bad_needs_arguments.py"
    result = run("check", str(bad), "--output-format", "json", "--no-verify")
    (f,) = json.loads(result.stdout)
    for key in ("code", "message", "filename", "location", "end_location", "fix", "noqa_row", "url", "cell"):
        assert key in f
    assert f["status"] is None and f["severity"] == "info"  # a meta diagnostic: nothing measured
    assert Path(f["filename"]).is_absolute()
    assert f["end_location"]["row"] >= f["location"]["row"]


def test_concise_format_and_output_file(tmp_path):
    bad = FIXTURES / "ARC903" / "bad_needs_arguments.py"
    out = tmp_path / "out.txt"
    result = run("check", str(bad), "--output-format", "concise", "--no-verify", "-o", str(out))
    assert result.stdout == ""
    line = out.read_text().strip()
    # A meta diagnostic has no measurement status: nothing was measured.
    assert ":15:7: ARC903 " in line and not any(f"[{s}]" in line for s in ("confirmed", "predicted", "dismissed"))


def test_select_and_ignore_filter_findings():
    bad = FIXTURES / "ARC903" / "bad_needs_arguments.py"
    ignored = run("check", str(bad), "--no-verify", "--ignore", "ARC903", "--output-format", "json")
    assert json.loads(ignored.stdout) == [] and ignored.exit_code == 0
    # The more specific select wins over a broader ignore.
    kept = run("check", str(bad), "--no-verify", "--ignore", "ARC9", "--select", "ARC903", "--output-format", "json")
    assert [f["code"] for f in json.loads(kept.stdout)] == ["ARC903"]


def test_untraceable_model_falls_back_with_arc901_and_exit_0():
    bad = FIXTURES / "ARC901" / "bad_data_dependent_branch.py"
    result = run("check", str(bad), "--output-format", "json", "--no-verify")
    findings = json.loads(result.stdout)
    assert [f["code"] for f in findings] == ["ARC901"]
    assert findings[0]["location"]["row"] == 5  # class GatedNet
    # Informational: the analysis succeeded, so a pre-commit hook must not fail.
    assert result.exit_code == 0


def test_forward_failure_is_arc904_at_the_failing_line():
    bad = FIXTURES / "ARC904" / "bad_wrong_flatten_size.py"
    result = run("check", str(bad), "--output-format", "json", "--no-verify")
    (f,) = json.loads(result.stdout)
    assert f["code"] == "ARC904"
    assert f["location"]["row"] == 15  # return self.fc(h.flatten(1))
    assert "--input-shape" in f["message"]
    assert result.exit_code == 1


def test_help_reads_well():
    top = run("--help")
    assert top.exit_code == 0
    assert "check" in top.stdout and "rule" in top.stdout and "Examples" in top.stdout
    sub = run("check", "--help")
    for option in ("--model", "--inputs", "--input-shape", "--output-format", "--select", "--ignore", "--exit-zero", "--no-verify", "--device", "-o"):
        assert option in sub.stdout
    assert "Exit status" in sub.stdout


def test_rule_command_prints_the_doc():
    result = run("rule", "ARC903")
    assert result.exit_code == 0
    assert "## What it does" in result.stdout and "model-not-built" in result.stdout
    assert run("rule", "ARC999").exit_code == 2


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "archlint.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "archlint" in proc.stdout


NEEDS_ARGS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
'''


def test_models_from_config_replace_discovery(tmp_path, monkeypatch):
    write(tmp_path, "pyproject.toml", """
        [tool.archlint]

        [[tool.archlint.models]]
        path = "models/net.py"
        build = '''
        cfg = dict(width=6)
        model = Net(**cfg)
        '''
        inputs = "torch.randn(3, 6)"
    """)
    path = write(tmp_path, "models/net.py", NEEDS_ARGS)
    monkeypatch.chdir(tmp_path)
    result = run("check", str(path), "--no-verify", "--output-format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []
    # Without the entry the class needs arguments: ARC903.
    (tmp_path / "pyproject.toml").write_text("[tool.other]\n")
    result = run("check", str(path), "--no-verify", "--output-format", "json")
    assert [f["code"] for f in json.loads(result.stdout)] == ["ARC903"]


def test_bad_config_is_a_usage_error_naming_file_and_key(tmp_path):
    write(tmp_path, "pyproject.toml", """
        [tool.archlint]
        [[tool.archlint.models]]
        path = "net.py"
        buld = "Net(4)"
    """)
    path = write(tmp_path, "net.py", NEEDS_ARGS)
    result = run("check", str(path), "--no-verify")
    assert result.exit_code == 2
    assert "pyproject.toml" in result.stderr and "buld" in result.stderr
