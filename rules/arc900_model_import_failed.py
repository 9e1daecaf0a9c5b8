"""ARC900 model-import-failed: the model file could not be imported.

## What it does
Reports a model file that archlint could not import: a syntax error, an exception raised at
module level, a missing dependency, or a ``sys.exit`` at import time. The diagnostic points
at the failing line of the linted file (the syntax error itself, or the line whose execution
raised) and names the exception.

## Why is this bad?
archlint has to import the file to build its models; a file that cannot be imported cannot
be checked at all, so none of its architecture risks are reported. In a pre-commit hook or
CI this must not pass silently.

## Example
```python
import torch.nn as nn
import not_installed_package  # ModuleNotFoundError -> ARC900 on this line

class Net(nn.Module):
    ...
```

## Use instead
Fix the error, install the missing dependency into the environment archlint runs in (for
pre-commit, the `archlint-system` hook runs in your own environment), or keep heavy
training-time side effects under `if __name__ == "__main__":`, which archlint never runs.

## Options
None.

## References
- archlint docs: docs/models.md, "Loading": how files are imported in isolation.
"""

CODE = "ARC900"
NAME = "model-import-failed"
SEVERITY = "error"
SUMMARY = "The model file could not be imported"
OPTIONS: dict = {}


def check(graph, options, context):
    # Raised by the engine when importing a file fails; there is no graph to check.
    return []
