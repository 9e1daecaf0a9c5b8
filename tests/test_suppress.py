"""Suppression comments and ARC902 (unused suppression)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from archlint import cli, engine, suppress
from archlint.config import Settings
from archlint.graph import Span
from archlint.rule import Finding
from conftest import FIXTURES

FLATTEN = (FIXTURES / "ARC904" / "bad_wrong_flatten_size.py").read_text()
FAILING_LINE = "        return self.fc(h.flatten(1))"  # line 15, where ARC904 points
NEEDS_ARGS = (FIXTURES / "ARC903" / "bad_needs_arguments.py").read_text()


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def check(tmp_path: Path, source: str, *args: str) -> tuple[list[dict], int]:
    path = tmp_path / "net.py"
    path.write_text(source)
    result = run("check", str(path), "--no-verify", "--output-format", "json", *args)
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout), result.exit_code


def edit(source: str, old: str, new: str) -> str:
    assert source.count(old) == 1, old
    return source.replace(old, new)


def finding(code: str, line: int, status: str = "confirmed") -> Finding:
    return Finding(code, "m", Span("f.py", line, 4), status=status)


# -- parsing -------------------------------------------------------------------------------

def test_parse_forms_positions_and_what_is_not_a_directive():
    source = textwrap.dedent('''\
        import torch  # noqa: ARC904, E501,ARC903 because reasons
        x = "# noqa: ARC900"  # a string is not a comment
        y = 1  # noqa
        z = 2  # NOQA:ARC901
        w = 3  # noqa: E501
        v = 4  # type: ignore  # archlint: ignore[ARC904]
        # archlint: file-ignore[ARC903]
    ''')
    ds = suppress.parse(source)
    got = [(d.kind, d.line, [c.code for c in d.codes], d.lines) for d in ds]
    assert got == [
        ("noqa", 1, ["ARC904", "ARC903"], (1, 1)),   # E501 belongs to another tool
        ("noqa", 4, ["ARC901"], (4, 4)),             # `noqa` is case-insensitive, codes are not
        ("ignore", 6, ["ARC904"], (6, 6)),           # trailing: that line
        ("file-ignore", 7, ["ARC903"], None),
    ]
    first = ds[0]
    # 0-based columns of the directive and of each code, for ARC902's location.
    assert source.splitlines()[0][first.col:].startswith("# noqa: ARC904")
    assert [source.splitlines()[0][c.col:c.col + 6] for c in first.codes] == ["ARC904", "ARC903"]


def test_own_line_ignore_covers_the_whole_next_simple_statement():
    source = textwrap.dedent('''\
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                # archlint: ignore[ARC103]

                self.layers = nn.Sequential(
                    nn.Linear(8, 8),
                    nn.Tanh(),
                )
                self.head = nn.Linear(8, 2)
    ''')
    (d,) = suppress.parse(source)
    assert d.lines == (9, 12)
    kept = suppress.apply([finding("ARC103", line) for line in (8, 9, 10, 12, 13)], [d])
    assert [f.span.line for f in kept] == [8, 13]


def test_own_line_ignore_covers_only_the_header_of_a_compound_statement():
    source = textwrap.dedent('''\
        import functools
        # archlint: ignore[ARC903]
        @functools.lru_cache(
            maxsize=None,
        )
        def build(
            width,
        ):
            return width
        # archlint: ignore[ARC904]
    ''')
    header, at_end = suppress.parse(source)
    assert header.lines == (3, 8)  # decorators and the signature, not the body
    assert at_end.lines == (10, 10)  # nothing follows: it covers nothing


def test_a_comment_inside_brackets_covers_the_next_line():
    source = "layers = [\n    # archlint: ignore[ARC103]\n    make(1),\n    make(2),\n]\n"
    (d,) = suppress.parse(source)
    assert d.lines == (3, 3)


def test_a_file_that_does_not_tokenize_keeps_the_comments_before_the_error():
    source = "x = 1  # noqa: ARC900\ny = '''unterminated\n"
    assert [(d.line, d.codes[0].code) for d in suppress.parse(source)] == [(1, "ARC900")]


# -- end to end ----------------------------------------------------------------------------

def test_unsuppressed_fixture_reports_arc904(tmp_path):
    found, code = check(tmp_path, FLATTEN)
    assert [(f["code"], f["location"]["row"]) for f in found] == [("ARC904", 15)] and code == 1


def test_noqa_with_the_code_suppresses_and_exit_is_0(tmp_path):
    found, code = check(tmp_path, edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # noqa: ARC903, ARC904"))
    assert found == [] and code == 0


def test_blanket_noqa_and_other_codes_do_not_silence_archlint(tmp_path):
    for comment in ("# noqa", "# noqa: E501", "# noqa: arc904", "# noqa: ARC9", "# archlint: ignore[ARC903]"):
        found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, f"{FAILING_LINE}  {comment}"), "--ignore", "ARC902")
        assert [f["code"] for f in found] == ["ARC904"], comment


def test_trailing_archlint_ignore_covers_its_line_only(tmp_path):
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # archlint: ignore[ARC904]"))
    assert found == []
    moved = edit(FLATTEN, "        h = self.act(self.conv(x))", "        h = self.act(self.conv(x))  # archlint: ignore[ARC904]")
    found, _ = check(tmp_path, moved, "--ignore", "ARC902")
    assert [f["code"] for f in found] == ["ARC904"]


def test_own_line_ignore_covers_a_multi_line_next_statement(tmp_path):
    multi = "        # archlint: ignore[ARC904]\n        return self.fc(\n            h.flatten(1)\n        )"
    found, code = check(tmp_path, edit(FLATTEN, FAILING_LINE, multi))
    assert found == [] and code == 0
    # Without the comment the same model fails inside that statement.
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, multi.split("\n", 1)[1]))
    assert [f["code"] for f in found] == ["ARC904"] and 15 <= found[0]["location"]["row"] <= 17


def test_file_ignore_anywhere_covers_the_whole_file(tmp_path):
    found, code = check(tmp_path, FLATTEN + "# archlint: file-ignore[ARC904]\n")
    assert found == [] and code == 0
    found, _ = check(tmp_path, "# archlint: file-ignore[ARC903]\n" + FLATTEN, "--ignore", "ARC902")
    assert [f["code"] for f in found] == ["ARC904"]


def test_meta_findings_at_the_class_line_and_import_errors_are_suppressible(tmp_path):
    found, _ = check(tmp_path, edit(NEEDS_ARGS, "class WideNet(nn.Module):", "class WideNet(nn.Module):  # noqa: ARC903"))
    assert found == []
    broken = (FIXTURES / "ARC900" / "bad_import_time_exception.py").read_text()
    found, _ = check(tmp_path, edit(broken, "# KeyError at import time", "# noqa: ARC900"))
    assert found == []


# -- ARC902 --------------------------------------------------------------------------------

# The input FLATTEN was written for. Its default-init convolution leaves its features 0.34 of
# the input's signal, under ARC203's threshold for CNNs, which these tests are not about.
SHAPE = ("--input-shape", "3,224,224")
FITS = (*SHAPE, "--ignore", "ARC203")


def test_arc902_points_at_a_stale_suppression_and_fails_the_run(tmp_path):
    stale = "        h = self.act(self.conv(x))  # noqa: ARC904"
    found, code = check(tmp_path, edit(FLATTEN, "        h = self.act(self.conv(x))", stale), *FITS)
    assert code == 1
    (f,) = found
    assert f["code"] == "ARC902" and f["name"] == "unused-suppression"
    assert (f["location"]["row"], f["location"]["column"]) == (14, stale.index("#") + 1)
    assert f["end_location"]["column"] == len(stale) + 1
    assert "no ARC904 finding on line 14" in f["message"]
    # Its own code silences it, like any other finding.
    found, code = check(tmp_path, edit(FLATTEN, "        h = self.act(self.conv(x))", stale + ", ARC902"), *FITS)
    assert found == [] and code == 0


def test_arc902_names_only_the_stale_code_of_a_comment_that_is_partly_used(tmp_path):
    line = FAILING_LINE + "  # noqa: ARC904, ARC900, ARC930"
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, line))
    (f,) = found
    assert f["code"] == "ARC902" and f["location"]["column"] == line.index("ARC900") + 1
    assert f["message"].startswith("ARC900, ARC930 in `# noqa: ARC904, ARC900, ARC930` suppresses nothing")
    assert "no ARC900 finding on line 15" in f["message"] and "ARC930 is not a rule code" in f["message"]


def test_arc902_fixture_runs_through_the_cli(tmp_path):
    result = run("check", str(FIXTURES / "ARC902" / "bad_stale_noqa.py"), "--output-format", "concise")
    assert result.exit_code == 1
    assert ":17:50: ARC902 " in result.stdout


def test_arc902_stays_quiet_where_it_cannot_know(tmp_path):
    stale = edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # noqa: ARC901")
    fits = FITS  # the model runs: every rule saw it
    found, _ = check(tmp_path, stale, *fits)
    assert [f["code"] for f in found] == ["ARC902"]
    # ARC901 not selected: the run cannot tell whether the comment is needed.
    found, _ = check(tmp_path, stale, *SHAPE, "--ignore", "ARC203,ARC901")
    assert found == []
    # The model was not analysed (ARC904): its rules never ran, so their suppressions
    # are not judged ...
    found, _ = check(tmp_path, stale)
    assert [f["code"] for f in found] == ["ARC904"]
    # ... but the import was, so a stale ARC900 suppression is still reported.
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # noqa: ARC900"))
    assert sorted(f["code"] for f in found) == ["ARC902", "ARC904"]
    # ARC902 itself not selected.
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # noqa: ARC900"), "--ignore", "ARC902")
    assert [f["code"] for f in found] == ["ARC904"]


def test_archlint_ignore_without_codes_is_reported(tmp_path):
    found, _ = check(tmp_path, edit(FLATTEN, FAILING_LINE, FAILING_LINE + "  # archlint: ignore"))
    assert sorted(f["code"] for f in found) == ["ARC902", "ARC904"]
    assert "names no rule codes" in next(f["message"] for f in found if f["code"] == "ARC902")


def _finish(tmp_path: Path, source: str, findings: list[Finding], settings: Settings) -> list[tuple[str, int, str]]:
    path = tmp_path / "f.py"
    path.write_text(source)
    for f in findings:
        f.span = Span(str(path), f.span.line, f.span.col)
    result = engine._finish(engine.FileResult(str(path), findings=findings), settings, source)
    return [(f.code, f.span.line, f.status) for f in result.findings]


def test_a_suppression_matching_a_dismissed_finding_is_used(tmp_path):
    source = "a = 1  # noqa: ARC901\nb = 2  # noqa: ARC901\n"
    # Line 1's finding was dismissed by the measurement: hidden, and its noqa not stale.
    got = _finish(tmp_path, source, [finding("ARC901", 1, "dismissed")], Settings())
    assert got == [("ARC902", 2, None)]


def test_file_ignore_of_arc902_silences_it(tmp_path):
    source = "# archlint: file-ignore[ARC902]\na = 1  # noqa: ARC901\n"
    assert _finish(tmp_path, source, [], Settings()) == []


def test_a_moved_code_still_selects_and_suppresses_its_rule(tmp_path):
    """ARC105 became ARC403 (off by default after the validation study): a selector or a
    suppression comment that names the old code means the new one, as ruff remaps codes."""
    source = (FIXTURES / "ARC403" / "bad_unscaled_branches.py").read_text()
    findings, _ = check(tmp_path, source)
    assert "ARC403" not in {f["code"] for f in findings}  # off by default
    path = tmp_path / "net.py"
    result = run("check", str(path), "--no-verify", "--output-format", "json", "--extend-select", "ARC105")
    assert "ARC105 is now ARC403" in result.stderr
    (moved,) = [f for f in json.loads(result.stdout) if f["code"] == "ARC403"]
    lines = source.splitlines(True)
    lines[moved["noqa_row"] - 1] = lines[moved["noqa_row"] - 1].rstrip("\n") + "  # noqa: ARC105\n"
    suppressed = "".join(lines)
    findings, _ = check(tmp_path, suppressed, "--extend-select", "ARC403")
    assert {f["code"] for f in findings} & {"ARC403", "ARC902"} == set(), findings
