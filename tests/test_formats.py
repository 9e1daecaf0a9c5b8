"""The machine-readable formats: SARIF, GitHub workflow commands, JUnit, and --statistics.

SARIF is validated against the official OASIS 2.1.0 schema for every fixture (found by
globbing, so new fixtures are covered) and checked field by field; columns are checked by
slicing the real source line with the rendered region, so an off-by-one cannot pass.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from archlint import cli, output, worker
from archlint.config import Settings
from archlint.engine import check_file
from archlint.graph import Span
from archlint.output import github, junit, sarif
from archlint.rule import Finding, registry
from conftest import FIXTURES, REPO

# The OASIS schema (errata 01); provenance in tests/data/SARIF-SCHEMA.md.
SCHEMA = json.loads((REPO / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
# Analysed in this process: the hostile corpus (endless loops, os._exit, segfaults) only
# ever runs in worker processes (test_sarif_of_the_hostile_corpus_validates below).
FIXTURE_FILES = sorted(p for p in FIXTURES.rglob("*.py") if "hostile" not in p.relative_to(FIXTURES).parts)


def schema_errors(log: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(log)]


@lru_cache(maxsize=None)
def findings_of(path: Path) -> tuple[Finding, ...]:
    # The static pass is enough for the formats; measured values are covered with findings
    # built directly below.
    return tuple(check_file(path, Settings(verify=False, show_dismissed=True)).findings)


def ctx(root: Path | str = REPO) -> output.Context:
    return output.Context(root=str(root), sources={})


def run_cli(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def some_rule(severity: str | None = None):
    """A registered rule that fails a run (of a severity, if given); the last one so that its
    index is not 0."""
    rules = [r for r in registry().values() if r.affects_exit and (severity is None or r.severity == severity)]
    return rules[-1]


def finding(path: Path, line: int, col: int, end_line: int | None, end_col: int | None, **kw) -> Finding:
    rule = kw.pop("rule", None) or some_rule()
    kw.setdefault("severity", rule.severity)
    kw.setdefault("status", "confirmed")
    return Finding(code=rule.code, name=rule.name, message=kw.pop("message", "a message"), span=Span(str(path), line, col, end_line, end_col), **kw)


# --- SARIF --------------------------------------------------------------------------------


def test_sarif_of_the_hostile_corpus_validates():
    """The hostile fixtures (endless loops, os._exit, segfaults) run in worker processes,
    as the CLI runs them; their diagnostics render to schema-valid SARIF too."""
    hostile = sorted((FIXTURES / "hostile").glob("*.py"))
    assert len(hostile) >= 15
    settings = Settings(verify=False, show_dismissed=True)
    with worker.Isolated(timeout=3.0, memory_limit=2**30, log_level=logging.WARNING, verify=False) as isolated:
        findings = [f for path in hostile for f in isolated.analyse(path, settings).findings]
    assert findings, "the hostile corpus must yield diagnostics"
    log = json.loads(sarif.render(findings, ctx()))
    assert schema_errors(log) == []
    assert len(log["runs"][0]["results"]) == len(findings)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_sarif_of_every_fixture_validates_against_the_official_schema(path):
    log = json.loads(sarif.render(list(findings_of(path)), ctx()))
    assert schema_errors(log) == []
    results = log["runs"][0]["results"]
    assert len(results) == len(findings_of(path))
    for res in results:
        loc = res["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc == {"uri": path.relative_to(REPO).as_posix(), "uriBaseId": "%SRCROOT%"}


def test_sarif_schema_uri_and_version_match_the_schema_file():
    log = json.loads(sarif.render([], ctx()))
    assert log["$schema"] == SCHEMA["id"]
    assert log["version"] == "2.1.0"


def test_sarif_empty_run_is_valid_with_all_rules():
    log = json.loads(sarif.render([], ctx()))
    assert schema_errors(log) == []
    run = log["runs"][0]
    assert run["results"] == []
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == list(registry())


def test_sarif_rules_describe_every_registered_rule():
    driver = json.loads(sarif.render([], ctx()))["runs"][0]["tool"]["driver"]
    assert driver["name"] == "archlint"
    assert driver["version"] == __import__("archlint").__version__
    assert driver["informationUri"].startswith("https://")
    levels = {"error": "error", "warning": "warning", "info": "note"}
    assert len(driver["rules"]) == len(registry())
    for descriptor, rule in zip(driver["rules"], registry().values()):
        assert descriptor["id"] == rule.code
        assert descriptor["name"] == rule.name
        assert descriptor["shortDescription"]["text"] == rule.summary
        full = descriptor["fullDescription"]["text"]
        # The "What it does" section of the rule doc, whitespace folded (cut with an
        # ellipsis at GitHub's 1024 characters).
        assert full and full.removesuffix("…") in " ".join(rule.doc.split())
        assert full != rule.summary or "## What it does" not in rule.doc
        assert len(full) <= 1024
        assert descriptor["help"]["markdown"] == rule.doc
        assert descriptor["helpUri"] == output.rule_url(rule.name)
        assert descriptor["defaultConfiguration"]["level"] == levels[rule.severity]


def test_sarif_result_fields_and_region_slice_the_reported_text(tmp_path):
    source = "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        self.fc = nn.Linear(8, 4)\n"
    path = tmp_path / "models" / "net.py"
    path.parent.mkdir()
    path.write_text(source)
    line_no = 6
    text = source.splitlines()[line_no - 1]
    target = "self.fc = nn.Linear(8, 4)"
    col = text.index(target)  # 0-based, as Span has it
    rule = some_rule()
    f = finding(path, line_no, col, line_no, col + len(target), rule=rule, message="deep stack", predicted=4.5, measured=3.25, threshold=3.0)
    log = json.loads(sarif.render([f], ctx(tmp_path)))
    assert schema_errors(log) == []
    run = log["runs"][0]
    (res,) = run["results"]
    assert res["ruleId"] == rule.code
    assert run["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == rule.code
    assert res["level"] == sarif.LEVELS[rule.severity]
    assert "kind" not in res
    assert res["message"] == {"text": "deep stack"}
    phys = res["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"] == {"uri": "models/net.py", "uriBaseId": "%SRCROOT%"}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"
    region = phys["region"]
    assert region["startLine"] == region["endLine"] == line_no
    # 1-based start, exclusive 1-based end: slicing the line gives back exactly the target.
    assert text[region["startColumn"] - 1 : region["endColumn"] - 1] == target
    assert region["startColumn"] == col + 1
    assert run["columnKind"] == "unicodeCodePoints"
    assert res["properties"] == {"status": "confirmed", "predicted": 4.5, "measured": 3.25, "threshold": 3.0}


def test_sarif_levels_dismissed_and_non_finite_values(tmp_path):
    path = tmp_path / "m.py"
    cases = [finding(path, 1, 0, 1, 3, rule=some_rule(), severity=s) for s in ("error", "warning", "info")]
    dismissed = finding(path, 2, 0, 2, 3, status="dismissed", measured=float("inf"), predicted=float("nan"))
    log = json.loads(sarif.render([*cases, dismissed], ctx(tmp_path)))
    assert schema_errors(log) == []
    results = log["runs"][0]["results"]
    assert [r["level"] for r in results[:3]] == ["error", "warning", "note"]
    # SARIF: a result whose kind is not "fail" must have level "none".
    assert results[3]["kind"] == "pass" and results[3]["level"] == "none"
    assert results[3]["properties"] == {"status": "dismissed"}


def test_sarif_spans_without_an_end_and_multi_line_spans(tmp_path):
    path = tmp_path / "m.py"
    whole_line = finding(path, 3, 0, None, None)
    multi = finding(path, 4, 4, 7, 0)
    log = json.loads(sarif.render([whole_line, multi], ctx(tmp_path)))
    assert schema_errors(log) == []
    regions = [r["locations"][0]["physicalLocation"]["region"] for r in log["runs"][0]["results"]]
    # No end: SARIF's default region runs to the end of the start line.
    assert regions[0] == {"startLine": 3, "startColumn": 1}
    assert regions[1] == {"startLine": 4, "startColumn": 5, "endLine": 7, "endColumn": 1}


def test_sarif_uris_are_percent_encoded_or_absolute_outside_the_root(tmp_path):
    inside = tmp_path / "root" / "my models" / "net#1.py"
    outside = tmp_path / "elsewhere" / "net.py"
    log = json.loads(sarif.render([finding(inside, 1, 0, 1, 1), finding(outside, 1, 0, 1, 1)], ctx(tmp_path / "root")))
    assert schema_errors(log) == []
    locs = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in log["runs"][0]["results"]]
    assert locs[0] == {"uri": "my%20models/net%231.py", "uriBaseId": "%SRCROOT%"}
    assert locs[1] == {"uri": outside.resolve().as_uri()}


def test_sarif_through_the_cli_has_repo_relative_uris(monkeypatch):
    monkeypatch.chdir(REPO)
    result = run_cli("check", "fixtures/ARC904", "--no-verify", "-q", "--output-format", "sarif")
    assert result.exit_code == 1
    log = json.loads(result.stdout)
    assert schema_errors(log) == []
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
    assert uris == {p.relative_to(REPO).as_posix() for p in (FIXTURES / "ARC904").glob("bad_*.py")}


@pytest.mark.parametrize("fmt", ["sarif", "junit", "json", "github"])
def test_no_model_files_still_gives_a_valid_document(tmp_path, fmt):
    (tmp_path / "plain.py").write_text("x = 1\n")
    result = run_cli("check", str(tmp_path / "plain.py"), "--output-format", fmt)
    assert result.exit_code == 0
    if fmt == "sarif":
        log = json.loads(result.stdout)
        assert schema_errors(log) == [] and log["runs"][0]["results"] == []
    elif fmt == "junit":
        assert ET.fromstring(result.stdout).get("failures") == "0"
    elif fmt == "json":
        assert json.loads(result.stdout) == []
    else:
        assert result.stdout == ""


# --- GitHub -------------------------------------------------------------------------------


def parse_workflow_command(line: str) -> tuple[str, dict[str, str], str]:
    """Read a command the way the Actions runner does (ActionCommand.cs): split, then unescape."""
    match = re.fullmatch(r"::(\w+) ([^:]*)::(.*)", line)
    assert match, line
    kind, props, data = match.groups()

    def unescape(s: str, prop: bool) -> str:
        pairs = [("%0D", "\r"), ("%0A", "\n")] + ([("%3A", ":"), ("%2C", ",")] if prop else []) + [("%25", "%")]
        for token, char in pairs:
            s = s.replace(token, char)
        return s

    fields = dict(kv.split("=", 1) for kv in props.split(","))
    return kind, {k: unescape(v, True) for k, v in fields.items()}, unescape(data, False)


def test_github_escapes_data_and_properties_like_the_toolkit(tmp_path):
    path = tmp_path / "odd,name: v2%.py"
    message = "NLC 100% over: layers 3, 4\nsecond line\r\nthird"
    f = finding(path, 3, 4, 3, 12, rule=some_rule(), severity="error", message=message, fix="add a skip: x + f(x)")
    line = github.render([f], ctx(tmp_path))
    assert line.endswith("\n") and line.count("\n") == 1
    line = line.rstrip("\n")
    # The raw command carries no newline, and no bare ':' or ',' inside a property value.
    assert "\r" not in line
    assert "file=odd%2Cname%3A v2%25.py," in line
    assert f"title={f.code} {f.name}::" in line
    assert "::NLC 100%25 over: layers 3, 4%0Asecond line%0D%0Athird [confirmed]%0Ahelp: add a skip: x + f(x)" in line
    kind, props, data = parse_workflow_command(line)
    assert kind == "error"
    assert props == {"file": path.name, "line": "3", "col": "5", "endLine": "3", "endColumn": "13", "title": f"{f.code} {f.name}"}
    assert data == f"{message} [confirmed]\nhelp: add a skip: x + f(x)"


def test_github_kinds_and_multi_line_spans(tmp_path):
    path = tmp_path / "m.py"
    findings = [
        finding(path, 1, 0, 1, 2, severity="error"),
        finding(path, 2, 0, 2, 2, severity="warning"),
        finding(path, 3, 0, 3, 2, severity="info"),
        finding(path, 4, 0, 4, 2, severity="error", status="dismissed"),
        finding(path, 5, 8, 9, 1, severity="warning"),
    ]
    parsed = [parse_workflow_command(line) for line in github.render(findings, ctx(tmp_path)).splitlines()]
    assert [kind for kind, _, _ in parsed] == ["error", "warning", "notice", "notice", "warning"]
    # Columns only for one-line spans (the toolkit refuses them otherwise).
    assert parsed[4][1] == {"file": "m.py", "line": "5", "endLine": "9", "title": f"{findings[4].code} {findings[4].name}"}


# --- JUnit --------------------------------------------------------------------------------


def test_junit_parses_with_counts_matching_the_findings():
    findings = [f for p in FIXTURE_FILES for f in findings_of(p)]
    assert findings, "the fixtures must yield findings"
    root = ET.fromstring(junit.render(findings, ctx()))
    assert root.tag == "testsuites"
    cases = root.findall("testsuite/testcase")
    failures = root.findall("testsuite/testcase/failure")
    failing = [f for f in findings if output.fails(f)]
    assert int(root.get("tests")) == len(cases) == len(findings)
    assert int(root.get("failures")) == len(failures) == len(failing)
    by_file = Counter(output.display_path(f.span.path, str(REPO)) for f in findings)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert {name: int(s.get("tests")) for name, s in suites.items()} == dict(by_file)
    for suite in suites.values():
        assert int(suite.get("failures")) == len(suite.findall("testcase/failure"))
    for case in cases:
        failure = case.find("failure")
        if failure is not None:
            assert case.get("name") == f"archlint.{failure.get('type')}"
            assert failure.get("message") and failure.text.startswith(f"line {case.get('line')}, col {case.get('column')},")


def test_junit_escapes_markup_and_drops_characters_xml_cannot_hold(tmp_path):
    f = finding(tmp_path / "m.py", 1, 0, 1, 1, message='<b>"x" & y</b> \x1b[31mred\x1b[0m', fix="use a < b")
    root = ET.fromstring(junit.render([f], ctx(tmp_path)))
    failure = root.find("testsuite/testcase/failure")
    assert failure.get("message").startswith('<b>"x" & y</b> ')
    assert "red" in failure.get("message") and "\x1b" not in failure.get("message")
    assert "help: use a < b" in failure.text


def test_junit_without_findings_has_one_passing_case():
    root = ET.fromstring(junit.render([], ctx()))
    assert (root.get("tests"), root.get("failures")) == ("1", "0")
    assert root.findall("testsuite/testcase/failure") == []


# --- --statistics -------------------------------------------------------------------------


def test_statistics_counts_per_code_match_the_findings(monkeypatch):
    monkeypatch.chdir(REPO)
    # One ARC900 and two ARC903: most-frequent-first differs from code order.
    target = ["fixtures/ARC900/bad_syntax_error.py", "fixtures/ARC903", "fixtures/example_model.py"]
    stats = run_cli("check", *target, "--no-verify", "-q", "--statistics")
    listed = run_cli("check", *target, "--no-verify", "-q", "--output-format", "json")
    assert stats.exit_code == listed.exit_code == 1
    expected = Counter(d["code"] for d in json.loads(listed.stdout))
    names = {d["code"]: d["name"] for d in json.loads(listed.stdout)}
    rows = [line.split("\t") for line in stats.stdout.splitlines()]
    assert {code.strip(): int(count) for count, code, _ in rows} == dict(expected)
    assert all(name == names[code.strip()] for _, code, name in rows)
    counts = [int(count) for count, _, _ in rows]
    assert counts == sorted(counts, reverse=True)
    codes = [code.strip() for _, code, _ in rows]
    assert codes != sorted(codes), "pick files whose counts are not already in code order"


# --- The documented VS Code task ------------------------------------------------------------


def test_documented_problem_matcher_reads_concise_output(monkeypatch):
    blocks = re.findall(r"```json\n(.*?)```", (REPO / "docs" / "output-formats.md").read_text(), re.S)
    (tasks,) = [json.loads(b) for b in blocks if "problemMatcher" in b]
    pattern = tasks["tasks"][0]["problemMatcher"]["pattern"]
    monkeypatch.chdir(REPO)
    result = run_cli("check", "fixtures/ARC904", "fixtures/ARC900/bad_syntax_error.py", "--no-verify", "-q", "--output-format", "concise")
    listed = json.loads(run_cli("check", "fixtures/ARC904", "fixtures/ARC900/bad_syntax_error.py", "--no-verify", "-q", "--output-format", "json").stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == len(listed) >= 2
    for line, item in zip(lines, listed):
        match = re.match(pattern["regexp"], line)
        assert match, line
        group = lambda name: match.group(pattern[name])  # noqa: E731
        assert Path(group("file")).resolve() == Path(item["filename"])
        assert (int(group("line")), int(group("column"))) == (item["location"]["row"], item["location"]["column"])
        assert group("code") == item["code"]
        assert group("message").startswith(item["message"])


def test_fixes_in_sarif_validate_and_in_json_follow_ruff(tmp_path):
    """A verified fix becomes a SARIF ``fixes`` entry (artifactChanges with replacements)
    that validates against the schema, and ruff's JSON ``fix`` object; a suggestion is
    JSON's ``display-only`` and no SARIF fix."""
    from archlint.fix.edits import Fix, apply_edits, line_edits
    from archlint.output import json_format

    source = "import torch.nn as nn\nhead = nn.Linear(8, 4)\nnn.init.normal_(head.weight, std=1.0)\n"
    fixed = source.replace("std=1.0", "std=0.35")
    path = tmp_path / "net.py"
    path.write_text(source)
    fix = Fix("initialise head with gain 1", line_edits(source, fixed), verified=True, outcome="fix verified: NLC 2 -> 1.1")
    verified = finding(path, 3, 0, 3, 38, autofix=fix)
    suggestion = finding(path, 2, 0, 2, 22, autofix=Fix("a suggestion", fix.edits, outcome="not verified: the fix raises ARC103"))
    log = json.loads(sarif.render([verified, suggestion], ctx(tmp_path)))
    assert schema_errors(log) == []
    with_fix, without = log["runs"][0]["results"]
    assert "fixes" not in without
    (change,) = with_fix["fixes"][0]["artifactChanges"]
    assert change["artifactLocation"] == {"uri": "net.py", "uriBaseId": "%SRCROOT%"}
    (replacement,) = change["replacements"]
    assert replacement["deletedRegion"] == {"startLine": 3, "startColumn": 1, "endLine": 4, "endColumn": 1}
    assert replacement["insertedContent"]["text"] == "nn.init.normal_(head.weight, std=0.35)\n"
    assert with_fix["fixes"][0]["description"]["text"] == "initialise head with gain 1 (fix verified: NLC 2 -> 1.1)"

    data = json.loads(json_format.render([verified, suggestion], ctx(tmp_path)))
    assert data[0]["fix"]["applicability"] == "safe"
    assert data[1]["fix"]["applicability"] == "display-only"
    (edit,) = data[0]["fix"]["edits"]
    assert edit == {"content": replacement["insertedContent"]["text"], "location": {"row": 3, "column": 1}, "end_location": {"row": 4, "column": 1}}
    # The JSON edits, applied (columns back to 0-based), give the fixed file.
    assert apply_edits(source, fix.edits) == fixed
