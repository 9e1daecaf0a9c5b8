"""The result cache: hits, everything that must invalidate an entry, --no-cache, corrupt
entries, archlint clean."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import cache, cli, engine
from conftest import FIXTURES

SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"

# A model whose block lives in a local module of the project.
MODEL = '''
import torch.nn as nn

from blocks import Block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.block = Block(16)

    def forward(self, x):
        return self.block(self.inp(x))
'''

BLOCK = '''
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
'''

# The same block, now with a wrong input width: the model's forward fails (ARC904).
BROKEN_BLOCK = BLOCK.replace("nn.Linear(width, width)", "nn.Linear(width + 1, width)")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with a config, the cache on, and the engine's calls counted."""
    monkeypatch.delenv("ARCHLINT_NO_CACHE", raising=False)
    monkeypatch.delenv("ARCHLINT_CACHE_DIR", raising=False)
    root = tmp_path / "proj"
    (root / "models").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[tool.archlint]\n")
    (root / "models" / "net.py").write_text(textwrap.dedent(MODEL))
    (root / "models" / "blocks.py").write_text(textwrap.dedent(BLOCK))
    calls = []
    real = engine.check_file

    def counting(path, settings):
        calls.append(Path(path).name)
        return real(path, settings)

    monkeypatch.setattr(engine, "check_file", counting)
    # Run from elsewhere: the cache belongs next to the config, not in the cwd.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root, calls


def run(*args: str):
    # Checks run in this process, so that the counting engine above sees every analysis
    # (the worker processes would not).
    args = list(args) + (["--no-isolation"] if args[:1] == ("check",) else [])
    return CliRunner().invoke(cli.main, args, catch_exceptions=False)


def check(path: Path, *extra: str):
    result = run("check", str(path), "--output-format", "json", *extra)
    return result, [f["code"] for f in json.loads(result.stdout)]


def test_second_run_is_served_from_the_cache_next_to_the_config(project):
    root, calls = project
    net = root / "models" / "net.py"
    first, codes = check(net)
    assert first.exit_code == 0 and codes == [] and calls == ["net.py"]
    second, codes_again = check(net)
    assert calls == ["net.py"], "the engine ran again on an unchanged file"
    assert second.stdout == first.stdout and second.exit_code == 0
    assert "1 model across 1 file (1 from the cache)" in second.stderr

    cache_dir = root / ".archlint_cache"
    assert (cache_dir / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (cache_dir / "CACHEDIR.TAG").read_text().startswith(SIGNATURE)
    assert not (Path.cwd() / ".archlint_cache").exists()
    assert len(list((cache_dir / "entries").iterdir())) == 1


def test_findings_come_back_identical(project, tmp_path):
    root, calls = project
    bad = root / "models" / "bad.py"
    bad.write_text((FIXTURES / "ARC904" / "bad_wrong_flatten_size.py").read_text())
    fresh = run("check", str(bad), "--output-format", "json", "--show-dismissed")
    cached = run("check", str(bad), "--output-format", "json", "--show-dismissed")
    assert calls == ["bad.py"]
    assert fresh.exit_code == cached.exit_code == 1
    assert json.loads(cached.stdout) == json.loads(fresh.stdout)
    assert [f["code"] for f in json.loads(cached.stdout)] == ["ARC904"]
    # The full format reads the source line again for the cached finding.
    full = run("check", str(bad))
    assert calls == ["bad.py", "bad.py"]  # another setting (show-dismissed): a new entry
    assert run("check", str(bad)).stdout == full.stdout and calls == ["bad.py", "bad.py"]


def test_editing_the_file_invalidates(project):
    root, calls = project
    net = root / "models" / "net.py"
    check(net)
    net.write_text(textwrap.dedent(MODEL).replace("nn.Linear(8, 16)", "nn.Linear(8, 17)"))
    result, codes = check(net)
    assert calls == ["net.py", "net.py"]
    assert codes == ["ARC904"] and result.exit_code == 1  # 17 features into Block(16)
    assert "from the cache" not in result.stderr


def test_editing_an_imported_local_module_invalidates(project):
    root, calls = project
    net = root / "models" / "net.py"
    assert check(net)[1] == []
    (root / "models" / "blocks.py").write_text(textwrap.dedent(BROKEN_BLOCK))
    result, codes = check(net)
    assert calls == ["net.py", "net.py"]
    assert codes == ["ARC904"]
    # Putting the module back is a change too.
    (root / "models" / "blocks.py").write_text(textwrap.dedent(BLOCK))
    assert check(net)[1] == [] and len(calls) == 3


def test_a_failed_import_is_not_cached(project):
    # Creating the missing module fixes the file without touching it.
    root, calls = project
    net = root / "models" / "net.py"
    (root / "models" / "blocks.py").unlink()
    assert check(net)[1] == ["ARC900"]
    (root / "models" / "blocks.py").write_text(textwrap.dedent(BLOCK))
    assert check(net)[1] == []
    assert calls == ["net.py", "net.py"]


def test_changing_settings_invalidates(project):
    root, calls = project
    bad = root / "models" / "bad.py"
    bad.write_text((FIXTURES / "ARC904" / "bad_wrong_flatten_size.py").read_text())
    assert check(bad)[1] == ["ARC904"]
    assert check(bad, "--select", "ARC900")[1] == []
    assert check(bad, "--select", "ARC900")[1] == []
    # The input it was written for: it builds and runs (its default init still gives ARC203).
    assert "ARC904" not in check(bad, "--input-shape", "3,224,224", "--no-verify")[1]
    assert calls == ["bad.py", "bad.py", "bad.py"]
    # A config that changes the resolved settings counts the same as the command line.
    (root / "pyproject.toml").write_text(
        '[tool.archlint]\n[[tool.archlint.models]]\npath = "models/bad.py"\nbuild = "Net()"\ninputs = "torch.randn(2, 3, 224, 224)"\n'
    )
    assert "ARC904" not in check(bad, "--input-shape", "3,224,224", "--no-verify")[1]
    assert len(calls) == 4


def test_no_cache_bypasses_it(project):
    root, calls = project
    net = root / "models" / "net.py"
    check(net, "--no-cache")
    assert not (root / ".archlint_cache").exists()
    check(net)
    result, _ = check(net, "--no-cache")
    assert "from the cache" not in result.stderr
    assert calls == ["net.py", "net.py", "net.py"]


def test_cache_dir_option(project, tmp_path):
    root, calls = project
    net = root / "models" / "net.py"
    where = tmp_path / "my-cache"
    check(net, "--cache-dir", str(where))
    check(net, "--cache-dir", str(where))
    assert calls == ["net.py"]
    assert (where / "CACHEDIR.TAG").is_file() and not (root / ".archlint_cache").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shape"])
def test_corrupt_entries_are_ignored_and_rewritten(project, damage):
    root, calls = project
    bad = root / "models" / "bad.py"
    bad.write_text((FIXTURES / "ARC904" / "bad_wrong_flatten_size.py").read_text())
    first, codes = check(bad)
    (entry,) = (root / ".archlint_cache" / "entries").iterdir()
    text = entry.read_text()
    if damage == "garbage":
        entry.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        entry.write_text(text[: len(text) // 2])
    else:  # valid JSON with the right key, but findings that are not findings
        data = json.loads(text)
        data["findings"] = [{"code": "ARC904", "no_such_field": 1}]
        entry.write_text(json.dumps(data))
    second, codes_again = check(bad)
    assert codes_again == codes == ["ARC904"] and second.exit_code == 1
    assert calls == ["bad.py", "bad.py"]
    assert json.loads(entry.read_text())["findings"][0]["code"] == "ARC904"  # rewritten
    check(bad)
    assert len(calls) == 2


def test_a_hit_never_imports_torch(project):
    root, _ = project
    net = root / "models" / "net.py"
    check(net)
    code = (
        "import sys; from archlint.cli import main\n"
        "try:\n    main(['check', sys.argv[1]])\nexcept SystemExit as e:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n    raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(net)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "from the cache" in proc.stderr


def test_clean_removes_the_project_cache(project, monkeypatch):
    root, _ = project
    check(root / "models" / "net.py")
    assert (root / ".archlint_cache").is_dir()
    monkeypatch.chdir(root / "models")  # anywhere inside the project
    result = run("clean")
    assert result.exit_code == 0
    assert not (root / ".archlint_cache").exists()
    assert f"removed {root / '.archlint_cache'}" in result.stderr
    assert "no cache to remove" in run("clean").stderr


def test_clean_only_removes_folders_archlint_made(project, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    result = run("clean", "--cache-dir", str(precious))
    assert (precious / "data.txt").exists() and "no cache to remove" in result.stderr


def test_an_unwritable_cache_does_not_stop_the_run(project, tmp_path, caplog):
    root, calls = project
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the cache folder should go
    result, codes = check(root / "models" / "net.py", "--cache-dir", str(blocker / "sub"))
    assert result.exit_code == 0 and codes == []
    # A warning (logging goes to stderr in a real run; pytest captures it here).
    assert "cannot write the cache" in caplog.text


def test_key_ignores_other_files_model_entries(tmp_path):
    from archlint.config import ModelEntryConfig, Settings

    mine, other = str(tmp_path / "a.py"), str(tmp_path / "b.py")
    base = Settings(models=(ModelEntryConfig(mine, "A()"),))
    changed_other = Settings(models=(ModelEntryConfig(mine, "A()"), ModelEntryConfig(other, "B()")))
    changed_mine = Settings(models=(ModelEntryConfig(mine, "A(2)"),))
    key = lambda s: cache.Cache(s)._key(mine, "hash")  # noqa: E731
    assert key(base) == key(changed_other) != key(changed_mine)


def test_a_relative_path_is_cached_too(project, monkeypatch):
    root, calls = project
    monkeypatch.chdir(root)
    first = run("check", "models/net.py", "--output-format", "json")
    second = run("check", "models/net.py", "--output-format", "json")
    assert first.exit_code == second.exit_code == 0
    assert calls == ["net.py"] and "(1 from the cache)" in second.stderr
