"""ARC302 no-path-from-input: the model's output does not depend on its input.

## What it does
Follows the graph from the model's signal sources (floating-point inputs, or the embeddings
of token inputs) to its output and reports an output that none of them reaches, or reaches
only through an op that cuts the dependence (``detach``, ``zeros_like``, ``size``). The
verification pass confirms it when the measured Jacobian of the output is exactly zero (the
output has no tangent). The finding points at the model.

## Why is this bad?
An output that does not depend on the input cannot be learned from it: the loss's gradient
reaches no parameter through the input path. It is always a bug: a forward that returns a
parameter or a buffer, a branch that was meant to use the input, a ``.detach()`` on the
main path, an input that is accepted and ignored.

## Example
```python
def forward(self, x):
    h = self.encoder(x).detach()   # cuts the gradient and the dependence measured here
    return self.head(torch.zeros_like(h))
```

## Use instead
Make the output a function of the input: remove the ``detach``/``zeros_like``, and use the
argument you meant to use.

No fix is offered (``--fix``): the input must be wired in by hand.

## Options
None.

## References
- archlint's digest of the guide: section 1.1 (the NLC needs a Jacobian).
"""

from __future__ import annotations

from archlint import patterns
from archlint.rule import at_model, Verdict

CODE = "ARC302"
NAME = "no-path-from-input"
SEVERITY = "error"
SUMMARY = "The model's output does not depend on its input"
OPTIONS: dict = {}


def _computed_by(node) -> str:
    return f" (computed by {node.module_path})" if node.module_path else ""


def check(graph, options, context):
    if graph.output is None or not patterns.sources(graph):
        return []
    if graph.output in patterns.signal_nodes(graph):
        return []
    return [at_model(graph, graph.output,
        code=CODE,
        message=f"{graph.name}'s output{_computed_by(graph[graph.output])} does not depend on its input",
        explanation="an output that is not a function of the input cannot be learned from it: no gradient flows through the input path",
        fix="make the output a function of the input: remove the detach/zeros_like, or use the argument you meant to use",
    )]


def confirm(finding, report, options):
    status = report.status
    return Verdict(status in ("constant", "no-gradient"), None, f"measured output status: {status}")
