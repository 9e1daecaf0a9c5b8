"""ARC905 not-verified: the verification pass could not measure the model.

## What it does
Says that a model's verdicts are static predictions only, and why: the model is over the
memory budget (it was analysed on the meta device), its measurement raised (the exception
and the line it came from), or the measurement did not finish in time. The model's
findings stay ``predicted`` with the same reason; none is dropped.

## Why is this bad?
It is informational: every other model of the run was measured, and a CI consumer must be
able to tell a measured "clean" from a model that was never run. It does not change the
exit code, and ``--no-verify`` (a choice, not a failure) never raises it.

## Example
```python
model = nn.Sequential(*[nn.Linear(60000, 60000) for _ in range(6)])  # 86 GB of weights
```

## Use instead
Raise the budget (``--memory-budget``), give inputs the model accepts (``--inputs``,
``--input-shape``), or fix the error the message names.

## Options
None.

## References
- archlint documentation: the verification pass.
"""

CODE = "ARC905"
NAME = "not-verified"
SEVERITY = "info"
SUMMARY = "The verification pass could not measure the model: its verdicts are static"
OPTIONS: dict = {}
# The static analysis ran: an informational note must not fail a pre-commit hook.
AFFECTS_EXIT = False


def check(graph, options, context):
    # Raised by the engine when a measurement was asked for and could not be made.
    return []
