"""ARC902 unused-suppression: a suppression comment that suppressed nothing.

## What it does
Reports an archlint suppression comment, or a code inside one, that suppressed no finding:
``# noqa: ARC103`` on a line without an ARC103 finding, ``# archlint: ignore[ARC103]``
whose line (or next statement) has none, ``# archlint: file-ignore[ARC103]`` in a file
without one. It also reports codes that are not archlint rule codes (``# noqa: ARC130``
for ARC103, or a lower-case ``arc103``: codes are case-sensitive, as in ruff) and an
``# archlint: ignore`` without codes. The diagnostic points at the comment, or at the
stale code when the comment's other codes are still needed.

A suppression is judged only when its rule actually ran on the file, so nothing is
reported for:

- codes of rules that are not selected for the file (``--select``, ``ignore``,
  ``per-file-ignores``): narrowing a run on the command line, e.g. ``--select ARC9``, must
  not flag every other suppression of the project. ruff's RUF100 does report such codes as
  "non-enabled"; archlint does not, because a partial run here is common and cheap ones
  are not;
- any code but ARC900 in a file where a model could not be analysed (ARC900, ARC903,
  ARC904): the rules never saw that model.

A suppression that matched a finding the verification pass *dismissed* counts as used:
whether a borderline finding is confirmed can change with the batch and the seed, and the
comment must not flip between needed and unused from run to run.

Other tools' codes in the same comment (``# noqa: E501, ARC103``) are never reported. A
comment that names ARC902 itself (``# noqa: ARC103, ARC902``) is left alone, as ruff does
for RUF100. Like RUF100, ARC902 counts as a finding for the exit status.

## Why is this bad?
A stale suppression hides the next real finding on that line: after a refactor the
comment silences a risk nobody has looked at. Unknown codes are usually typos that
suppress nothing while looking as if they did.

## Example
```python
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)  # noqa: ARC103  (no ARC103 finding here any more)
```

## Use instead
```python
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
```

## Options
None.

## References
- ruff: unused-noqa (RUF100); mypy: ``--warn-unused-ignores``; pylint:
  ``useless-suppression``.
- archlint docs: docs/suppressions.md, "Suppressing findings".
"""

CODE = "ARC902"
NAME = "unused-suppression"
SEVERITY = "warning"
SUMMARY = "A suppression comment suppressed nothing"
OPTIONS: dict = {}


def check(graph, options, context):
    # Raised by the engine after suppressions are applied; it needs the whole file's findings.
    return []
