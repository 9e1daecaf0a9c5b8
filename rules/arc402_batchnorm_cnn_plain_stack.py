"""ARC402 batchnorm-cnn-plain-stack: ARC103's plain-stack check for CNNs with BatchNorm (off by default).

## What it does
ARC103's check (a run of nonlinear layers without a skip connection whose NLC is above
``threshold``, predicted and then measured) for the models ARC103 leaves alone: those with
convolutions and BatchNorm. Off by default; select it with ``--extend-select ARC402``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found its evidence in this family inconsistent. In the calibration half of all 1600
architectures (768), the NLC of the plain stacks of CNNs with BatchNorm ranked their
outcomes at AUC 0.63 over 158 architectures (101 bad; 0.5 is chance), and a threshold of
11.4 reached the precision goal of 0.85; in the first 640's calibration half alone none did
(AUC 0.58 over 57 architectures), in the second's one did (1.76), in the default-init part's
none (AUC 0.67 over 36). A rule or family branch changes status only where both parts of the
study's random population agree (docs/validation.md).

The public CIFAR-10 results that ARC401's documentation cites point the same way.

## Why is this bad?
As ARC103's finding: NLCs multiply along a chain without skip connections, which
predicts poor generalisation and exploding gradients (Philipp 2021); for CNNs with BatchNorm
the evidence so far says otherwise, hence off by default (above).

## Example
```python
layers = []
for _ in range(40):
    layers += [nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()]
self.body = nn.Sequential(*layers)
```

## Use instead
As ARC103: skip connections every one or two layers, or fewer, wider layers.

## Options
- ``threshold`` (default 100.0): ARC103's ``conv-threshold`` before the study.
- ``min-layers`` (default 6): the shortest run looked at.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021.
- benchmarks/validation/summary.md: the study's tables.
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc103_deep_plain_stack as arc103

CODE = "ARC402"
NAME = "batchnorm-cnn-plain-stack"
SEVERITY = "warning"
SUMMARY = "A plain stack in a CNN with BatchNorm compounds the NLC above the threshold (off by default)"
OPTIONS = {"threshold": 100.0, "min-layers": 6}

def check(graph, options, context):
    if not patterns.is_batchnorm_cnn(graph):
        return []
    return arc103.plain_stacks(graph, {**options, "conv-threshold": options["threshold"]}, CODE)

confirm = arc103.confirm
