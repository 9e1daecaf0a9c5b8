"""Verified fixes: `archlint check --fix` on the bad fixtures makes exactly the committed diff
(fixtures/<CODE>/<name>.fix.diff beside the fixture), keeps every other byte, leaves nothing
of that rule, and a second --fix has nothing left to do; a fix whose verification fails is
not applied; files are written atomically with their line endings and refused when they
changed. Regenerate the .fix.diff files with `--regen-fixtures`, then review them.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil

import libcst
import pytest
from click.testing import CliRunner

from archlint import cli, worker
from archlint.config import Settings, UsageError, load_config
from archlint.engine import check_file
from archlint.fix import apply
from archlint.fix.edits import Edit, Fix, line_edits, source_hash
from archlint.rule import registry
from conftest import FIXTURES, fixture_fields

# (fixture, the rule it is about, the findings allowed to stand after --fix). Each --fix
# verifies by checking and measuring an edited copy: a few seconds per fixture.
CASES = [
    ("ARC301/bad_relu_on_logits.py", "ARC301", set()),
    ("ARC303/bad_small_batch_mlp.py", "ARC303", set()),
    ("ARC303/bad_tiny_batch_mlp.py", "ARC303", set()),
    ("ARC104/bad_saturated_tanh.py", "ARC104", set()),
    ("ARC205/bad_hot_head.py", "ARC205", set()),
    ("ARC409/bad_hot_head_bn_mlp.py", "ARC409", set()),
    ("ARC403/bad_unscaled_branches.py", "ARC403", set()),
    ("ARC103/bad_bn_relu_stack.py", "ARC103", set()),
    # The README's architectures: each becomes a model archlint passes.
    # (architectures/bad_relu_on_logits.py is ARC301/bad_relu_on_logits.py byte for byte:
    # test_the_architecture_relu_on_logits_is_the_arc301_fixture.)
    ("architectures/bad_hot_tanh_mlp.py", "ARC104", set()),
    # ConfigurableMLP needs its arguments (ARC903 says how): not something to fix.
    ("example_model.py", "ARC103", {"ARC903"}),
    # VGG-19 becomes VGG-19-BN; about a minute, so only on request.
    pytest.param(
        ("architectures/bad_vgg19_no_bn.py", "ARC201", set()),
        marks=pytest.mark.skipif(not os.environ.get("ARCHLINT_SLOW_TESTS"), reason="slow: set ARCHLINT_SLOW_TESTS=1"),
        id="architectures/bad_vgg19_no_bn.py",
    ),
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """--no-isolation prepares this process as a worker, with a thread per core: on a
    shared machine two threads make the measurements many times slower (conftest)."""
    monkeypatch.setattr(worker, "prepare_process", lambda: None)


def fixture_options(path) -> list[str]:
    """The command-line options for the settings a fixture asks for (conftest.fixture_fields)."""
    values = [(key, v) for key, value in fixture_fields(path).items() for v in (value if isinstance(value, list) else [value])]
    return [arg for key, value in values for arg in (f"--{key.replace('_', '-')}", str(value))]


def run(*args: str):
    return CliRunner().invoke(cli.main, ["check", *args, "--no-isolation", "-n"], catch_exceptions=False)


def unified(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_fix_makes_the_expected_diff_and_leaves_nothing_of_the_rule(tmp_path, case, regen):
    rel, code, allowed = case
    original = FIXTURES / rel
    path = tmp_path / original.name
    shutil.copy(original, path)
    before = path.read_text()
    # A rule's fixture: only its rule (and the meta diagnostics), since other rules may also
    # report the model at their calibrated thresholds and their fixes are their own fixtures'
    # business. The README's models: every rule, as a user runs it.
    only = ["--select", f"{code},ARC9"] if rel.startswith("ARC") else []
    result = run("--fix", "-q", "--output-format", "json", *only, *fixture_options(original), str(path))
    after = path.read_text()
    got = unified(before, after, rel)
    expected = original.with_name(original.stem + ".fix.diff")
    if regen:
        expected.write_text(got)
    assert got, f"--fix changed nothing in {rel}"
    assert got == expected.read_text(), f"{rel}: the fix differs from {expected.name}"
    # Every comment of the file survives the rewrite.
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert all(c in after for c in comments)
    # What --fix reports is the re-check of the fixed file.
    left = json.loads(result.output)
    standing = {f["code"] for f in left if f["status"] != "dismissed"}
    assert code not in standing and standing <= allowed, standing
    # Idempotence: the re-check proposes no verified fix, so a second --fix changes nothing.
    assert not [f for f in left if f["fix"] and f["fix"]["applicability"] == "safe"]
    assert result.exit_code == (1 if allowed else 0)


def test_the_architecture_relu_on_logits_is_the_arc301_fixture():
    assert (FIXTURES / "architectures" / "bad_relu_on_logits.py").read_bytes() == (FIXTURES / "ARC301" / "bad_relu_on_logits.py").read_bytes()


def test_a_second_fix_changes_nothing(tmp_path):
    path = tmp_path / "bad_hot_head.py"
    shutil.copy(FIXTURES / "ARC205" / "bad_hot_head.py", path)
    first = run("--fix", "--show-fixes", "-q", "--output-format", "json", str(path))
    assert first.exit_code == 0
    # The list of what was fixed goes to stderr: stdout stays valid JSON.
    assert json.loads(first.stdout) == []
    assert "Fixed 1 finding:" in first.stderr and "1 x ARC205 (output-scale)" in first.stderr
    fixed = path.read_bytes()
    result = run("--fix", "--output-format", "concise", str(path))
    assert result.exit_code == 0
    assert path.read_bytes() == fixed
    assert "fixed 0" in result.stderr


def test_diff_prints_the_fix_changes_nothing_and_exits_1(tmp_path):
    original = FIXTURES / "ARC205" / "bad_hot_head.py"
    path = tmp_path / original.name
    shutil.copy(original, path)
    result = run("--diff", str(path))
    assert result.exit_code == 1
    assert path.read_bytes() == original.read_bytes()
    # The same lines as the committed diff, under this file's display path.
    body = lambda text: [l for l in text.splitlines() if not l.startswith(("---", "+++"))]  # noqa: E731
    assert body(result.stdout) == body((FIXTURES / "ARC205" / "bad_hot_head.fix.diff").read_text())


def test_diff_of_a_clean_file_is_empty_and_exits_0(tmp_path):
    path = tmp_path / "good_default_head.py"
    shutil.copy(FIXTURES / "ARC205" / "good_default_head.py", path)
    result = run("--diff", str(path))
    assert result.exit_code == 0 and result.stdout == ""


def test_a_fix_whose_verification_fails_is_not_applied(tmp_path):
    """BatchNorm before the ReLUs removes ARC201's collapse but makes the 20-layer plain
    stack too nonlinear (ARC103): the check of the edited copy says so, and the fix stays a
    suggestion."""
    original = FIXTURES / "ARC201" / "bad_default_init_relu.py"
    path = tmp_path / original.name
    shutil.copy(original, path)
    result = run("--fix", "-q", "--output-format", "json", str(path))
    assert path.read_bytes() == original.read_bytes()
    arc201 = next(f for f in json.loads(result.output) if f["code"] == "ARC201")
    assert arc201["fix"]["applicability"] == "display-only"
    assert "not verified: the fix raises ARC103" in arc201["fix"]["message"]
    assert arc201["fix"]["edits"], "the suggestion still shows its edit"
    assert result.exit_code == 1


def test_unfixable_rules_get_no_fix():
    path = FIXTURES / "ARC205" / "bad_hot_head.py"
    # ARC205 only: the model's growth is ARC202's too, at its calibrated threshold.
    result = check_file(path, Settings(fixes=True, unfixable=("ARC2",), select=("ARC205",)))
    assert [f.code for f in result.findings] == ["ARC205"]
    assert result.findings[0].autofix is None
    result = check_file(path, Settings(fixes=True, fixable=("ARC1",), select=("ARC205",)))
    assert result.findings[0].autofix is None


def test_fixable_and_unfixable_config_keys_are_validated(tmp_path):
    config = tmp_path / "archlint.toml"
    loaded = load_config(config, {"fixable": ["ARC1"], "unfixable": ["ARC403"]}, registry())
    settings = Settings(**loaded.values)
    assert settings.is_fixable("ARC103") and not settings.is_fixable("ARC403") and not settings.is_fixable("ARC301")
    with pytest.raises(UsageError, match="unfixable"):
        load_config(config, {"unfixable": ["ARC7"]}, registry())


def test_verified_fixes_state_the_measured_values():
    result = check_file(FIXTURES / "ARC104" / "bad_saturated_tanh.py", Settings(fixes=True))
    (f,) = result.findings
    assert f.autofix.verified and f.autofix.apply_now
    assert f.autofix.outcome.startswith("fix verified: NLC ")
    assert "activation-operating-point" in f.autofix.outcome
    assert f.autofix.source_hash == source_hash((FIXTURES / "ARC104" / "bad_saturated_tanh.py").read_bytes())


def test_no_verify_leaves_fixes_as_suggestions(tmp_path):
    original = FIXTURES / "ARC205" / "bad_hot_head.py"
    path = tmp_path / original.name
    shutil.copy(original, path)
    result = run("--fix", "--no-verify", "-q", "--output-format", "json", "--select", "ARC205", str(path))
    assert path.read_bytes() == original.read_bytes()
    (f,) = json.loads(result.output)
    assert f["fix"]["applicability"] == "display-only"


# -- applying edits ----------------------------------------------------------------------


def fix_for(path, old: str, new: str) -> Fix:
    return Fix("m", line_edits(old, new), verified=True, source_hash=source_hash(path.read_bytes()), apply_now=True)


def test_apply_keeps_crlf_line_endings(tmp_path):
    path = tmp_path / "m.py"
    path.write_bytes(b"a = 1\r\nb = 2\r\nc = 3\r\n")
    assert apply.write(path, [fix_for(path, "a = 1\nb = 2\nc = 3\n", "a = 1\nb = 20\nbb = 3\nc = 3\n")])
    assert path.read_bytes() == b"a = 1\r\nb = 20\r\nbb = 3\r\nc = 3\r\n"
    assert not list(tmp_path.glob(".m.py.*")), "no temporary file is left behind"


def test_apply_refuses_a_file_changed_since_the_analysis(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("a = 1\n")
    fix = fix_for(path, "a = 1\n", "a = 2\n")
    path.write_text("a = 3\n")
    with pytest.raises(apply.NotApplied, match="changed since it was analysed"):
        apply.write(path, [fix])
    assert path.read_text() == "a = 3\n"


def test_apply_refuses_mixed_line_endings(tmp_path):
    path = tmp_path / "m.py"
    path.write_bytes(b"a = 1\r\nb = 2\n")
    with pytest.raises(apply.NotApplied, match="mixes line endings"):
        apply.write(path, [fix_for(path, "a = 1\nb = 2\n", "a = 1\nb = 3\n")])


def test_overlapping_edits_are_rejected():
    from archlint.fix.edits import apply_edits

    with pytest.raises(ValueError):
        apply_edits("a\nb\n", [Edit("x\n", 1, 0, 2, 0), Edit("y\n", 1, 0, 3, 0)])


def test_the_cli_refuses_diff_with_fix(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import torch\n")
    result = CliRunner().invoke(cli.main, ["check", "--diff", "--fix", str(path)])
    assert result.exit_code == 2


# -- the fixers keep the file's syntax ---------------------------------------------------


def _parses(text: str) -> bool:
    try:
        compile(text, "<fixture>", "exec")
    except SyntaxError:
        return False
    return True


@pytest.mark.parametrize("path", sorted(p for p in FIXTURES.rglob("*.py") if _parses(p.read_text(encoding="utf-8"))), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_libcst_round_trips_every_fixture_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    assert libcst.parse_module(text).code == text


# -- the fixers' arithmetic and edits, without a model -----------------------------------


def test_leaky_relu_layer_nlc_and_its_inverse():
    from archlint.fix.leaky_slope import layer_nlc, slope_for

    # BN-ReLU's 1.211 per layer (the rule's documented rate); a linear unit is 1.
    assert layer_nlc(0.0) == pytest.approx(1.211, abs=1e-3)
    assert layer_nlc(1.0) == pytest.approx(1.0)
    for slope in (0.1, 0.38, 0.51, 0.9):
        assert slope_for(layer_nlc(slope)) == pytest.approx(slope, abs=1e-9)
    assert slope_for(1.3) is None  # more nonlinear than a ReLU: no slope gets there


def test_branch_scale_brings_the_block_halfway_to_the_threshold():
    from archlint.fix.branch_scale import alpha

    block, ratio, threshold = 1.48, 1.0, 1.3
    a = alpha(block, ratio, threshold)
    k = 1 / ratio
    branch_sq = block**2 * (k**2 + 1) - k**2
    scaled = ((k / a) ** 2 + branch_sq) / ((k / a) ** 2 + 1)
    # Rounded down to two digits: at or just below 1.15.
    assert 1.1 < scaled**0.5 <= 1.15
    assert alpha(1.1, 1.0, 1.3) is None  # already within halfway


def test_groupnorm_keeps_eps_and_affine_and_drops_momentum():
    import libcst as cst

    from archlint.fix.groupnorm import _group_norm, _groups

    call = cst.parse_expression("nn.BatchNorm2d(c, 1e-3, 0.1, False, track_running_stats=True)")
    new = _group_norm("nn", call, _groups(48))
    assert cst.Module([]).code_for_node(new) == "nn.GroupNorm(24, c, eps=1e-3, affine=False)"
    call = cst.parse_expression("nn.BatchNorm1d(num_features=64, momentum=0.01)")
    assert cst.Module([]).code_for_node(_group_norm("nn", call, 1)) == "nn.GroupNorm(1, 64)"
    assert _groups(64) == 32 and _groups(48) == 24 and _groups(7) == 7


FUNCTIONAL = '''import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)
        self.out_act = nn.ReLU()

    def forward(self, x, functional: bool = True):
        x = F.relu(self.fc1(x))
        return F.relu(self.fc2(x))  # logits
'''


@pytest.mark.parametrize("forward, fixed", [
    ("        return F.relu(self.fc2(x))  # logits\n", "        return self.fc2(x)  # logits\n"),
    ("        return self.out_act(self.fc2(x))\n", "        return self.fc2(x)\n"),
], ids=["functional", "attribute"])
def test_activation_on_logits_in_forward_is_removed(tmp_path, forward, fixed):
    path = tmp_path / "net.py"
    source = FUNCTIONAL.replace("        return F.relu(self.fc2(x))  # logits\n", forward)
    path.write_text(source)
    (f,) = check_file(path, Settings(fixes=True)).findings
    assert f.code == "ARC301" and f.autofix.verified, f.autofix
    _, new, _ = apply.fixed_text(path, [f.autofix])
    expected = source.replace(forward, fixed)
    if "out_act(" in forward:
        # The module's assignment goes with its only use.
        expected = expected.replace("        self.out_act = nn.ReLU()\n", "")
    assert new == expected


def test_the_rule_command_says_whether_a_fix_exists():
    from archlint.fix.registry import FIXERS

    assert set(FIXERS) == {"ARC103", "ARC104", "ARC201", "ARC205", "ARC301", "ARC303", "ARC403", "ARC409"}
    text = CliRunner().invoke(cli.main, ["rule", "ARC301"]).output
    assert "Fix is sometimes available." in text
    assert "Fix is not available." in CliRunner().invoke(cli.main, ["rule", "ARC101"]).output
    data = json.loads(CliRunner().invoke(cli.main, ["rule", "--all", "--output-format", "json"]).output)
    assert {r["code"] for r in data if r["fix_availability"] == "Sometimes"} == set(FIXERS)


def test_a_worker_that_times_out_while_verifying_fixes_keeps_its_findings(tmp_path):
    """The edited copy hangs when imported: the file's findings stay, without fixes."""
    import logging

    from archlint.worker import Isolated

    source = (FIXTURES / "ARC205" / "bad_hot_head.py").read_text()
    hang = 'import time\nif "archlint-fix-" in __file__:\n    time.sleep(600)\n'
    path = tmp_path / "hot_head.py"
    path.write_text(source.replace("import torch.nn as nn\n", "import torch.nn as nn\n" + hang, 1))
    with Isolated(timeout=25.0, log_level=logging.WARNING) as isolated:
        result = isolated.analyse(path, Settings(fixes=True, select=("ARC205",)))
    assert result.failure and "time" in result.failure
    (f,) = result.findings
    assert f.code == "ARC205" and f.status == "confirmed" and f.autofix is None
