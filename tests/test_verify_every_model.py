"""Verification covers every model: a finding can come from the measurement alone, a model
that was not measured says so in every format, and the same seed gives the same numbers."""

from __future__ import annotations

import json
import textwrap

import pytest

from click.testing import CliRunner

from archlint import cli, output
from archlint.config import Settings
from archlint.engine import check_file
from archlint.graph import Span
from archlint.output import full
from archlint.rule import Finding
from conftest import FIXTURES

NAN = FIXTURES / "ARC206" / "bad_nan_output.py"
POOLED = FIXTURES / "ARC201" / "bad_plain_cnn_collapsed_after_pooling.py"
OVER_BUDGET = FIXTURES / "ARC905" / "bad_over_budget.py"


def test_a_nan_output_is_found_by_measurement_at_the_op_that_makes_it():
    static = check_file(NAN, Settings(verify=False)).findings
    assert static == []  # the static pass cannot see values
    (f,) = check_file(NAN, Settings()).findings
    assert (f.code, f.status, f.span.line, f.found_by_measurement) == ("ARC206", "confirmed", 13, True)
    assert "NaN" in f.message and "found by measurement" in f.message


def test_a_clean_model_is_screened_by_reverse_mode_probes():
    # No static finding: the screening measurement reads the output's NLC by reverse-mode
    # probes and the other nodes' signal statistics, with no forward-mode probe.
    result = check_file(FIXTURES / "ARC104" / "good_bn_tanh.py", Settings())
    (model,) = result.models
    assert result.findings == [] and model.screened
    report = model.measured
    assert any("reverse-mode probes" in n for n in report.notes) and report.probes == 1
    assert report.output_nlc is not None
    assert all(s.nlc is None for name, s in report.nodes.items() if name != report.output)


def test_a_collapse_after_pooling_is_found_at_the_pooling_with_the_prediction_beside_it():
    # The mechanism at the threshold before the validation study (0.98): the last
    # pre-activation is under it and only the pooling crosses it. At the study's 0.711 the
    # pre-activations already cross.
    before = {"collapsing-domain": {"threshold": 0.98}}
    settings = Settings(input_shape="3,16,16", select=("ARC201",), rule_options=before)
    assert check_file(POOLED, Settings(input_shape="3,16,16", verify=False, select=("ARC201",), rule_options=before)).findings == []
    (f,) = check_file(POOLED, settings).findings
    assert f.code == "ARC201" and f.status == "confirmed" and f.found_by_measurement
    # Located at the layer where the collapse appears (the pooling's construction), not the class.
    assert f.span.line == 20 and f.node == "pool"
    assert f.measured > 0.98 > f.predicted
    assert f"found by measurement; predicted {f.predicted:.3g}" in f.message
    assert "always on or always off" in f.message  # a ReLU network


# Five cold tanh layers, then a running sum the mean-field predictor does not follow: nothing
# is predicted at the output, and the measurement finds it nearly linear.
UNPREDICTED_LINEAR = """
import torch
import torch.nn as nn


class ColdTanhCumsum(nn.Module):
    def __init__(self, width=256, depth=5, num_classes=10):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)])
        self.head = nn.Linear(width // 2, num_classes)

    def forward(self, x):
        return self.head(torch.cumsum(self.body(x), dim=1)[:, ::2] / 16)
"""


HOT_HEAD = UNPREDICTED_LINEAR.replace(
    "        self.head = nn.Linear(width // 2, num_classes)\n",
    "        self.head = nn.Linear(width // 2, num_classes)\n        nn.init.normal_(self.head.weight, std=20.0)\n")


HOT_TANH = UNPREDICTED_LINEAR.replace("ColdTanhCumsum", "HotTanhCumsum").replace("depth=5", "depth=12").replace(
    "        self.head = nn.Linear(width // 2, num_classes)\n",
    "        self.head = nn.Linear(width // 2, num_classes)\n"
    "        for block in self.body:\n            nn.init.normal_(block[0].weight, std=3.0 / width**0.5)\n")


@pytest.mark.parametrize("code, source, beyond", [
    # ARC101: twelve saturated tanh layers (weights at 3/sqrt(fan_in), about 1.45 each), then
    # the running sum the predictor does not follow: too few layers for the static pattern at
    # the BN-ReLU rate, an NLC far above the threshold once measured.
    ("ARC101", HOT_TANH, lambda v, t: v > t),
    ("ARC406", UNPREDICTED_LINEAR, lambda v, t: v < t),
    # ARC203: ten default-init ReLU layers (each keeps about 0.4 of the signal's std), then the
    # running sum; the features' std is not predicted.
    ("ARC203", UNPREDICTED_LINEAR.replace("ColdTanhCumsum", "FadingReluCumsum").replace("depth=5", "depth=10")
     .replace("nn.Tanh()", "nn.ReLU()"), lambda v, t: v < t),
    # ARC202 and ARC205: the same unpredicted features into an output layer initialised at
    # std 20 (the output's measured std is about 10, its RMS about 10 times the input's: beyond
    # the MLP thresholds, 6.33 and 6.32).
    ("ARC202", HOT_HEAD, lambda v, t: v > t),
    ("ARC205", HOT_HEAD, lambda v, t: v > t),
])
def test_a_calibrated_value_the_prediction_missed_is_found_by_measurement(tmp_path, code, source, beyond):
    """The thresholds were calibrated on measured values, so a measured value beyond one is
    reported even where the static pass predicted nothing, or a value within it."""
    path = tmp_path / "net.py"
    path.write_text(source)
    assert check_file(path, Settings(verify=False, select=(code,))).findings == []
    (f,) = check_file(path, Settings(select=(code,))).findings
    assert f.code == code and f.status == "confirmed" and f.found_by_measurement
    assert beyond(f.measured, f.threshold) and "found by measurement" in f.message


def _json_and_sarif(path, *args):
    runner = CliRunner()
    out = {}
    for fmt in ("json", "sarif"):
        result = runner.invoke(cli.main, ["check", str(path), "--output-format", fmt, "--no-isolation", "--no-cache", *args])
        assert result.exit_code == 0, result.output  # an info diagnostic does not fail the run
        out[fmt] = json.loads(result.stdout)
    return out["json"], out["sarif"]


def test_an_unmeasured_model_says_so_in_json_and_sarif():
    from test_formats import schema_errors

    js, sarif = _json_and_sarif(OVER_BUDGET, "--memory-budget", "100000")
    (item,) = js
    assert item["code"] == "ARC905" and item["status"] is None
    assert "TooLargeToBuild was not measured" in item["message"] and "memory budget" in item["message"]
    (result,) = sarif["runs"][0]["results"]
    assert result["ruleId"] == "ARC905" and result["level"] == "note"
    assert schema_errors(sarif) == []
    # --no-verify is the user's choice: no diagnostic.
    result = CliRunner().invoke(cli.main, ["check", str(OVER_BUDGET), "--output-format", "json", "--no-isolation",
                                           "--no-cache", "--memory-budget", "100000", "--no-verify"])
    assert json.loads(result.stdout) == []


def test_a_failed_measurement_keeps_the_findings_as_predicted_with_the_reason(tmp_path):
    # The forward works on the two trace rows but raises on the measurement's batch.
    path = tmp_path / "fails.py"
    path.write_text(textwrap.dedent("""\
        import torch
        from torch import nn


        class FailsOnBigBatches(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU()) for _ in range(20)])

            def forward(self, x):
                if x.shape[0] > 8:
                    raise RuntimeError("batches above 8 are not supported")
                return self.net(x)
    """))
    findings = check_file(path, Settings()).findings
    kept = [f for f in findings if not f.is_meta]
    (note,) = [f for f in findings if f.code == "ARC905"]
    assert kept and all(f.status == "predicted" and "the measurement failed" in f.reason for f in kept)
    assert "RuntimeError: batches above 8 are not supported" in note.message
    assert note.span.line == 12  # the line that raised


def test_the_same_seed_gives_the_same_numbers_with_random_inputs(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent("""\
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(*[nn.Sequential(nn.Linear(41, 41), nn.BatchNorm1d(41), nn.ReLU()) for _ in range(20)])

            def forward(self, x):
                return self.net(x)
    """))
    settings = Settings(inputs="torch.randn(64, 41)", show_dismissed=True)
    first, second = check_file(path, settings), check_file(path, settings)
    assert first.findings and first.findings == second.findings
    (a,), (b,) = first.models, second.models
    assert a.measured.nodes == b.measured.nodes  # every statistic of every node, exactly


def _tanh_ordered(tmp_path):
    path = tmp_path / "tanh_net.py"
    path.write_text(textwrap.dedent("""\
        from torch import nn


        class OrderedTanh(nn.Module):
            \"\"\"Small weights, large biases: the ordered phase, where every input looks alike.\"\"\"

            def __init__(self):
                super().__init__()
                layers = []
                for _ in range(10):
                    linear = nn.Linear(64, 64)
                    nn.init.normal_(linear.weight, std=0.3 / 8)
                    nn.init.normal_(linear.bias, std=1.0)
                    layers += [linear, nn.Tanh()]
                self.net = nn.Sequential(*layers)

            def forward(self, x):
                return self.net(x)
    """))
    return path


def test_a_tanh_collapse_speaks_of_saturation_not_relu_units(tmp_path):
    (f,) = [f for f in check_file(_tanh_ordered(tmp_path), Settings(verify=False)).findings if f.code == "ARC201"]
    assert "always on or always off" not in f.message and "He init" not in f.fix
    assert "pinned" in f.message and "1/sqrt(fan_in)" in f.fix


def test_values_beside_a_threshold_do_not_read_as_it():
    f = Finding(code="ARC201", message="m", span=Span("x.py", 1), status="confirmed", predicted=0.9,
                measured=0.9998, threshold=0.98)
    text = full.render([f], output.Context(root=".", sources={}))
    assert "measured 0.9998" in text and "threshold 0.98" in text
    f = Finding(code="ARC201", message="m", span=Span("x.py", 1), status="confirmed", measured=0.9999994, threshold=0.98)
    assert "measured 0.999999" in full.render([f], output.Context(root=".", sources={}))


def test_info_diagnostics_carry_no_measurement_status():
    (f,) = check_file(FIXTURES / "ARC901" / "bad_data_dependent_branch.py", Settings(verify=False)).findings
    assert f.code == "ARC901" and f.status is None
    text = full.render([f], output.Context(root=".", sources={}))
    assert "[confirmed]" not in text and "ARC901 " in text


def test_gpt_style_models_captured_eagerly_are_measured():
    # nanoGPT's assert on the sequence length defeats torch.fx; the eager graph is measured
    # (dropout off, forward-mode tangents through it) instead of failing the verification.
    for name in ("good_gpt_preln.py", "good_gpt_postln.py"):
        result = check_file(FIXTURES / "architectures" / name, Settings())
        assert [f.code for f in result.findings] == ["ARC901"], name
        (model,) = result.models
        assert model.graph.traced_with == "eager"
        assert model.measured is not None and model.measured.status == "ok" and model.measured.output_nlc > 0


# Two heads of the same output std (about 1.3): above ARC205's threshold for CNNs, under the
# one for models without convolutions (the validation study calibrated one per family).
OUTPUT_STD_PER_FAMILY = """
import torch.nn as nn


class HeadMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.GELU())
        self.head = nn.Linear(256, 10)
        nn.init.normal_(self.head.weight, std=0.125)

    def forward(self, x):
        return self.head(self.body(x))


class HeadCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.GroupNorm(1, 64), nn.GELU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, 10)
        nn.init.normal_(self.head.weight, std=0.6)

    def forward(self, x):
        return self.head(self.body(x))
"""


def test_the_output_scale_threshold_is_the_models_family(tmp_path):
    from archlint.rule import get

    path = tmp_path / "heads.py"
    path.write_text(OUTPUT_STD_PER_FAMILY)
    options = get("ARC205").options
    (f,) = check_file(path, Settings(select=("ARC205",))).findings
    assert f.model == "HeadCNN" and f.threshold == options["conv-max-std"] < f.measured < options["max-std"]
    # The MLP's std is within its own threshold, and reported under a lower one.
    lower = {"output-scale": {"max-std": options["conv-max-std"]}}
    found = check_file(path, Settings(select=("ARC205",), rule_options=lower)).findings
    assert {x.model for x in found} == {"HeadCNN", "HeadMLP"}
    (mlp,) = [x for x in found if x.model == "HeadMLP"]
    assert options["conv-max-std"] < mlp.measured < options["max-std"]
