"""ARC409 batchnorm-mlp-output-scale: ARC205's check for MLPs with BatchNorm (off by default).

## What it does
ARC205's check (the output's std above ``max-std``, or a constant the output layer adds
above ``max-neuron-bias`` of its RMS; predicted and then measured, or found by the
measurement alone) for the models ARC205 leaves alone: those with BatchNorm and no
convolutions. Off by default; select it with ``--extend-select ARC409``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no predictive power in this family: in the calibration half of all 1600 architectures
(768), with every architecture's measured value recorded, the output std of MLPs with
BatchNorm ranked their outcomes at AUC 0.50 over 139 architectures (36 bad; 0.5 is chance),
and no threshold reached the study's precision goal of 0.85, in each part of the study alone
as in all together. Of those whose output std was above 5 (the threshold before the study),
10 trained badly and 17 did not. Why is not established.

## Why is this bad?
As ARC205's finding: large logits saturate the softmax at the first steps; in MLPs with
BatchNorm the evidence so far does not show it predicting the outcome, hence off by default
(above).

## Example
```python
self.body = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU())
self.head = nn.Linear(256, 10)
nn.init.normal_(self.head.weight, std=1.0)   # logits std ~ 11
```

## Use instead
As ARC205: initialise the output layer small (std 1/sqrt(fan_in) or less, or zeros) with a
zero bias.

``--fix`` (verified), as ARC205's: the output layer is initialised with gain 1.

## Options
- ``max-std`` (default 5): ARC205's threshold before the study.
- ``max-neuron-bias`` (default 0.9): as ARC205's.

## References
- G. Philipp, J. Carbonell, "The Nonlinearity Coefficient - Predicting Generalization in
  Deep Neural Networks", 2018 (output bias).
- archlint's digest of the guide: section 3 (rule BIAS) and section 4.4.
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc205_output_scale as arc205

CODE = "ARC409"
NAME = "batchnorm-mlp-output-scale"
SEVERITY = "warning"
SUMMARY = "The outputs of an MLP with BatchNorm are very large, or dominated by a constant (off by default)"
OPTIONS = {"max-std": 5.0, "max-neuron-bias": 0.9}


def check(graph, options, context):
    if not patterns.is_batchnorm_mlp(graph):
        return []
    return arc205.output_scale(graph, options, CODE)


def find(graph, report, options, context):
    if not patterns.is_batchnorm_mlp(graph):
        return []
    return arc205.output_scale_measured(graph, report, options, CODE)


confirm = arc205.confirm
