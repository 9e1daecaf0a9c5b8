"""archlint profile: the per-layer plot, and a clear message without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from archlint.cli import main
from archlint import profile

torch.set_num_threads(1)
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "architectures" / "good_lenet.py"


def test_profile_renders_a_png_of_the_expected_size(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "lenet.png"
    result = CliRunner().invoke(main, ["profile", str(FIXTURE), "-o", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "LeNet: wrote" in result.output
    assert out.exists() and out.stat().st_size > 10_000
    pixels = image.imread(out)
    assert pixels.shape[:2] == (round(profile.FIGSIZE[1] * profile.DPI), round(profile.FIGSIZE[0] * profile.DPI))
    # Not a blank canvas: the curves and labels put many distinct colours on it.
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97].tolist()}) > 20


def test_rows_give_measured_and_predicted_layer_nlcs_and_html_embeds_them(tmp_path):
    pytest.importorskip("matplotlib")
    import archlint
    from archlint import predict as predictor
    from archlint.trace import trace

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    graph = trace(model, (x[:2],), name="tanh")
    predictor.predict(graph)
    report = archlint.measure(model, x, graph=graph)
    rows = profile.rows(report, graph)
    acts = [r for r in rows if r["kind"] == "activation"]
    assert len(acts) == 2
    for r in acts:
        assert r["layer_nlc"] > 1 and r["layer_nlc_predicted"] == pytest.approx(r["layer_nlc"], rel=0.1)
    out = tmp_path / "p.html"
    profile.plot(report, graph, [], out)
    text = out.read_text()
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text and "<td>1</td>" in text


def test_without_matplotlib_the_message_says_how_to_get_it(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "p.png"
    result = CliRunner().invoke(main, ["profile", str(FIXTURE), "-o", str(out)])
    assert result.exit_code == 1
    assert "archlint[plot]" in result.output and not out.exists()
    with pytest.raises(profile.PlotUnavailable, match="matplotlib"):
        profile.plot(None)
