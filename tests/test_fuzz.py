"""Fuzzing: random architectures, written as real model files, never crash archlint.

A hypothesis strategy draws a small network (Linear/Conv stacks with norms, activations,
dropout, pooling, residual blocks, functional ops, flattening, loops over a ModuleList) and
renders it as a model file in one of several source styles. For each file archlint must
not raise, every diagnostic must point inside the file (its line exists, its columns are
within that line), and a second run with the same seed must give the same findings.

The default run draws FUZZ_EXAMPLES (100) static-pass examples plus a few with the
verification pass and one CLI run; ``python benchmarks/fuzz_nightly.py`` runs many more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from archlint.config import Settings  # noqa: E402
from archlint.engine import check_file  # noqa: E402
from conftest import REPO  # noqa: E402

EXAMPLES = int(os.environ.get("ARCHLINT_FUZZ_EXAMPLES", "100"))
VERIFY_EXAMPLES = int(os.environ.get("ARCHLINT_FUZZ_VERIFY_EXAMPLES", "8"))
# CI draws the same examples every run; the nightly script draws new ones from a seed it
# prints (pytest --hypothesis-seed), so a failure can be replayed.
DERANDOMIZE = os.environ.get("ARCHLINT_FUZZ_RANDOM") != "1"

ACTIVATIONS = ["nn.ReLU()", "nn.Tanh()", "nn.GELU()", "nn.SiLU()", "nn.LeakyReLU(0.1)", "nn.Sigmoid()", "nn.ELU()"]
FUNCTIONAL = ["torch.relu", "torch.tanh", "F.gelu", "torch.sigmoid", "F.silu"]
HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
RESIDUAL = '''

class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, *layers):
        super().__init__()
        self.f = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.f(x)
'''


@st.composite
def architectures(draw) -> str:
    """The source of a model file with one randomly drawn network."""
    image = draw(st.booleans())
    sequential = draw(st.booleans())
    name = draw(st.sampled_from(["Net", "Model", "Classifier", "Encoder", "TinyNet"]))
    width = draw(st.sampled_from([4, 8, 16]))
    modules: list[str] = []  # module constructor expressions, in order
    forward: list[str] = []  # forward lines for the attribute style (index into modules as {m})
    uses_residual = False

    def add(expr: str) -> None:
        modules.append(expr)
        forward.append(f"x = self.m{len(modules) - 1}(x)")

    if image:
        channels, size = width, 32
        kernel = draw(st.sampled_from([1, 3]))
        add(f"nn.Conv2d(3, {channels}, {kernel})")
        size -= kernel - 1
        for _ in range(draw(st.integers(0, 5))):
            op = draw(st.sampled_from(["conv", "bn", "gn", "act", "pool", "res", "func", "drop"]))
            if op == "conv":
                out, stride = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([1, 2]))
                if size // stride < 1:
                    continue
                add(f"nn.Conv2d({channels}, {out}, 3, stride={stride}, padding=1)")
                channels, size = out, -(-size // stride)
            elif op == "bn":
                add(f"nn.BatchNorm2d({channels})")
            elif op == "gn":
                add(f"nn.GroupNorm(1, {channels})")
            elif op == "act":
                add(draw(st.sampled_from(ACTIVATIONS)))
            elif op == "pool" and size >= 2:
                add(draw(st.sampled_from(["nn.MaxPool2d(2)", "nn.AvgPool2d(2)"])))
                size //= 2
            elif op == "res":
                uses_residual = True
                add(f"Residual(nn.Conv2d({channels}, {channels}, 3, padding=1), {draw(st.sampled_from(ACTIVATIONS))})")
            elif op == "func" and not sequential:
                forward.append(f"x = {draw(st.sampled_from(FUNCTIONAL))}(x)")
            elif op == "drop":
                add("nn.Dropout2d(0.1)")
        if size <= 4 and draw(st.booleans()):
            add("nn.Flatten()")
            width = channels * size * size
        else:
            add("nn.AdaptiveAvgPool2d(1)")
            add("nn.Flatten()")
            width = channels
    else:
        features = draw(st.sampled_from([3, 8, 16]))
        add(f"nn.Linear({features}, {width})")
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["linear", "bn", "ln", "act", "res", "func", "scale", "drop", "loop"]))
        if op == "linear":
            out = draw(st.sampled_from([4, 8, 16, 32]))
            add(f"nn.Linear({width}, {out})")
            width = out
        elif op == "bn":
            add(f"nn.BatchNorm1d({width})")
        elif op == "ln":
            add(f"nn.LayerNorm({width})")
        elif op == "act":
            add(draw(st.sampled_from(ACTIVATIONS)))
        elif op == "res":
            uses_residual = True
            add(f"Residual(nn.Linear({width}, {width}), {draw(st.sampled_from(ACTIVATIONS))})")
        elif op == "drop":
            add("nn.Dropout(0.2)")
        elif sequential:
            continue  # functional ops and loops need a forward of their own
        elif op == "func":
            forward.append(f"x = {draw(st.sampled_from(FUNCTIONAL))}(x)")
        elif op == "scale":
            forward.append(f"x = x * {draw(st.sampled_from(['0.5', '2.0', '-1.0']))}")
        elif op == "loop":
            n, act = draw(st.integers(1, 3)), draw(st.sampled_from(FUNCTIONAL))
            modules.append(f"nn.ModuleList([nn.Linear({width}, {width}) for _ in range({n})])")
            forward.append(f"for layer in self.m{len(modules) - 1}:\n            x = {act}(layer(x))")
    add(f"nn.Linear({width}, {draw(st.sampled_from([1, 2, 10]))})")

    lines = [HEADER]
    if uses_residual:
        lines.append(RESIDUAL)
    lines.append(f"\n\nclass {name}(nn.Module):\n    def __init__(self):\n        super().__init__()\n")
    if sequential:
        body = "".join(f"            {m},\n" for m in modules)
        lines.append(f"        self.net = nn.Sequential(\n{body}        )\n\n    def forward(self, x):\n        return self.net(x)\n")
    else:
        for i, m in enumerate(modules):
            if draw(st.booleans()) and i:
                lines.append(f"        # layer {i}\n")
            lines.append(f"        self.m{i} = {m}\n")
        lines.append("\n    def forward(self, x):\n")
        lines.extend(f"        {f}\n" for f in forward)
        lines.append("        return x\n")
    return "".join(lines)


def assert_locations_valid(findings, path: Path) -> None:
    lines = path.read_text().splitlines()
    for f in findings:
        span = f.span
        assert span.path == str(path), f
        assert 1 <= span.line <= len(lines), f"{f.code} at line {span.line} of {len(lines)}"
        assert 0 <= span.col <= len(lines[span.line - 1]), f"{f.code} at column {span.col} of {lines[span.line - 1]!r}"
        end_line = span.end_line if span.end_line is not None else span.line
        assert span.line <= end_line <= len(lines), f
        if span.end_col is not None:
            assert 0 <= span.end_col <= len(lines[end_line - 1]), f
            assert (end_line, span.end_col) >= (span.line, span.col), f


def render(findings) -> list[tuple]:
    return [(f.code, f.span, f.status, f.message, f.predicted, f.measured, f.reason) for f in findings]


def _write(tmp_path_factory, source: str) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "model.py"
    path.write_text(source)
    return path


def _run_twice(path: Path, run_settings: Settings):
    first = check_file(path, run_settings)
    assert_locations_valid(first.findings, path)
    second = check_file(path, run_settings)
    assert render(second.findings) == render(first.findings), "not deterministic for a fixed seed"
    # Every random architecture here is buildable and runs on its inferred input.
    assert first.models and all(m.graph is not None for m in first.models), render(first.findings)
    return first


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(source=architectures())
def test_random_architectures_static_pass(source, tmp_path_factory):
    _run_twice(_write(tmp_path_factory, source), Settings(verify=False, show_dismissed=True))


@settings(max_examples=VERIFY_EXAMPLES, deadline=None, derandomize=DERANDOMIZE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(source=architectures(), batch=st.sampled_from([4, 16, 128]))
def test_random_architectures_with_verification(source, batch, tmp_path_factory):
    # Small batch sizes make ARC303 fire on BatchNorm models, so findings get measured. No
    # time budget: a measurement cut to one depends on the machine's load, not on the seed
    # (tests/test_budget.py), and 32 batches of 4 on a loaded machine can exceed it.
    _run_twice(_write(tmp_path_factory, source), Settings(batch_size=batch, show_dismissed=True, measure_budget=1e9))


@settings(max_examples=1, deadline=None, derandomize=DERANDOMIZE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(sources=st.lists(architectures(), min_size=3, max_size=3))
def test_random_architectures_through_the_cli(sources, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzcli")
    for i, source in enumerate(sources):
        (folder / f"model_{i}.py").write_text(source)
    cmd = [sys.executable, "-m", "archlint", "check", str(folder), "--output-format", "json", "-q",
           "--no-verify", "--seed", "3"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode in (0, 1), run.stderr
    assert runs[0].stdout == runs[1].stdout, "CLI output differs between two runs with the same seed"
    for f in json.loads(runs[0].stdout):
        lines = Path(f["filename"]).read_text().splitlines()
        row, col = f["location"]["row"], f["location"]["column"]  # 1-based, as users see them
        assert 1 <= row <= len(lines) and 1 <= col <= len(lines[row - 1]) + 1, f
