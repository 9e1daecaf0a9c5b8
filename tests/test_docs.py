"""The documentation: rule pages generated from the rule docstrings, URLs that reach them,
and links between the pages that resolve."""

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


def test_links_between_pages_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert len(pages) > 10
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor})")
    assert not broken, broken


def _anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_example_is_what_archlint_prints(monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Example", 1)[1]
    (shown,) = re.findall(r"^```\n(fixtures/example_model.py:.*?)```", example, re.S | re.M)
    monkeypatch.chdir(REPO)
    # On the CPU, as the README's numbers were measured; the seed fixes the init.
    result = CliRunner().invoke(cli.main, ["check", "fixtures/example_model.py", "--device", "cpu", "--no-cache", "-q"])
    assert result.exit_code == 1, result.output
    assert shown in result.stdout
    # The intro's one-line example is the same finding's first line.
    assert shown.splitlines()[0] in readme.split("## Quick start", 1)[0]


def test_readme_is_a_landing_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    # .ci/run runs exactly the README's test command.
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in readme
