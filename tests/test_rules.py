"""The rule catalogue: metadata, documentation, fixtures, and the structural queries rules share."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from archlint.cli import main
from archlint.rule import CODE_RE, DOC_SECTIONS, NAME_RE, registry
from conftest import FIXTURES

RULES = sorted(registry().values(), key=lambda r: r.code)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_rule_doc_has_every_section_in_order(rule):
    headings = re.findall(r"^## (.+)$", rule.doc, flags=re.M)
    assert headings == list(DOC_SECTIONS), f"{rule.code}: sections {headings}"
    for section in re.split(r"^## .+$", rule.doc, flags=re.M)[1:]:
        assert section.strip(), f"{rule.code} has an empty section"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_rule_metadata_and_fixtures(rule):
    assert CODE_RE.match(rule.code) and NAME_RE.match(rule.name)
    assert rule.summary and not rule.summary.endswith(".")
    assert list((FIXTURES / rule.code).glob("bad_*.py")), f"{rule.code} has no bad_ fixture"
    if not rule.is_meta:
        assert list((FIXTURES / rule.code).glob("good_*.py")), f"{rule.code} has no good_ fixture"
        # Every option is documented under Options.
        options_doc = rule.doc.split("## Options", 1)[1].split("## References", 1)[0]
        for option in rule.options:
            assert f"``{option}``" in options_doc, f"{rule.code}: option {option} is not documented"


def test_codes_and_names_are_unique():
    assert len({r.code for r in RULES}) == len(RULES)
    assert len({r.name for r in RULES}) == len(RULES)


def test_rule_command_prints_the_doc():
    result = CliRunner().invoke(main, ["rule", "ARC103"])
    assert result.exit_code == 0
    assert "deep-plain-stack" in result.output
    for section in DOC_SECTIONS:
        assert f"## {section}" in result.output
