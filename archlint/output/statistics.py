"""``--statistics``: how many findings each rule produced, in ruff's shape.

One line per code, most frequent first: ``count<TAB>code<TAB>name``, the count right-aligned
and the code padded so that the columns line up.
"""

from __future__ import annotations

from collections import Counter

from archlint.output import Context
from archlint.rule import Finding


def render(findings: list[Finding], ctx: Context) -> str:
    counts = Counter(f.code for f in findings)
    names = {f.code: f.name for f in findings}
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if not rows:
        return ""
    count_width = max(len(str(n)) for _, n in rows)
    code_width = max(len(code) for code, _ in rows)
    return "".join(f"{n:>{count_width}}\t{code:<{code_width}}\t{names[code]}\n" for code, n in rows)
