"""The rule pages, generated from the rule docstrings, and the URLs that reach them."""

from __future__ import annotations

import re

from click.testing import CliRunner

from archlint import cli, ruledocs
from archlint.config import DEFAULT_SELECT
from archlint.output import HOMEPAGE, rule_url
from archlint.rule import registry
from conftest import REPO

RULE_DOCS = REPO / "docs" / "rules"
REGENERATE = "run `python -m archlint.ruledocs` from the repository root and commit docs/rules/"


def test_committed_rule_pages_are_current():
    expected = ruledocs.render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in RULE_DOCS.glob("*.md")}
    assert sorted(committed) == sorted(expected), f"docs/rules/ has stale or missing pages: {REGENERATE}"
    for name, text in expected.items():
        assert committed[name] == text, f"docs/rules/{name} differs from the rule's docstring: {REGENERATE}"


def test_rule_pages_are_what_archlint_rule_prints():
    for rule in registry().values():
        result = CliRunner().invoke(cli.main, ["rule", rule.code])
        assert result.exit_code == 0, result.output
        assert result.stdout == (RULE_DOCS / ruledocs.filename(rule)).read_text(encoding="utf-8")


def test_every_rule_url_is_its_generated_page():
    for rule in registry().values():
        url = rule_url(rule.name)
        assert url.startswith(HOMEPAGE + "/"), url
        # The site mirrors docs/: <HOMEPAGE>/rules/<name> is docs/rules/<name>.md.
        page = REPO / "docs" / (url.removeprefix(HOMEPAGE + "/") + ".md")
        assert page.is_file(), f"{url}: no page {page.relative_to(REPO)}; {REGENERATE}"
        assert page.read_text(encoding="utf-8").startswith(f"# {rule.code} {rule.name} ("), page


def test_rule_index_lists_every_rule_with_its_default():
    rows = {}
    for line in (RULE_DOCS / "index.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (ARC\d{3}) \| \[([a-z0-9-]+)\]\(([^)]+)\) \| (\w+) \| (yes|no) \|", line)
        if m:
            rows[m.group(1)] = m.groups()[1:]
    reg = registry()
    assert sorted(rows) == sorted(reg)
    for code, (name, target, severity, on) in rows.items():
        assert (name, target, severity) == (reg[code].name, f"{reg[code].name}.md", reg[code].severity)
        assert (RULE_DOCS / target).is_file()
        assert on == ("yes" if code.startswith(DEFAULT_SELECT) else "no"), code
