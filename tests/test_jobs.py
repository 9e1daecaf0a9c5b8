"""Several files at once (``--jobs``): the same output as one at a time, the memory shared
by the workers, and the progress display."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import cli, jobs, memory, progress
from archlint.config import Settings
from archlint.engine import check_file
from conftest import FIXTURES, REPO

# Small real models with each kind of outcome: a confirmed finding, a clean model, a model
# whose forward fails (ARC904), a file that does not import (ARC900).
MIXED = [
    FIXTURES / "ARC101" / "bad_multi_branch_mlp.py",
    FIXTURES / "ARC101" / "good_two_layer_mlp.py",
    FIXTURES / "ARC904" / "bad_wrong_flatten_size.py",
    FIXTURES / "ARC900" / "bad_syntax_error.py",
]
OVER_BUDGET = FIXTURES / "ARC905" / "bad_over_budget.py"  # 273,448 bytes of parameters


def _check(*args: str):
    return CliRunner().invoke(cli.main, ["check", *args], catch_exceptions=False)


def test_two_jobs_print_what_one_job_prints(tmp_path):
    for path in MIXED:
        shutil.copy(path, tmp_path / path.name)
    one = _check(str(tmp_path), "--jobs", "1")
    two = _check(str(tmp_path), "--jobs", "2")
    assert one.exit_code == two.exit_code == 1
    assert one.stdout == two.stdout  # the same bytes, in the order of the files
    # ARC103 reports the multi-branch MLP's chain of sums (the fixture's own header, which
    # ignores ARC103 for ARC101's sake, is read by the fixture tests only).
    assert "ARC103 [confirmed] 6 nonlinear layers" in two.stdout and "ARC904" in two.stdout and "ARC900" in two.stdout
    # Every field, in JSON, of the static pass (a measured value may differ in its last
    # digits: each of two workers uses half the threads, so sums run in another order).
    static = [_check(str(tmp_path), "--jobs", n, "--output-format", "json", "--no-verify").stdout for n in ("1", "2")]
    assert static[0] == static[1]
    assert [Path(f["filename"]).name for f in json.loads(static[1])] == [
        "bad_multi_branch_mlp.py", "bad_syntax_error.py", "bad_wrong_flatten_size.py"]
    # Off a terminal, one line per file as it is taken up, and the same summary.
    for result in (one, two):
        assert sorted(line for line in result.stderr.splitlines() if "checking" in line) == sorted(
            f"archlint: checking {tmp_path / p.name}" for p in MIXED)
        assert "\r" not in result.stderr
    assert one.stderr.splitlines()[-1] == two.stderr.splitlines()[-1]
    assert two.stderr.splitlines()[-1] == "archlint: 3 findings (1 confirmed, 2 diagnostic) in 2 models across 4 files"


def test_results_come_back_in_the_order_of_the_files_and_run_at_once():
    # Two at once, or the barrier breaks; the first file finishes last.
    barrier = threading.Barrier(2, timeout=10)

    def one(path):
        barrier.wait()
        time.sleep(0.2 if path == "a" else 0.0)
        return path.upper()

    results = jobs.run(["a", "b"], one, jobs=2)
    assert list(results.items()) == [("a", "A"), ("b", "B")]


def test_an_error_in_one_file_stops_the_others():
    stopped = []
    started = []

    def one(path):
        started.append(path)
        if path == "bad":
            raise RuntimeError("internal")
        time.sleep(0.3)
        return path

    with pytest.raises(RuntimeError, match="internal"):
        jobs.run(["bad", *(f"f{i}" for i in range(20))], one, jobs=2, stop=lambda: stopped.append(True))
    assert stopped == [True]
    assert len(started) < 21  # the files not started were dropped


def test_the_workers_share_the_memory_limit():
    # 1 GiB for one worker: two workers get 512 MiB each, and more workers than fit in the
    # limit at MIN_MEMORY_LIMIT each is a usage error.
    gib = 1024**3
    assert cli._workers(1, 4, gib) == 1
    assert cli._workers(2, 4, gib) == 2 and memory.share(gib, 2) == gib // 2
    assert cli._workers(8, 3, gib) == 3  # no more workers than files
    assert memory.share(None, 4) is None  # no limit stays no limit
    with pytest.raises(cli.UsageError, match="--jobs 8.*less than 256 MiB"):
        cli._workers(8, 10, gib)
    # By default, the usable cores, as long as each worker keeps 4 GiB of the limit.
    assert cli._workers(None, 1000, None) == jobs.usable_cpus()
    assert cli._workers(None, 1000, 64 * gib) == min(jobs.usable_cpus(), 16)
    assert cli._workers(None, 10, 7 * gib) == 1


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_DATA"), reason="needs RLIMIT_DATA")
def test_each_worker_is_held_to_its_share_of_the_limit():
    hog = FIXTURES / "hostile" / "import_memory_hog.py"
    clean = FIXTURES / "ARC101" / "good_two_layer_mlp.py"
    result = _check(str(hog), str(clean), "--jobs", "2", "--memory-limit", "2GiB", "--no-verify", "--output-format", "concise")
    assert "memory limit is 1 GiB; raise it with --memory-limit, or lower --jobs" in result.stdout, result.stdout


def test_the_workers_share_the_memory_budget(monkeypatch):
    # Within a 400,000-byte budget the model is built and measured; half of it is too little.
    def measured(settings):
        findings = check_file(OVER_BUDGET, settings).findings
        return not any(f.code == "ARC905" for f in findings)

    assert measured(Settings(memory_budget=400_000, workers=1))
    assert not measured(Settings(memory_budget=400_000, workers=2))
    # The default budget (a share of the available memory) is shared the same way.
    monkeypatch.setattr(memory, "available_memory", lambda: int(400_000 / memory.MEMORY_FRACTION))
    assert measured(Settings(workers=1))
    assert not measured(Settings(workers=2))


def test_the_cache_is_shared_by_any_number_of_jobs(tmp_path):
    for path in MIXED[:2]:
        shutil.copy(path, tmp_path / path.name)
    cache = str(tmp_path / "cache")
    first = CliRunner(env={"ARCHLINT_NO_CACHE": None}).invoke(
        cli.main, ["check", str(tmp_path), "--jobs", "2", "--no-verify", "--cache-dir", cache])
    again = CliRunner(env={"ARCHLINT_NO_CACHE": None}).invoke(
        cli.main, ["check", str(tmp_path), "--jobs", "1", "--no-verify", "--cache-dir", cache])
    assert "(2 from the cache)" in again.stderr and "from the cache" not in first.stderr
    assert again.stdout == first.stdout


def test_usable_cpus_follow_the_containers_quota(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 cores
    monkeypatch.setattr(jobs, "_CPU_QUOTA_V2", str(quota))
    monkeypatch.setattr(jobs.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert jobs.usable_cpus() == 2
    quota.write_text("max 100000\n")
    assert jobs.usable_cpus() == 4
    # Two workers on 4 cores: 2 threads each, not 4 each.
    assert jobs.torch_threads(2) == 2 and jobs.torch_threads(8) == 1


def test_the_status_line_on_a_terminal():
    stream = io.StringIO()
    with progress.Progress(2, stream=stream, terminal=True) as shown:
        shown.started("a.py")
        shown.stage("a.py", "measure", "ResNet18")
        assert shown.line().startswith("archlint: 0/2 files, 0:0")
        assert shown.line().endswith("| a.py ResNet18 (measure)")
        shown.finished("a.py")
        assert shown.line().startswith("archlint: 1/2 files")
    text = stream.getvalue()
    assert "\r\x1b[Karchlint: 0/2 files, 0:00 | a.py ResNet18 (measure)" in text
    assert text.endswith("\r\x1b[K")  # cleared at the end: the summary gets a clean line
    assert "checking" not in text


@pytest.mark.parametrize("quiet", [False, True])
def test_no_status_line_off_a_terminal_or_when_quiet(quiet):
    stream = io.StringIO()
    with progress.Progress(1, stream=stream, terminal=False, quiet=quiet) as shown:
        shown.started("a.py")
        shown.stage("a.py", "measure", "Net")
        shown.finished("a.py")
    assert stream.getvalue() == ("" if quiet else "archlint: checking a.py\n")


def test_the_command_shows_the_status_line_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    path = FIXTURES / "ARC101" / "good_two_layer_mlp.py"
    result = _check(str(path), "--no-verify")
    assert "\r\x1b[Karchlint: 0/1 files" in result.stderr
    assert "| good_two_layer_mlp.py TwoLayerMLP (forward)" in result.stderr  # what the worker reported
    assert "checking" not in result.stderr
    assert _check(str(path), "--no-verify", "-q").stderr == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_every_worker(tmp_path):
    from test_worker import _as_in_a_terminal, _session_processes

    for name in ("a.py", "b.py", "c.py"):  # endless imports: only Ctrl-C ends them
        shutil.copy(FIXTURES / "hostile" / "import_infinite_loop.py", tmp_path / name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "archlint", "check", str(tmp_path), "--jobs", "2", "--timeout", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        assert "checking" in proc.stderr.readline() and "checking" in proc.stderr.readline()  # two at once
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "checking" not in err, err  # c.py never started
    assert out == ""
    deadline = time.monotonic() + 10
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _session_processes(proc.pid) == []
