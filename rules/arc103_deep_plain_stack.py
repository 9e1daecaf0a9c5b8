"""ARC103 deep-plain-stack: many nonlinear layers in a chain with no skip connection.

## What it does
Finds runs of nonlinear layers (Linear/Conv, optional normalisation, activation) along the
model's main path with no skip connection among them, at least ``min-layers`` long, and
reports a run whose NLC, the product of its layers' NLCs, exceeds ``threshold``. The
predicted value is the mean-field NLC of the run (digest §6); the verification pass measures
the run's NLC directly (the tangent enters at the run's first node). Where the predictor
does not model an op of the run (max pooling, gating), the run is reported as a pattern to
be measured when it is long enough to cross the threshold at the BN-ReLU rate of 1.211 per
layer. The finding points at the first layer of the run.

It judges models without convolutions, and models with convolutions but no BatchNorm. CNNs
with BatchNorm are left to ARC402 (off by default): in the validation study their NLC at
initialisation did not rank their outcomes (docs/validation.md).

## Why is this bad?
The NLC composes multiplicatively: a chain of L layers with per-layer NLC c has NLC about
c^L (digest §1.6). BatchNorm fixes every ReLU at its N(0, 1) operating point, where its NLC is
1.211, so 10 Linear-BN-ReLU layers measure 6.8 and 20 measure 41.5, far above the band of
about 1-3 in which networks generalise best (Philipp 2021). The same mechanism makes the
gradients explode with depth (Philipp et al. 2018, "gradients explode").

## Example
```python
layers = []
for _ in range(20):
    layers += [nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU()]
self.body = nn.Sequential(*layers)
```

## Use instead
Add skip connections, so that each block's nonlinearity is diluted by the skip (digest §1.6:
40 residual BN-ReLU blocks measure 1.8 against 1601 without skips):
```python
class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.f(x)
```
Other ways down: fewer layers (prefer width over depth), a less nonlinear activation at the
same operating point (ELU/SELU/softplus are about 1.04 per layer at N(0, 1)), or BN with a
smaller gain so the activations run in their near-linear range.

``--fix`` (verified): in a stack of ReLUs, each ``nn.ReLU`` becomes ``nn.LeakyReLU(a)`` with
the slope that brings the stack to NLC 2 (the README's 20-layer BN-ReLU MLP: measured 47.4,
fixed 2.1). Stacks of other activations, or of functional ``relu`` calls, get no fix; skip
connections are the better remedy but not a mechanical edit.

## Options
- ``threshold`` (default 24.1): the NLC above which a plain run is reported in a model
  without convolutions; calibrated on the study's MLPs (before it: 3.0, the top of the 1-3
  band of the practical guide).
- ``conv-threshold`` (default 9.35): the same for models with convolutions and no
  BatchNorm (CNNs with BatchNorm are ARC402's); the study's threshold over all its
  architectures, as for ARC101's (before it: 100).
- ``min-layers`` (default 6): the shortest run looked at (1.211^6 = 3.2).

Calibrated on 768 architectures of the validation study: precision 0.92, recall 0.07; on the
832 held out: precision 1.00, recall 0.06.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021: depth, normalisation and skip connections.
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018.
- archlint's digest of the guide: sections 1.6 and 3 (rule DEPTH-COMPOUNDING,
  BN-CHAIN-WITHOUT-SKIP).
"""

from __future__ import annotations

from archlint import evidence, patterns
from archlint.rule import at_node, Verdict

CODE = "ARC103"
NAME = "deep-plain-stack"
SEVERITY = "warning"
SUMMARY = "Many nonlinear layers in a chain with no skip connection compound the NLC"
OPTIONS = {"threshold": 24.1, "conv-threshold": 9.35, "min-layers": 6}

EXPLANATION = (
    "NLCs multiply along a chain (about c^L for L layers of NLC c), so without skip "
    "connections the function becomes highly folded at initialisation, which predicts poor "
    "generalisation and exploding gradients."
)

def check(graph, options, context):
    if patterns.is_batchnorm_cnn(graph):
        return []  # ARC402's, off by default (the docstring says why)
    return plain_stacks(graph, options, CODE)

def plain_stacks(graph, options, code):
    """The findings of plain runs whose NLC is above the model's threshold (ARC103, and
    ARC402 for CNNs with BatchNorm)."""
    threshold = patterns.family_threshold(graph, options)
    findings = []
    for run in patterns.plain_runs(graph):
        if len(run.layers) < int(options["min-layers"]):
            continue
        predicted = evidence.predicted_segment_nlc(graph, run.start, run.end)
        if predicted is not None and predicted <= threshold * patterns.prediction_margin(graph):
            continue
        if predicted is None and not patterns.worth_measuring(len(run.layers), threshold):
            continue
        first = patterns.first_op_after(graph, run.start, run.end)
        what = patterns.describe_layers(run.layers)
        findings.append(at_node(graph, first,
            code=code,
            message=f"{what} without a skip connection compound to NLC {{value}}",
            predicted=predicted,
            threshold=threshold,
            explanation=EXPLANATION,
            fix=(
                "add skip connections (x + block(x)) every one or two layers, or use fewer, "
                "wider layers; a less nonlinear activation or a smaller BatchNorm gain also "
                "lowers the per-layer NLC"
            ),
            reason=None if predicted is not None else "not predicted: the mean-field predictor does not model an op in this stack",
            segment=(run.start, run.end),
            data={"layers": len(run.layers)},
        ))
    return findings

def confirm(finding, report, options):
    threshold = finding.threshold
    value = evidence.measured_segment_nlc(report, *finding.segment)
    if value is None:
        status = evidence.measured_status(report, finding.segment[1])
        return Verdict(None, None, f"the stack's NLC could not be measured (signal {status})")
    return Verdict(value > threshold, value, None if value > threshold else f"measured NLC {evidence.fmt(value)} is within the threshold {evidence.fmt(threshold)}")
