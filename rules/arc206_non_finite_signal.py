"""ARC206 non-finite-signal: the model computes NaN or Inf from finite inputs.

## What it does
Found by the verification pass alone (the static pass cannot see values): reports the first
node, in forward order, whose measured output is NaN for finite example inputs, or, when the
model's output is not finite, the first non-finite node it depends on, at the line that
computes it. An infinite value the model removes again (a ``-inf`` attention mask that the
softmax turns into zeros) is deliberate and not reported. A model whose output is NaN for every input otherwise passes
every other rule, which all read statistics that do not exist.

## Why is this bad?
A NaN or an overflow at initialisation makes the first loss NaN, and every parameter it
touches NaN after the first step: training cannot start. Usual causes: a division by a
quantity that can be zero, ``log``/``sqrt`` of a negative or zero value, an ``exp`` of a
large input, a mask filled with ``-inf`` over a whole row before a softmax, a literal
``float('nan')``.

## Example
```python
def forward(self, x):
    return self.fc(x) * float("nan")
```

## Use instead
Guard the operation (``clamp`` the argument of ``log``/``sqrt``, add an epsilon to a
denominator, keep at least one unmasked entry per softmax row) or fix the expression.

## Options
None.

## References
- archlint NLC digest: measured statistics and their statuses ("nan", "exploded").
"""

from __future__ import annotations

from archlint.rule import at_node

CODE = "ARC206"
NAME = "non-finite-signal"
SEVERITY = "error"
SUMMARY = "The model computes NaN or Inf from finite inputs"
OPTIONS: dict = {}
# An overflow that grows with depth is the exploding signal's finding (its cause and fix).
SUBSUMED_BY = ("ARC202",)

# Measurement statuses of a node whose values (or tangents) are not finite.
_NON_FINITE = {"nan": "NaN", "exploded": "infinite"}


def check(graph, options, context):
    # Values are not known statically: the verification pass finds this (``find``).
    return []


def find(graph, report, options, context):
    """The first node that is NaN; or, when the output itself is not finite, the first
    non-finite node it depends on. An infinite value the model removes again (a ``-inf``
    attention mask that the softmax turns into zeros) is deliberate, not a finding."""
    def status(name):
        stats = report.nodes.get(name)
        return stats.status if stats is not None else None

    if status(graph.output) in _NON_FINITE:
        upstream = graph.ancestors(graph.output) | {graph.output}
        suspects = [n for n in graph.nodes if n.name in upstream and status(n.name) in _NON_FINITE]
    else:
        suspects = [n for n in graph.nodes if status(n.name) == "nan"]
    if not suspects:
        return []
    node = suspects[0]
    at = node.module_path or node.op
    return [at_node(graph, node,
        code=CODE,
        message=f"{graph.name} computes {_NON_FINITE[status(node.name)]} values at {at} from finite inputs",
        explanation="a NaN or Inf at initialisation makes the first loss and then every parameter it reaches non-finite",
        fix="guard the operation: clamp the argument of log/sqrt, add an epsilon to denominators, avoid fully masked softmax rows",
        data={"status": status(node.name)},
    )]
