"""ARC407 batchnorm-cnn-vanishing-signal: ARC203's check for CNNs with BatchNorm (off by default).

## What it does
ARC203's check (the input-dependent standard deviation at the model's features relative to
the input's, predicted and then measured, or found by the measurement alone, below
``threshold``) for the models ARC203 leaves alone: those with convolutions and BatchNorm.
Off by default; select it with ``--extend-select ARC407``.

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no consistent predictive power in this family: in the calibration half of all 1600
architectures (768), with every architecture's value recorded, the features/input ratio of
CNNs with BatchNorm ranked their outcomes at AUC 0.51 over 179 architectures (116 bad; 0.5
is chance). Neither part of the study's random population has a threshold at the precision
goal of 0.85 there (AUC 0.45 and 0.47); the default-init part has one (0.154, AUC 0.67 over
40), and so do all of them pooled (0.067). A rule or family branch changes status only where
both parts of the study's random population agree (docs/validation.md). Why is not
established: BatchNorm sets every layer's scale, so the ratio of such a CNN's features is
lowered mostly by its pooling, not by a signal fading layer after layer. (SENet18 of
kuangliu/pytorch-cifar, a well-known CIFAR-10 architecture, measures 0.094 at
initialisation.)

## Why is this bad?
As ARC203's finding: a signal that fades away leaves an output that does not depend on the
input, and vanishing gradients; for CNNs with BatchNorm the evidence so far says otherwise,
hence off by default (above).

## Example
```python
layers = []
for _ in range(6):
    bn = nn.BatchNorm2d(32)
    nn.init.constant_(bn.weight, 1e-4)  # every layer's output scaled to 1e-4
    layers += [nn.Conv2d(32, 32, 3, padding=1, bias=False), bn, nn.ReLU()]
```

## Use instead
As ARC203: BatchNorm gains of 1 (PyTorch's default), or a learnable scale that starts at 1.

No fix is offered (``--fix``), as for ARC203.

## Options
- ``threshold`` (default 0.001): ARC203's threshold before the study.

## References
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018.
- archlint's digest of the guide: sections 2.3 (default init) and 3 (INIT-SCALE).
"""

from __future__ import annotations

from archlint import patterns
from archlint.rules import arc203_vanishing_signal as arc203

CODE = "ARC407"
NAME = "batchnorm-cnn-vanishing-signal"
SEVERITY = "warning"
SUMMARY = "The input-dependent signal of a CNN with BatchNorm fades before its output layer (off by default)"
OPTIONS = {"threshold": 0.001}


def check(graph, options, context):
    if not patterns.is_batchnorm_cnn(graph):
        return []
    return arc203.vanishing(graph, _as_arc203(options), CODE)


def find(graph, report, options, context):
    if not patterns.is_batchnorm_cnn(graph):
        return []
    return arc203.vanishing_measured(graph, report, _as_arc203(options), CODE)


def _as_arc203(options):
    """ARC203's options: these models have convolutions, so its ``conv-threshold``."""
    return {**options, "conv-threshold": options["threshold"]}


confirm = arc203.confirm
