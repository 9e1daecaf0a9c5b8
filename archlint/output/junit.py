"""JUnit XML, in ruff's shape: a ``<testsuite>`` per file and a ``<testcase>`` per finding.

A finding that fails the run carries a ``<failure message=... type=CODE>``; a dismissed or
informational one is a passing testcase with the details in ``<system-out>``. With no
findings at all there is one passing testcase, because some CI report readers reject a
report without tests. Built with ``xml.etree`` so that escaping is the library's.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import groupby

from archlint.output import Context, display_path, fails, status_tag
from archlint.rule import Finding

# Characters XML 1.0 cannot hold even escaped (e.g. ANSI escapes in an exception message).
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    return _INVALID_XML.sub("\ufffd", value)


def _details(f: Finding) -> str:
    lines = [f"line {f.span.line}, col {f.span.col + 1}, {f.message}{status_tag(f)}"]
    values = [f"{label} {value:.3g}" for label, value in (("predicted", f.predicted), ("measured", f.measured), ("threshold", f.threshold)) if value is not None]
    if values:
        lines.append("values: " + ", ".join(values))
    if f.reason:
        lines.append(f"note: {f.reason}")
    if f.fix:
        lines.append(f"help: {f.fix}")
    return _text("\n".join(lines))


def render(findings: list[Finding], ctx: Context) -> str:
    root = ET.Element("testsuites", name="archlint")
    total = failed = 0
    by_file = groupby(sorted(findings, key=lambda f: f.span.path), key=lambda f: f.span.path)
    for path, group in by_file:
        cases = list(group)
        shown = display_path(path, ctx.root)
        n_failed = sum(1 for f in cases if fails(f))
        suite = ET.SubElement(root, "testsuite", name=shown, tests=str(len(cases)), failures=str(n_failed), errors="0", skipped="0")
        for f in cases:
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"archlint.{f.code}",
                classname=shown.removesuffix(".py"),
                file=shown,
                line=str(f.span.line),
                column=str(f.span.col + 1),
            )
            if fails(f):
                failure = ET.SubElement(case, "failure", message=_text(f.message), type=f.code)
                failure.text = _details(f)
            else:
                ET.SubElement(case, "system-out").text = _details(f)
        total += len(cases)
        failed += n_failed
    if not findings:
        suite = ET.SubElement(root, "testsuite", name="archlint", tests="1", failures="0", errors="0", skipped="0")
        ET.SubElement(suite, "testcase", name="archlint", classname="archlint")
        total = 1
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
