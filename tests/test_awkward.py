"""Awkward but legitimate models (fixtures/awkward/): each is analysed with a sensible result
or a clear diagnostic, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from archlint import measure
from archlint.config import Settings
from archlint.engine import check_file
from conftest import FIXTURES, REPO

AWKWARD = FIXTURES / "awkward"


def _check(name: str, **settings):
    return check_file(AWKWARD / name, Settings(**settings))


def _models(result) -> dict:
    return {m.name: m for m in result.models}


def _measure(model_result, inputs=None):
    graph = model_result.graph
    return measure.measure(graph.model, inputs, graph=graph, samples=None if inputs is not None else 128)


def test_two_inputs_need_explicit_inputs():
    result = _check("two_inputs.py")
    (finding,) = result.findings
    assert finding.code == "ARC904" and "(a, b)" in finding.message and "--inputs" in finding.message

    given = _check("two_inputs.py", inputs="(torch.randn(64, 16), torch.randn(64, 8))")
    assert not given.findings
    (model,) = given.models
    assert [n.shape for n in model.graph.inputs] == [(64, 16), (64, 8)]
    report = _measure(model, model.graph.example_inputs)
    # A nearly linear two-tower model: NLC 1, within the estimate's sampling error (the
    # --inputs batch is a seeded draw).
    assert report.status == "ok" and report.output_nlc >= 1.0 - 3 * report.output_nlc_se


def test_keyword_only_arguments():
    result = _check("keyword_only.py")
    models = _models(result)
    # Optional keyword-only arguments keep their defaults; fx's proxy for `mask` makes the
    # `if mask is not None` branch wrong, so the eager capture takes over (info ARC901).
    masked = models["MaskedMLP"].graph
    assert masked.traced_with == "eager" and masked.output is not None
    assert _measure(models["MaskedMLP"]).status == "ok"
    needs = [f for f in result.findings if f.model == "NeedsScale"]
    assert [f.code for f in needs] == ["ARC904"] and "scale" in needs[0].message


@pytest.mark.parametrize("name, output", [
    ("TupleWithLoss", "fc"), ("DictOut", "head"), ("DataclassOut", "fc"), ("NamedTupleOut", "fc"),
])
def test_structured_outputs_analyse_the_first_float_tensor(name, output):
    model = _models(_check("structured_outputs.py"))[name]
    # The logits: not the loss (None at lint time), not the integer ids before them.
    assert model.graph.output == output
    report = _measure(model)
    assert report.output == output and report.status == "ok"


def test_integer_inputs_start_at_the_embedding():
    (model,) = _check("integer_inputs.py").models
    (inp,) = model.graph.inputs
    assert inp.dtype == "int64"
    report = _measure(model)
    assert report.sources == ["emb"] and report.status == "ok"


def test_buffers_without_parameters():
    result = _check("buffers_only.py")
    assert [f.code for f in result.findings] == ["ARC904"]  # no layer to infer the input from
    (model,) = _check("buffers_only.py", input_shape="16").models
    assert not list(model.graph.model.parameters())
    buffers = {k: v.clone() for k, v in model.graph.model.named_buffers()}
    report = _measure(model, torch.randn(128, 16))
    assert report.status == "ok" and report.output_nlc > 1.0
    assert all(torch.equal(buffers[k], v) for k, v in model.graph.model.named_buffers())


def test_zero_output_is_0_over_0_not_an_nlc_of_0():
    (model,) = _check("zero_output.py").models
    report = _measure(model)
    out = report.output_stats
    # 0/0 is a status with no NLC (measure reports no input-dependent variance left as
    # "vanished"); the zero weights are exact, so no float64 re-check is wasted on it.
    assert out.status == "vanished" and out.nlc is None and out.unit_var == 0
    assert report.dtype == "float32"
    # Everything before the zero-initialised head is measured as usual.
    before = report.nodes[model.graph.nodes[-1].inputs[0]]
    assert before.status == "ok" and before.nlc > 1.0
    assert "[vanished]" in str(report).splitlines()[0]


def test_nan_output_is_reported_as_nan():
    (model,) = _check("nan_output.py").models
    report = _measure(model)
    assert report.status == "nan" and report.output_nlc is None


def test_models_that_average_over_the_batch():
    models = _models(_check("batch_average.py"))
    centred = _measure(models["BatchCentred"])
    assert centred.status == "ok" and centred.output_nlc >= 1.0
    pooled = _measure(models["BatchPooled"])
    assert pooled.status == "not-per-sample" and pooled.output_nlc is None


def test_global_state_changes_do_not_leak():
    rng = torch.get_rng_state()
    before = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads(),
              torch.are_deterministic_algorithms_enabled())
    result = _check("global_state.py")
    after = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads(),
             torch.are_deterministic_algorithms_enabled())
    assert after == before and torch.equal(torch.get_rng_state(), rng)
    # Within its own file the model's settings held: it was built in float64.
    (model,) = result.models
    assert model.graph["fc1"].params["weight"].dtype == "float64"
    assert not result.findings


def test_cli_json_stays_valid_over_the_awkward_folder():
    out = subprocess.run(
        [sys.executable, "-m", "archlint", "check", str(AWKWARD), "--output-format", "json", "-q", "--no-verify"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert out.returncode == 1, out.stderr  # ARC904 for the models that need inputs
    findings = json.loads(out.stdout)
    assert {f["code"] for f in findings} == {"ARC901", "ARC904"}
    assert {f["filename"].rsplit("/", 1)[-1] for f in findings if f["code"] == "ARC904"} == {
        "two_inputs.py", "keyword_only.py", "buffers_only.py"}
