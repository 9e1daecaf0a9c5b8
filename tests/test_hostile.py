"""The hostile corpus: broken, malicious and awkward model files, linted in one real
`archlint check` run (a subprocess, so stdout is the real file descriptor 1).

Each fixtures/hostile/*.py (plus the ARC9xx fixtures) yields exactly the findings in its
.expected file (`line:col CODE status`, as in tests/test_fixtures.py) and, where the file
kills or stops its worker, a message naming the cause. The run goes on after every failure,
its stdout is valid JSON no matter what the models print, and the exit code follows from
the findings. Regenerate with `python -m pytest tests/test_hostile.py --regen-fixtures`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURE_PREFIX, FIXTURES, REPO

HOSTILE = FIXTURES / "hostile"
# Slow by design: they run until the timeout. Linted in a run of their own, with a short one.
ENDLESS = sorted(HOSTILE.glob("*infinite_loop.py"))
SHORT_TIMEOUT = 2
# The meta fixtures join the corpus, except those that need settings of their own (a
# first-line `# archlint-fixture:` comment, e.g. ARC905's tiny memory budget).
CORPUS = sorted(set(HOSTILE.glob("*.py")) - set(ENDLESS)) + sorted(
    p for p in FIXTURES.glob("ARC90*/bad_*.py") if not p.read_text().startswith(FIXTURE_PREFIX)
)
# A cap low enough that the memory hogs hit it at once, high enough for every small model.
MEMORY_LIMIT = "1GiB"

# What the message must say about why the file could not be analysed (one of, for a tuple).
CAUSES = {
    "import_infinite_loop.py": f"did not finish within {SHORT_TIMEOUT} s",
    "forward_infinite_loop.py": f"did not finish within {SHORT_TIMEOUT} s",
    "import_segfault.py": "killed by SIGSEGV",
    "forward_segfault.py": "killed by SIGSEGV",
    "import_os_exit.py": "os._exit(7)",
    "forward_os_exit.py": "os._exit(5)",
    "import_sys_exit.py": "sys.exit(3)",
    "forward_sys_exit.py": "sys.exit(4)",
    "import_recursion.py": "RecursionError",
    # Which one depends on whether the interpreter guards its C stack (3.12+ does).
    "import_stack_overflow.py": ("killed by SIGSEGV", "RecursionError"),
    "forward_recursion.py": "RecursionError",
    "import_error.py": "ImportError",
    "import_memory_hog.py": "memory limit is 1 GiB",
    "several_inputs.py": "--inputs",
    "bad_missing_dependency.py": "ModuleNotFoundError",
}


def lint(paths: list[Path], *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "archlint", "check", *map(str, paths), "--output-format", "json",
           "--memory-limit", MEMORY_LIMIT, *extra]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    return proc, time.monotonic() - start


def by_file(stdout: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in json.loads(stdout):  # raises if anything but archlint's JSON reached stdout
        out.setdefault(f["filename"], []).append(f)
    return out


@pytest.fixture(scope="module")
def corpus_run():
    proc, _ = lint(CORPUS, "--timeout", "120")
    return proc


@pytest.fixture(scope="module")
def endless_run():
    return lint(ENDLESS, "--timeout", str(SHORT_TIMEOUT))


def render(findings: list[dict]) -> str:
    # Meta diagnostics (ARC9xx) have no measurement status: "-", as in tests/test_fixtures.py.
    return "".join(f"{f['location']['row']}:{f['location']['column']} {f['code']} {f['status'] or '-'}\n" for f in findings)


def check_expected(path: Path, findings: list[dict], regen: bool) -> None:
    expected = path.with_suffix(".expected")
    got = render(findings)
    if regen and path.parent == HOSTILE:
        expected.write_text(got)
    assert expected.exists(), f"{expected} is missing: run with --regen-fixtures and review it"
    assert got == expected.read_text(), f"{path.name}: findings differ from {expected.name}:\n{got}"
    causes = CAUSES.get(path.name, ())
    causes = (causes,) if isinstance(causes, str) else causes
    if causes:
        assert any(c in f["message"] for f in findings for c in causes), f"{path.name}: no message names {causes}: {findings}"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_file(path, corpus_run, regen):
    check_expected(path, by_file(corpus_run.stdout).get(str(path.resolve()), []), regen)


@pytest.mark.parametrize("path", ENDLESS, ids=lambda p: p.name)
def test_endless_file_is_stopped_at_the_timeout(path, endless_run, regen):
    proc, _ = endless_run
    check_expected(path, by_file(proc.stdout).get(str(path.resolve()), []), regen)


def test_corpus_run_goes_on_and_exits_1(corpus_run):
    proc = corpus_run
    assert proc.returncode == 1, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # Every file was reached, also those after the ones that crashed their worker.
    assert f"across {len(CORPUS)} files" in proc.stderr


def test_model_output_never_reaches_stdout(corpus_run):
    # prints_to_stdout.py prints from Python and writes to fd 1 from C at import and in
    # forward: all of it lands on stderr, and stdout is archlint's JSON alone.
    findings = json.loads(corpus_run.stdout)
    assert isinstance(findings, list)
    for text in ("import-time print from Python", "import-time write to fd 1", "import-time puts from C", "forward print"):
        assert text not in corpus_run.stdout
        assert text in corpus_run.stderr


def test_endless_files_end_within_the_timeout(endless_run):
    proc, elapsed = endless_run
    assert proc.returncode == 1
    # Two files, each stopped after SHORT_TIMEOUT seconds; the rest is start-up.
    assert elapsed < 2 * SHORT_TIMEOUT + 60, elapsed


def test_every_hostile_fixture_is_in_a_run():
    assert len(CORPUS) + len(ENDLESS) >= 15
    assert {p.name for p in HOSTILE.glob("*.py")} <= {p.name for p in CORPUS + ENDLESS}


def test_a_clean_model_that_prints_exits_0_with_an_empty_json_list():
    proc, _ = lint([HOSTILE / "prints_to_stdout.py"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "[]\n"
