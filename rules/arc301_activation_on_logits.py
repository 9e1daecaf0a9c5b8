"""ARC301 activation-on-logits: a ReLU-like activation is applied to a classifier's outputs.

## What it does
Reports a model whose output is computed by a ReLU-family or similar one-sided activation
(ReLU, ReLU6, LeakyReLU, ELU, SELU, GELU, SiLU, Softplus, Mish, ...) applied directly to a
final Linear or Conv layer that reduces the width (a classifier-shaped head: logits). Output
maps that are chosen on purpose (sigmoid, tanh, softmax, log-softmax) are not reported. A
pattern, not a number: there is nothing to measure, so the finding is confirmed statically.

## Why is this bad?
Logits are meant to range over the real line: the loss (cross-entropy, or the softmax in it)
supplies the output nonlinearity. A ReLU on the logits cuts every negative logit to zero: a
class whose logit is negative gets no gradient through it, the model cannot express "very
unlikely", and at initialisation about half of the outputs are dead. The NLC is measured at
the logits because the loss nonlinearity is not part of the architecture (digest §3).

## Example
```python
self.head = nn.Sequential(nn.Linear(128, 10), nn.ReLU())
```

## Use instead
Return the final layer's output unchanged and let the loss apply softmax/sigmoid:
```python
self.head = nn.Linear(128, 10)
```

``--fix`` (verified): the activation is removed (the last element of an ``nn.Sequential``
literal, a functional call in ``forward``, or a module called once); in the middle of a
literal it becomes ``nn.Identity()`` so the state-dict keys stay.

## Options
None.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021: output layer and loss.
- archlint's digest of the guide: section 3 (output layer and loss).
"""

from __future__ import annotations

from archlint import patterns
from archlint.graph import OpKind
from archlint.rule import at_node

CODE = "ARC301"
NAME = "activation-on-logits"
SEVERITY = "warning"
SUMMARY = "A ReLU-like activation is applied to a classifier's logits"
OPTIONS: dict = {}


def _reduces_width(node) -> bool:
    weight = node.params.get("weight")
    return weight is not None and len(weight.shape) >= 2 and weight.shape[0] < weight.shape[1]


def check(graph, options, context):
    if graph.output is None:
        return []
    out = graph[graph.output]
    name = patterns.activation_name(out)
    if name is None or name in patterns.OUTPUT_MAPS or not patterns.is_elementwise_activation(out):
        return []
    head = patterns.producer(graph, out.name)
    if head is None or head.kind not in (OpKind.LINEAR, OpKind.CONV) or not _reduces_width(head):
        return []
    return [at_node(graph, out,
        code=CODE,
        message=f"{graph.name} applies {name} to the logits computed by {head.module_path or head.op}",
        explanation=(
            "the loss supplies the output nonlinearity; a one-sided activation on the logits "
            "cuts negative logits to a constant, so those classes get no gradient"
        ),
        fix=f"remove the {name} after the output layer and return its output unchanged (the loss applies softmax)",
    )]
