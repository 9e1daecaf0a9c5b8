"""ARC303 and ARC304 beyond their fixtures: where their inputs come from and their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from archlint import measure
from archlint.config import Settings
from archlint.engine import check_file
from archlint.rule import get
from conftest import FIXTURES

ARC303 = FIXTURES / "ARC303"


def test_arc303_follows_the_configured_batch_size():
    path = ARC303 / "bad_small_batch_mlp.py"
    for batch, expected in ((128, []), (32, []), (16, ["warning"]), (4, ["error"])):
        result = check_file(path, Settings(batch_size=batch, verify=False))
        assert [f.severity for f in result.findings if f.code == "ARC303"] == expected, batch


def test_arc303_predicted_inflation_matches_the_measured_ratio():
    # The prediction ((B-2)/(B-3))^(L/2) for L BatchNorm1d layers, against the measurement.
    result = check_file(ARC303 / "bad_small_batch_mlp.py", Settings(batch_size=8))
    (finding,) = [f for f in result.findings if f.code == "ARC303"]
    assert finding.predicted == pytest.approx((6 / 5) ** 1.5)
    assert finding.status == "confirmed"
    assert finding.measured == pytest.approx(finding.predicted, rel=0.15)


def test_arc303_conv_batchnorm_counts_positions():
    rule = get("ARC303").module
    assert rule.inflation([4 * 64]) == pytest.approx(math.sqrt(254 / 253))
    assert rule.inflation([3]) is None  # degenerate


def test_arc303_stays_predicted_over_the_memory_budget():
    result = check_file(ARC303 / "bad_small_batch_mlp.py", Settings(batch_size=8, memory_budget=1000))
    (finding,) = [f for f in result.findings if f.code == "ARC303"]
    assert finding.status == "predicted" and "memory budget" in finding.reason
    assert result.models[0].measured is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_measured_and_rechecked_in_float64(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure.measure(model, samples=128)
    name = str(dtype).replace("torch.", "")
    assert set(report.output_by_dtype) == {name, "float64"}
    low, precise = report.output_by_dtype[name], report.output_by_dtype["float64"]
    assert low.status == precise.status == "ok"
    # A shallow tanh net: half precision holds its NLC to within a few percent.
    assert low.nlc == pytest.approx(precise.nlc, rel=0.05)
    assert report.dtype == "float64" and report.output_nlc == precise.nlc
    assert all(torch.equal(before[k], v) and v.dtype == dtype for k, v in model.state_dict().items())


def test_float32_models_are_not_rechecked_for_precision():
    torch.manual_seed(0)
    report = measure.measure(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), samples=128)
    assert list(report.output_by_dtype) == ["float32"]
