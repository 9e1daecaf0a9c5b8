"""How static findings become what the user sees: questions only a measurement can answer,
specific findings replacing ARC101, messages with both numbers, reproducible inits."""

from __future__ import annotations

from archlint.config import Settings
from archlint.engine import check_file
from archlint.rule import get
from conftest import FIXTURES

EXAMPLE = FIXTURES / "example_model.py"
LENET = FIXTURES / "architectures" / "good_lenet.py"


def test_a_question_for_the_measurement_is_not_a_finding_without_one():
    # LeNet's max pooling is not predicted: ARC201 (no BatchNorm) asks the measurement, which
    # answers: confirmed at the study's threshold, dismissed at the one before it (0.98). The
    # measurement also finds ARC203's decay, which nothing predicted.
    assert check_file(LENET, Settings(verify=False)).findings == []
    measured = {f.code: f for f in check_file(LENET, Settings(show_dismissed=True)).findings}
    assert set(measured) == {"ARC201", "ARC203"}
    assert measured["ARC201"].status == "confirmed" and measured["ARC201"].measured > 0.711
    assert measured["ARC203"].status == "confirmed" and measured["ARC203"].found_by_measurement
    before = check_file(LENET, Settings(show_dismissed=True, select=("ARC201",),
                                        rule_options={"collapsing-domain": {"threshold": 0.98}})).findings
    assert before and all(f.status == "dismissed" and 0.711 < f.measured < 0.98 for f in before)


def test_a_specific_finding_replaces_arc101_unless_it_is_not_selected():
    def codes(**kw):
        result = check_file(EXAMPLE, Settings(verify=False, model="DeepPlainMLP()", **kw))
        return {f.code for f in result.findings}

    assert "ARC103" in codes() and "ARC101" not in codes()
    assert "ARC101" in codes(ignore=("ARC103",))


def test_message_carries_the_value_prediction_and_threshold():
    (finding,) = check_file(EXAMPLE, Settings(model="DeepPlainMLP()", select=("ARC103",))).findings
    assert finding.status == "confirmed"
    assert "{value}" not in finding.message
    assert f"compound to NLC {finding.measured:.3g}" in finding.message
    assert finding.message.endswith(f"(predicted {finding.predicted:.3g}; threshold {get('ARC103').options['threshold']:g})")
    assert abs(finding.measured / finding.predicted - 1) < 0.15


def test_models_are_built_from_the_seed_so_runs_repeat():
    path = FIXTURES / "ARC103" / "bad_bn_relu_stack.py"

    def predicted(seed):
        (f,) = [f for f in check_file(path, Settings(verify=False, seed=seed)).findings if f.code == "ARC103"]
        return f.predicted

    first = predicted(0)
    assert predicted(0) == first
    assert predicted(1) != first


def test_a_value_beside_its_threshold_never_reads_as_equal_to_it():
    from archlint.graph import Span
    from archlint.rule import Finding, compose

    def message(status, measured):
        f = Finding(code="ARC403", message="block NLC {value}", span=Span("net.py", 1), status=status,
                    predicted=1.31, measured=measured, threshold=1.3)
        return compose(f).message

    # 3 significant digits would print "measured 1.3; threshold 1.3 [dismissed]".
    assert message("dismissed", 1.2996) == "block NLC 1.31 (measured 1.2996; threshold 1.3)"
    assert message("confirmed", 1.3004) == "block NLC 1.3004 (predicted 1.31; threshold 1.3)"
    assert message("confirmed", 1.45) == "block NLC 1.45 (predicted 1.31; threshold 1.3)"


def test_a_finding_the_static_pass_could_not_predict_states_its_measured_value():
    from archlint.graph import Span
    from archlint.rule import Finding, compose

    def message(status, measured):
        f = Finding(code="ARC101", message="Net has NLC {value}", span=Span("net.py", 1), status=status,
                    predicted=None, measured=measured, threshold=100.0)
        return compose(f).message

    # Was "Net has NLC (not predicted) (measured 39; threshold 100)" when dismissed.
    assert message("dismissed", 39.0) == "Net has NLC 39 (measured; not predicted; threshold 100)"
    assert message("confirmed", 127.0) == "Net has NLC 127 (measured; not predicted; threshold 100)"
