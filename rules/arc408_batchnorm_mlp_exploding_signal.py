"""ARC408 batchnorm-mlp-exploding-signal: ARC202's check for MLPs with BatchNorm (off by default).

## What it does
ARC202's check (the RMS of the output relative to the input's, predicted and then measured,
or found by the measurement alone, above ``threshold``) for the models ARC202 leaves alone:
those with BatchNorm and no convolutions. Off by default; select it with
``--extend-select ARC408``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no predictive power in this family: in the calibration half of all 1600 architectures
(768), with every architecture's measured value recorded, the output/input RMS ratio of MLPs
with BatchNorm ranked their outcomes at AUC 0.51 over 139 architectures (36 bad; 0.5 is
chance), and no threshold reached the study's precision goal of 0.85, in each part of the
study alone as in all together. BatchNorm resets the signal's scale in every layer, so the
ratio is the output layer's scale alone (ARC409's value).

## Why is this bad?
As ARC202's finding: a signal that grows layer after layer overflows, saturates and makes the
learning rate hard to choose; with BatchNorm in an MLP the evidence so far does not show it
predicting the outcome, hence off by default (above).

## Example
```python
self.body = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU())
self.head = nn.Linear(256, 10)
nn.init.normal_(self.head.weight, std=10.0)  # the output's RMS ~ 110x the input's
```

## Use instead
As ARC202: initialise the output layer at std 1/sqrt(fan_in) or smaller.

No fix is offered (``--fix``), as for ARC202.

## Options
- ``threshold`` (default 100): ARC202's threshold before the study.

## References
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018.
- archlint's digest of the guide: sections 3 (INIT-SCALE, skip connections) and 6.
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc202_exploding_signal as arc202

CODE = "ARC408"
NAME = "batchnorm-mlp-exploding-signal"
SEVERITY = "warning"
SUMMARY = "The signal's RMS grows by orders of magnitude through an MLP with BatchNorm (off by default)"
OPTIONS = {"threshold": 100.0}


def check(graph, options, context):
    if not patterns.is_batchnorm_mlp(graph):
        return []
    return arc202.exploding(graph, options, CODE)


def find(graph, report, options, context):
    if not patterns.is_batchnorm_mlp(graph):
        return []
    return arc202.exploding_measured(graph, report, options, CODE)


confirm = arc202.confirm
