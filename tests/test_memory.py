"""Byte sizes and available memory: one grammar for --memory-limit and --memory-budget, and
the container's cgroup limit respected by both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from archlint import cli, memory


def test_one_size_grammar():
    assert memory.parse_size("4GiB") == 4 * 1024**3
    assert memory.parse_size("512 MiB") == 512 * 1024**2
    assert memory.parse_size("512 MB") == 512 * 10**6
    assert memory.parse_size("2G") == 2 * 1000**3
    assert memory.parse_size("1.5gib") == int(1.5 * 1024**3)
    assert memory.parse_size("1e9") == 10**9
    assert memory.parse_size("2.5e3 KiB") == 2500 * 1024
    for bad in ("lots", "4 parsecs", "-1GiB", "0", "", "GiB"):
        with pytest.raises(ValueError):
            memory.parse_size(bad)


def test_a_limit_may_be_lifted_and_has_a_floor():
    assert memory.parse_size("none", allow_none=True) is None
    assert memory.parse_size("off", allow_none=True) is None
    assert memory.parse_size("0", allow_none=True) is None
    with pytest.raises(ValueError, match="none"):
        memory.parse_size("none")
    with pytest.raises(ValueError, match="below 256 MiB"):
        memory.parse_size("1MiB", minimum=256 * 1024**2)


@pytest.mark.parametrize("option", ["--memory-limit", "--memory-budget"])
def test_both_options_take_the_same_sizes(tmp_path, option):
    # The two options used to have two parsers: --memory-limit refused 1e9, --memory-budget took it.
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    for good in ("1e9", "4GiB", "2G"):
        result = CliRunner().invoke(cli.main, ["check", str(empty), option, good, "--no-isolation"])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli.main, ["check", str(empty), option, "lots"])
    assert result.exit_code == 2 and option in result.output


def test_format_size():
    assert memory.format_size(4 * 1024**3) == "4 GiB"
    assert memory.format_size(512 * 1024**2) == "512 MiB"
    assert memory.format_size(100) == "100 B"


def _fake_cgroup(tmp_path, monkeypatch, limit: str, usage: str):
    limit_file, usage_file = tmp_path / "memory.max", tmp_path / "memory.current"
    limit_file.write_text(limit + "\n")
    usage_file.write_text(usage + "\n")
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((str(limit_file), str(usage_file)),))


def test_budget_and_limit_follow_the_containers_cgroup(tmp_path, monkeypatch):
    # A 1 GiB container with 256 MiB in use leaves 768 MiB, whatever the host has free; and
    # what this process's heap keeps free at its top is this process's to reuse.
    _fake_cgroup(tmp_path, monkeypatch, str(1024**3), str(256 * 1024**2))
    monkeypatch.setattr(memory, "heap_kept", lambda: 64 * 1024**2)
    assert memory.available_memory() == (768 + 64) * 1024**2
    monkeypatch.setattr(memory, "heap_kept", lambda: 0)
    assert memory.available_memory() == 768 * 1024**2
    assert memory.default_memory_budget("cpu") == int(memory.MEMORY_FRACTION * 768 * 1024**2)
    assert memory.physical_memory() == 1024**3
    assert memory.default_memory_limit() == 1024**3 // 2


def test_without_a_cgroup_limit_the_machine_counts(tmp_path, monkeypatch):
    _fake_cgroup(tmp_path, monkeypatch, "max", "0")
    total = memory.physical_memory()
    assert total and total > 1024**3
    assert memory.default_memory_limit() == total // 2
    assert 0 < memory.available_memory() <= total


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status (Linux)")
def test_room_under_the_processes_data_limit():
    # A worker's cap is RLIMIT_DATA: what is left under it, and None without one.
    script = (
        "import resource, sys\n"
        "from archlint import memory\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_DATA)\n"
        "if sys.argv[1] != 'none':\n"
        "    resource.setrlimit(resource.RLIMIT_DATA, (int(sys.argv[1]), hard))\n"
        "print(memory.data_room())\n"
    )
    unlimited = subprocess.run([sys.executable, "-c", script, "none"], capture_output=True, text=True, check=True)
    assert unlimited.stdout.strip() == "None"
    cap = 4 * 1024**3
    capped = subprocess.run([sys.executable, "-c", script, str(cap)], capture_output=True, text=True, check=True)
    room = int(capped.stdout)
    # Less the process's own data (the interpreter and archlint.memory: tens of MB).
    assert cap - 512 * 1024**2 < room < cap


EXHAUSTING = '''
import torch
from torch import nn


class OnTrace(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")


class OnMeasure(nn.Module):
    """Runs on the few rows it is traced with, not on a measurement's batch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        if x.shape[0] > 16:
            raise MemoryError()
        return self.lin(x)


class WrongInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        return self.lin(x.reshape(len(x), 2, -1))
'''


def test_running_out_of_memory_is_told_apart_from_wrong_inputs(tmp_path):
    from archlint.config import Settings
    from archlint.engine import check_file

    path = tmp_path / "models.py"
    path.write_text(EXHAUSTING)
    findings = {f.model: f for f in check_file(str(path), Settings()).findings if f.code in ("ARC904", "ARC905")}
    assert findings["OnTrace"].code == "ARC904"
    assert memory.EXHAUSTED_HINT in findings["OnTrace"].message and "--inputs" not in findings["OnTrace"].message
    assert findings["OnMeasure"].code == "ARC905"
    assert "the measurement failed (MemoryError" in findings["OnMeasure"].message
    assert memory.EXHAUSTED_HINT in findings["OnMeasure"].message
    assert findings["WrongInput"].code == "ARC904"
    assert "--inputs" in findings["WrongInput"].message and memory.EXHAUSTED_HINT not in findings["WrongInput"].message


def test_exhausted_memory_is_recognised_by_its_words_and_type():
    assert memory.exhausted(MemoryError())
    assert memory.exhausted(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert memory.exhausted(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 62914560 bytes"))
    assert not memory.exhausted(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x5120 and 1280x10)"))
