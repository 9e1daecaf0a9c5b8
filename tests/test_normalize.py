"""archlint.normalize: a copy of the model with the target NLC; the user's model untouched."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import archlint
from archlint import predict as predictor
from archlint import rule as rules_api
from archlint.normalization import ActivationChange, Interpolated, layer_nlc
from archlint.trace import trace

torch.set_num_threads(1)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _fixture_class(name: str):
    spec = importlib.util.spec_from_file_location("example_model_for_normalize", FIXTURES / "example_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}, str(model), [m.training for m in model.modules()]


def test_deep_bn_relu_mlp_is_brought_into_the_band_and_passes_the_rules():
    torch.manual_seed(0)
    model = _fixture_class("DeepPlainMLP")()
    state, structure, training = _snapshot(model)

    result = archlint.normalize(model, target=2.0)

    # Far above the band before (about 48), at the target after.
    assert result.nlc_before > 20
    assert result.converged and abs(result.nlc_after / 2.0 - 1) <= 0.05
    assert {c.form for c in result.changes} == {"slope"}
    assert all(isinstance(m, nn.LeakyReLU) and 0 < m.negative_slope < 1 for m in result.model.body if not isinstance(m, (nn.Linear, nn.BatchNorm1d)))
    assert all(c.layer_nlc_after < c.layer_nlc_before for c in result.changes)
    # The user's model: same parameters and buffers bit for bit, same modules, same modes.
    after_state, after_structure, after_training = _snapshot(model)
    assert after_structure == structure and after_training == training
    assert after_state.keys() == state.keys() and all(torch.equal(state[k], after_state[k]) for k in state)
    assert not any(isinstance(m, nn.LeakyReLU) for m in model.modules())

    # The rules on the normalised model: nothing is predicted, or the measurement dismisses it.
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    graph = trace(result.model, (x[:2],), name="normalised")
    predictor.predict(graph)
    findings = [f for code, r in rules_api.registry().items() if not r.is_meta for f in r.check(graph)]
    if findings:
        report = archlint.measure(result.model, x, graph=graph)
        for f in findings:
            assert rules_api.get(f.code).confirm(f, report).confirmed is not True, f.message
    # And the same rules flag the original.
    original = trace(model, (x[:2],), name="original")
    predictor.predict(original)
    assert rules_api.get("ARC103").check(original)


class Swish17(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.7 * x)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        for layer in (self.l1, self.l2, self.l3):
            nn.init.normal_(layer.weight, std=2.0 / layer.in_features**0.5)
        self.tanh, self.gelu, self.swish = nn.Tanh(), nn.GELU(), Swish17()
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        x = self.tanh(self.l1(x))
        x = self.gelu(self.l2(x))
        x = self.swish(self.l3(x))
        x = torch.relu(self.l4(x))  # functional ReLU: nothing standard to change
        return self.head(x)


def test_each_activation_gets_its_form_and_the_target_is_met():
    torch.manual_seed(0)
    model = Mixed()
    result = archlint.normalize(model, target=1.5)
    forms = {c.name: c.form for c in result.changes}
    assert forms["tanh"] == "gain" and forms["gelu"] == "interpolate" and forms["swish"] == "interpolate"
    assert [c.form for c in result.changes if c.activation == "relu"] == ["unchanged"]
    gain = next(c for c in result.changes if c.form == "gain")
    assert gain.target_module == "l1"
    assert torch.allclose(result.model.l1.weight, model.l1.weight * gain.value)
    assert isinstance(result.model.gelu, Interpolated) and isinstance(result.model.swish, Interpolated)
    assert abs(result.nlc_after / 1.5 - 1) <= 0.05


def test_interpolated_is_alpha_act_plus_the_rest_of_the_identity():
    x = torch.linspace(-3, 3, 101)
    m = Interpolated(nn.ReLU(), 0.25)
    assert torch.allclose(m(x), nn.LeakyReLU(0.75)(x))
    assert torch.allclose(Interpolated(nn.Tanh(), 0.0)(x), x)


def test_layer_nlc_matches_the_closed_forms():
    h = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert layer_nlc(torch.relu, h) == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=0.01)
    a = 0.2
    leaky = math.sqrt(((1 + a * a) / 2) / ((1 + a * a) / 2 - (1 - a) ** 2 / (2 * math.pi)))
    assert layer_nlc(lambda t: torch.nn.functional.leaky_relu(t, a), h) == pytest.approx(leaky, rel=0.01)


def test_bad_target_and_models_without_activations_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        archlint.normalize(nn.Linear(4, 4), target=0.5)
    with pytest.raises(archlint.normalization.NormalizeError, match="no activation"):
        archlint.normalize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))


def test_fix_writes_leaky_relu_slopes_at_the_construction_site(tmp_path):
    from archlint import normalize_fix
    from archlint.graph import Span

    src = (
        "import torch.nn as nn\n"
        "layers = []\n"
        "for _ in range(3):\n"
        "    layers += [nn.Linear(8, 8), nn.ReLU(inplace=True)]\n"
        "head = nn.Tanh()\n"
    )
    path = str(tmp_path / "m.py")
    col = src.splitlines()[3].index("nn.ReLU")
    changes = [ActivationChange(f"layers.{i}", "ReLU", "slope", v, "", span=Span(path, 4, col)) for i, v in enumerate((0.5, 0.52, 0.54))]
    changes.append(ActivationChange("l1", "Tanh", "gain", 0.7, "l1: weight and bias x 0.7"))
    new, notes = normalize_fix.rewrite(src, path, changes)
    assert "nn.LeakyReLU(negative_slope=0.52, inplace=True)" in new
    assert new.replace("nn.LeakyReLU(negative_slope=0.52, inplace=True)", "nn.ReLU(inplace=True)") == src
    assert any("not written" in n for n in notes)


def test_cli_prints_the_changes_and_fix_writes_the_slopes(tmp_path):
    from click.testing import CliRunner

    from archlint.cli import main

    src = (
        "import torch.nn as nn\n\n\n"
        "class Small(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        layers = []\n"
        "        for _ in range(6):\n"
        "            layers += [nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU()]\n"
        "        super().__init__(*layers, nn.Linear(32, 4))\n"
    )
    path = tmp_path / "small.py"
    path.write_text(src)
    result = CliRunner().invoke(main, ["normalize", str(path), "--target", "1.5", "--diff"])
    assert result.exit_code == 0, result.output
    assert "Small: NLC" in result.output and "-> nn.LeakyReLU(negative_slope=" in result.output
    assert "+            layers += [nn.Linear(32, 32), nn.BatchNorm1d(32), nn.LeakyReLU(negative_slope=" in result.output
    assert path.read_text() == src  # --diff leaves the file alone
    result = CliRunner().invoke(main, ["normalize", str(path), "--target", "1.5", "--fix"])
    assert result.exit_code == 0, result.output
    assert "nn.LeakyReLU(negative_slope=" in path.read_text() and "nn.ReLU()" not in path.read_text()
