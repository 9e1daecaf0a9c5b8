"""ARC901 trace-fallback: torch.fx could not trace the model; the eager fallback was used.

## What it does
Tells you that torch.fx could not trace the model symbolically (data-dependent control flow
such as ``if x.sum() > 0``, an ``assert`` on ``x.size()``, Python-side iteration over a
tensor) and that archlint captured the graph eagerly instead, by running the model once on
the example inputs with forward hooks on torch's layers and a function mode that records
every functional op. The message includes fx's error.

## Why is this bad?
It is informational: the analysis still ran. The eager graph shows only the path taken for
the example inputs; if the forward pass branches on the data, other branches are not seen,
and a measurement run that takes a different path is reported instead of mis-attributed.
This diagnostic does not change the exit code.

## Example
```python
def forward(self, x):
    assert x.size(1) == self.block_size  # fx cannot trace a Python assert on a shape
    ...
```

## Use instead
Nothing is required. To make the model fx-traceable, replace Python control flow on tensor
values with tensor ops (``torch.where``), or check shapes outside ``forward``.

## Options
None.

## References
- PyTorch: torch.fx "Limitations of Symbolic Tracing" (dynamic control flow).
"""

CODE = "ARC901"
NAME = "trace-fallback"
SEVERITY = "info"
SUMMARY = "torch.fx could not trace the model; the eager fallback was used"
OPTIONS: dict = {}
# The analysis succeeded: an informational note must not fail a pre-commit hook.
AFFECTS_EXIT = False


def check(graph, options, context):
    # Raised by the engine from graph.traced_with; it never depends on rule options.
    return []
