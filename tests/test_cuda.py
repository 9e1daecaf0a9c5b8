"""The CUDA path of the verification pass: the same numbers as on the CPU, the user's model
left as it was, and `archlint check --device cuda` giving the CPU's findings.

Skipped where torch sees no GPU (CI); run on a lent GPU machine with
``python -m pytest tests/test_cuda.py`` (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from archlint.config import Settings
from archlint.engine import check_file
from archlint.measure import measure
from conftest import FIXTURES
from test_measure import assert_unchanged, gaussian, mlp, snapshot

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem and two BasicBlock-like residual blocks: train-mode BatchNorm, so
    both the batch value and the population value are measured."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
            for _ in range(2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def no_tf32():
    # TF32 convolutions (cuDNN's default) round to 10 mantissa bits: the CPU comparison below
    # is about archlint's code path, not about the GPU's arithmetic.
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def images(n=128, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build, inputs", [
    (lambda: mlp(8, 64, nn.Tanh, sigma_w2=3.0), lambda: gaussian(128, 16)),
    (lambda: mlp(6, 64, batchnorm=True), lambda: gaussian(128, 16)),
    (lambda: (torch.manual_seed(0), ResidualCNN())[1], images),
])
def test_cuda_numbers_equal_cpu_numbers(build, inputs):
    model, x = build(), inputs()
    cpu = measure(model, x, device="cpu", segments=())
    gpu = measure(model, x, device="cuda")
    assert gpu.device.startswith("cuda") and cpu.device == "cpu"
    assert gpu.probes == cpu.probes and gpu.mode == cpu.mode
    assert gpu.nodes.keys() == cpu.nodes.keys()
    # Same seed, same probes: the two differ by float32 rounding only, far inside the error bar.
    for name, c in cpu.nodes.items():
        g = gpu.nodes[name]
        assert g.status == c.status, name
        if c.nlc is not None:
            assert g.nlc == pytest.approx(c.nlc, rel=1e-3), name
            assert abs(g.nlc - c.nlc) < 0.05 * c.nlc_se + 1e-6, name
        if c.nlc_population is not None:
            assert g.nlc_population == pytest.approx(c.nlc_population, rel=1e-3), name
        if c.std is not None:
            assert g.std == pytest.approx(c.std, rel=1e-3), name


def test_auto_device_is_cuda():
    report = measure(mlp(3, 32), gaussian(64, 16))
    assert report.device.startswith("cuda")


def test_model_on_cuda_is_measured_in_place_and_left_as_it_was():
    torch.manual_seed(0)
    model = ResidualCNN().cuda()
    with torch.no_grad():
        model(images(32).cuda())  # non-trivial running statistics, num_batches_tracked = 1
    before = snapshot(model)
    cpu_rng, gpu_rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    report = measure(model, images(), device="cuda")
    assert report.output_nlc_population is not None
    assert not any("copy of the model" in n for n in report.notes)  # in place, not a copy
    assert_unchanged(model, before)
    assert all(p.is_cuda for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), cpu_rng) and torch.equal(torch.cuda.get_rng_state(), gpu_rng)


def test_cpu_model_measured_on_cuda_stays_on_the_cpu_unchanged():
    model = mlp(4, 32, batchnorm=True)
    before = snapshot(model)
    report = measure(model, gaussian(64, 16), device="cuda")
    assert any("copy of the model on cuda" in n for n in report.notes)
    assert_unchanged(model, before)


def test_float64_recheck_runs_on_cuda():
    model = mlp(3, 16, bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-30)
    before = snapshot(model)
    report = measure(model, gaussian(64, 16), device="cuda")
    assert report.dtype == "float64" and report.device.startswith("cuda")
    assert_unchanged(model, before)


@pytest.mark.parametrize("fixture", ["bad_hot_tanh_mlp.py", "bad_vgg19_no_bn.py", "good_lenet.py"])
def test_check_on_cuda_gives_the_cpu_findings(fixture):
    path = FIXTURES / "architectures" / fixture
    cpu = check_file(path, Settings(device="cpu", show_dismissed=True)).findings
    gpu = check_file(path, Settings(device="cuda", show_dismissed=True)).findings
    assert [(f.code, f.span.line, f.status) for f in gpu] == [(f.code, f.span.line, f.status) for f in cpu]
    assert any(f.measured is not None for f in cpu)
    for c, g in zip(cpu, gpu):
        if c.measured is not None:
            assert g.measured == pytest.approx(c.measured, rel=1e-2), c.code


def test_cli_device_cuda_in_worker_processes():
    # The command as users run it: analysis in isolated worker processes (forkserver), which
    # must initialise CUDA themselves.
    result = subprocess.run([sys.executable, "-m", "archlint", "check", "--no-cache", "--device", "cuda",
                             "--output-format", "json", str(FIXTURES / "architectures" / "bad_hot_tanh_mlp.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)
    assert {f["code"] for f in findings} >= {"ARC103", "ARC104"}
    assert all(f["status"] == "confirmed" for f in findings if f["code"] in ("ARC103", "ARC104"))
