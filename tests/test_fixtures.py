"""Every fixture model yields exactly the findings in its .expected file.

fixtures/<CODE>/bad_*.py must yield <CODE> confirmed; fixtures/<CODE>/good_*.py must yield
nothing; fixtures/<CODE>/dismissed_*.py must yield <CODE> dismissed by the measurement and
nothing that stands. fixtures/architectures/ holds well-known architectures written as
fixtures of our own: good_* yield nothing, bad_* the findings in their .expected. The
.expected file beside each fixture holds one `line:col CODE status` per finding (columns
1-based, as users see them), dismissed ones included. Regenerate after an intended change with
`python -m pytest tests/test_fixtures.py --regen-fixtures`, then review the diff.
"""

from __future__ import annotations

import pytest

from archlint.config import Settings
from archlint.engine import check_file
from archlint.output import fails
from conftest import FIXTURES, fixture_fields

CASES = sorted(
    p for pattern in ("ARC*/*.py", "architectures/*.py") for p in FIXTURES.glob(pattern)
    if p.name.startswith(("bad_", "good_", "dismissed_"))
)


def render_expected(findings) -> str:
    # Meta diagnostics (ARC9xx) have no measurement status: "-".
    return "".join(f"{f.span.line}:{f.span.col + 1} {f.code} {f.status or '-'}\n" for f in findings)


def fixture_settings(path) -> Settings:
    """Settings(show_dismissed=True), plus the fields the fixture asks for (conftest.fixture_fields)."""
    return Settings(show_dismissed=True, **fixture_fields(path))


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture(path, regen):
    code = path.parent.name
    result = check_file(path, fixture_settings(path))
    got = render_expected(result.findings)
    expected_file = path.with_suffix(".expected")
    if regen:
        expected_file.write_text(got)
    assert expected_file.exists(), f"{expected_file} is missing: run with --regen-fixtures and review it"
    assert got == expected_file.read_text(), f"{path}: findings differ from {expected_file.name}"
    # What fails a run: not dismissed, and not an informational diagnostic (ARC901, ARC905).
    standing = [f for f in result.findings if fails(f)]
    if path.name.startswith("good_"):
        assert not standing, f"{path.name} must yield nothing"
    elif code.startswith("ARC"):
        if path.name.startswith("bad_"):
            # A rule's finding is confirmed by the measurement; a meta diagnostic has no status.
            want = None if code.startswith("ARC9") else "confirmed"
            assert any(f.code == code and f.status == want for f in result.findings), f"{path.name} must yield {code} {want or ''}"
        else:
            assert any(f.code == code and f.status == "dismissed" for f in result.findings), f"{path.name} must yield {code} dismissed"
            assert not standing, f"{path.name} must yield nothing that stands"
    else:
        assert standing, f"{path.name} must yield a finding"


def test_every_rule_has_fixtures():
    from archlint.rule import registry

    for code in registry():
        folder = FIXTURES / code
        assert list(folder.glob("bad_*.py")), f"{code} has no bad_ fixture"
