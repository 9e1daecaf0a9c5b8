"""ARC204 dead-units: most units of a ReLU-family layer never activate.

## What it does
For every ReLU-family activation (ReLU, ReLU6, LeakyReLU, PReLU, threshold), predicts the
fraction of its units that stay at or below zero for every input of a batch of ``batch``
samples, from the mean-field state of its pre-activation: unit means m ~ N(mean, M - mean^2)
and input-dependent std sqrt(v), P(dead) = E_m[Phi(-m / sqrt(v))^batch]. Reports the worst
layer when the fraction is above ``threshold``, with the number of such layers; only layers
that a value the model returns depends on. The verification pass counts the units that are
never positive on the measured batch.

## Why is this bad?
A unit that is off for every input passes no gradient to its weights and never recovers:
its width is wasted, and a layer that is mostly dead is also very nonlinear for the few
inputs that switch units on (ReLU NLC 2.0 at mean/std -2, digest table D). Common causes are
large negative biases, a BatchNorm with a negative beta, or a collapsed domain where each unit
is either always on or always off.

## Example
```python
self.fc = nn.Linear(256, 256)
nn.init.constant_(self.fc.bias, -3.0)   # pre-activation mean/std ~ -3
```

## Use instead
Centre the pre-activations (zero biases, BatchNorm before the activation), use He init, or
an activation without a dead region (LeakyReLU with a sizeable slope, ELU, GELU).

No fix is offered (``--fix``): removing a bias may be deliberate; re-initialising it is left
to you.

## Options
- ``threshold`` (default 0.16): the fraction of dead units above which a layer is reported
  (before the validation study: 0.5).
- ``batch`` (default 128): the number of inputs a unit must be off for to count as dead.

Calibrated on 768 architectures of the validation study: precision 0.87, recall 0.08; on the
832 held out: precision 0.98, recall 0.08.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021: the ReLU operating point.
- archlint's digest of the guide: section 2.2 (table D, P(active)) and sections 4.3-4.4.
"""

from __future__ import annotations

import functools
import math

from archlint import evidence, patterns
from archlint.rule import at_node, Verdict

CODE = "ARC204"
NAME = "dead-units"
SEVERITY = "warning"
SUMMARY = "Most units of a ReLU-family layer never activate"
OPTIONS = {"threshold": 0.16, "batch": 128}

# Gauss-Hermite (probabilists') nodes and weights for E over the unit means.
_NODES = 64


@functools.lru_cache(maxsize=1)
def _gauss_hermite():
    """The nodes and normalised weights (computing them costs ~1.5 ms: once, not per layer)."""
    import numpy as np

    x, w = np.polynomial.hermite_e.hermegauss(_NODES)
    return x, w / w.sum()


def dead_fraction(mean: float, spread_sq: float, v: float, batch: int) -> float:
    """E_m[P(h <= 0)^batch] for h = m + sqrt(v) z, m ~ N(mean, spread_sq)."""
    import numpy as np

    sd = math.sqrt(max(spread_sq, 0.0))
    x, w = _gauss_hermite()
    if v <= 0:
        return float(np.sum(w * (mean + sd * x <= 0)))
    m = mean + sd * x
    p_off = 0.5 * np.array([math.erfc(mi / math.sqrt(2 * v)) for mi in m])
    return float(np.sum(w * p_off**batch))


def check(graph, options, context):
    threshold = float(options["threshold"])
    batch = int(options["batch"])
    signal = patterns.live_signal_nodes(graph)
    worst = None
    count = 0
    total = 0
    for node in graph.nodes:
        if patterns.activation_name(node) not in patterns.RELU_FAMILY or node.name not in signal or not node.inputs:
            continue
        total += 1
        pre = evidence.predicted(graph, node.inputs[0])
        if pre is None or pre.v is None or pre.M is None:
            continue
        mean = pre.mean or 0.0
        fraction = dead_fraction(mean, pre.M - mean * mean, pre.v, batch)
        if fraction > threshold:
            count += 1
            if worst is None or fraction > worst[0]:
                worst = (fraction, node)
    if worst is None:
        return []
    fraction, node = worst
    more = f"; {count} of {total} ReLU-family layers are above the threshold" if count > 1 else ""
    at = f" at {node.module_path}" if node.module_path else ""
    return [at_node(graph, node,
        code=CODE,
        message=f"{{value}} of the units of the {patterns.activation_name(node)}{at} are never active on a batch of {batch}{more}",
        predicted=fraction,
        threshold=threshold,
        explanation=(
            "a unit that is off for every input gets no gradient and never recovers; a "
            "mostly-dead layer wastes its width and is very nonlinear for the inputs it passes"
        ),
        fix=(
            "centre the pre-activations (zero biases, BatchNorm before the activation), use "
            "He init, or an activation without a dead region (LeakyReLU, ELU, GELU)"
        ),
        percent=True,
        data={"pre": node.inputs[0]},
    )]


def confirm(finding, report, options):
    stats = evidence.measured(report, finding.data["pre"])
    if stats is None or stats.dead_fraction is None:
        return Verdict(None, None, "the layer's units could not be measured")
    return Verdict(stats.dead_fraction > float(options["threshold"]), stats.dead_fraction)
