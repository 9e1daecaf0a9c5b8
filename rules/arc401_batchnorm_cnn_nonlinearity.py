"""ARC401 batchnorm-cnn-nonlinearity: ARC101's output NLC check for CNNs with BatchNorm (off by default).

## What it does
ARC101's check (the NLC from the model's input to its output above ``threshold``, predicted
and then measured) for the models ARC101 leaves alone: those with convolutions and
BatchNorm. Off by default; select it with ``--extend-select ARC401``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no consistent predictive power in this family. In the calibration half of all 1600
architectures (768), the output NLC of CNNs with BatchNorm ranked their outcomes at AUC 0.49
over 179 architectures (116 bad; 0.5 is chance). The study's two random parts disagree: in
the first 640's calibration half no threshold reached the precision goal of 0.85 (AUC 0.41
over 68 architectures), in the second's one did (12.9; AUC 0.52 over 71); the default-init
part's has none (AUC 0.50 over 40). A rule or family branch changes status only where both
parts of the study's random population agree (docs/validation.md). Every architecture above
such a threshold is a plain network: no residual CNN with BatchNorm in the study measures
above 5.5, so the study says nothing about the residual networks this rule would report in
practice, and plain stacks are ARC402's. MLPs with BatchNorm, which ARC101 still judges: AUC
0.67 over 139 architectures (36 bad).

Public CIFAR-10 results agree: in kuangliu/pytorch-cifar, ResNet50 (NLC 119 at
initialisation), DPN92 (219) and RegNetY_400MF (127) reach 93.6-95.2% test accuracy, better
than its ResNet18 (NLC 7, 93.0%). BatchNorm re-centres and rescales every layer during
training, so the function at initialisation says less about the trained one than it does
for a network without it.

## Why is this bad?
As ARC101's finding: a network that is highly nonlinear at initialisation fits a highly
folded function and generalises worse (Philipp 2021); for CNNs with BatchNorm the evidence
so far says otherwise, hence off by default (above).

## Example
```python
layers = []
for _ in range(40):
    layers += [nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()]
```

## Use instead
As ARC101: skip connections, fewer nonlinear layers, or nonlinearity normalisation.

## Options
- ``threshold`` (default 100.0): ARC101's ``conv-threshold`` before the study: where the
  guide's precision argument starts (float16 can no longer represent the function
  meaningfully).

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021.
- benchmarks/validation/summary.md: the study's tables.
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc101_nonlinearity_too_high as arc101

CODE = "ARC401"
NAME = "batchnorm-cnn-nonlinearity"
SEVERITY = "warning"
SUMMARY = "The NLC at the output of a CNN with BatchNorm is above the threshold (off by default)"
OPTIONS = {"threshold": 100.0}
# ARC101's more specific rules, with ARC402 for ARC103's share of this family.
SUBSUMED_BY = ("ARC402", "ARC104", "ARC403")

def check(graph, options, context):
    if not patterns.is_batchnorm_cnn(graph):
        return []
    return arc101.output_nlc(graph, {"threshold": options["threshold"], "conv-threshold": options["threshold"]}, CODE)

confirm = arc101.confirm
