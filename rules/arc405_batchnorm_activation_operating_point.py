"""ARC405 batchnorm-activation-operating-point: ARC104's check for networks with BatchNorm (off by default).

## What it does
ARC104's check (each activation whose layer NLC, predicted and then measured, is above
``threshold``) for the models ARC104 leaves alone: those with BatchNorm. Off by default;
select it with ``--extend-select ARC405``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no predictive power in these families: in the calibration half of all 1600
architectures (768), the worst layer NLC ranked the outcomes of MLPs with BatchNorm at AUC
0.36 over 139 architectures (36 bad; 0.5 is chance) and of CNNs with BatchNorm at AUC 0.41
over 179 architectures (116 bad), and no threshold reached the study's precision goal of
0.85 in either, in each part of the study alone as in all together. BatchNorm sets every
pre-activation's scale, and its trained gains move the operating point.

## Why is this bad?
As ARC104's finding: saturated, mostly-off or folding units make every layer more
nonlinear; with BatchNorm the evidence so far does not show it predicting the outcome,
hence off by default (above).

## Example
```python
layers = []
for _ in range(10):
    bn = nn.BatchNorm1d(256)
    nn.init.constant_(bn.weight, 3.0)  # pre-activation std 3: saturated tanh
    layers += [nn.Linear(256, 256), bn, nn.Tanh()]
```

## Use instead
As ARC104: a BatchNorm gain of at most 1 before a saturating activation, or an activation
that is not even.

## Options
- ``threshold`` (default 1.25): ARC104's threshold before the validation study.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021.
- benchmarks/validation/summary.md: the study's tables.
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc104_activation_operating_point as arc104

CODE = "ARC405"
NAME = "batchnorm-activation-operating-point"
SEVERITY = "warning"
SUMMARY = "An activation of a network with BatchNorm runs in a highly nonlinear regime (off by default)"
OPTIONS = {"threshold": 1.25}


def check(graph, options, context):
    if not patterns.has_batchnorm(graph):
        return []
    return arc104.operating_points(graph, options, CODE)


confirm = arc104.confirm
