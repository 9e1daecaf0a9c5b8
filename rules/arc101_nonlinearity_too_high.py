"""ARC101 nonlinearity-too-high: the model's NLC at initialisation is above the band.

## What it does
Predicts the NLC from the model's input to its output (mean-field, digest §6) and reports it
when it is above ``threshold`` (models without convolutions) or ``conv-threshold`` (models
with convolutions). The verification pass measures the output NLC and confirms or dismisses.
Where the predictor does not model an op (max pooling, attention), the NLC is measured
instead, and only a measured value is reported, for models with enough nonlinear layers to
reach the threshold at the BN-ReLU rate (1.211 per layer). A model predicted under the
threshold is still reported when the measurement every model gets finds its NLC above it
(the threshold was calibrated on measured values). The finding points at the model's class or
factory. When a more specific rule explains the high NLC (ARC103 deep-plain-stack, ARC104
activation-operating-point, ARC403 residual-branch-dominates), that finding is shown instead.

It judges models without convolutions, and models with convolutions but no BatchNorm. CNNs
with BatchNorm are left to ARC401 (off by default): in the validation study their NLC at
initialisation did not rank their outcomes (docs/validation.md).

## Why is this bad?
The NLC at initialisation predicts test error after training: networks whose NLC is far
above about 1-3 fit highly folded functions and overfit (Philipp and Carbonell 2018; Philipp
2021). A high NLC also narrows the usable learning-rate range and amplifies rounding.

## Example
```python
self.net = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(12)])
for m in self.net.modules():
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=3 / 256 ** 0.5)   # sigma_w^2 = 9
```

## Use instead
Bring the NLC into the band: skip connections (dilution), fewer nonlinear layers, an
activation operated in its near-linear range (a smaller init gain for tanh: std
1/sqrt(fan_in)), or nonlinearity normalisation (digest §5).

No fix is offered (``--fix``): the NLC of a whole model has many causes; the more specific
rules (ARC103, ARC104, ARC403) carry the fixes.

## Options
- ``threshold`` (default 21.5): for models without convolutions; calibrated on the study's
  MLPs (before it: 3.0, the top of the 1-3 band the guide found best for MLPs).
- ``conv-threshold`` (default 5.14): for models with convolutions (and no BatchNorm, see
  "Which models"); the study's threshold over all its architectures, because almost every
  CNN without BatchNorm trained worse than the best CNNs and that family alone has too few
  good ones to place its own (before it: 100, where the guide's precision argument starts).
  CNNs with BatchNorm that are known to train well measure 5-60 at initialisation, which
  is why they are ARC401's.

Calibrated on 768 architectures of the validation study: precision 0.94, recall 0.13; on the
832 held out: precision 0.98, recall 0.11.

## References
- G. Philipp, J. Carbonell, "The Nonlinearity Coefficient - Predicting Generalization in
  Deep Neural Networks", 2018.
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021.
- archlint's digest of the guide: sections 1.1, 2.1 and 3 (rule NLC-RANGE).
"""

from __future__ import annotations

from dataclasses import replace

from archlint import evidence, patterns
from archlint.rule import at_model, Verdict

CODE = "ARC101"
NAME = "nonlinearity-too-high"
SEVERITY = "warning"
SUMMARY = "The NLC at the model's output is above the band that generalises well"
OPTIONS = {"threshold": 21.5, "conv-threshold": 5.14}
# More specific rules that explain a high NLC: their finding replaces this one.
SUBSUMED_BY = ("ARC103", "ARC104", "ARC403")

def check(graph, options, context):
    if patterns.is_batchnorm_cnn(graph):
        return []  # ARC401's, off by default (the docstring says why)
    return output_nlc(graph, options, CODE)

def output_nlc(graph, options, code):
    """The finding of an output NLC above the model's threshold (ARC101, and ARC401 for CNNs
    with BatchNorm)."""
    if graph.output is None or not patterns.sources(graph):
        return []
    threshold = patterns.family_threshold(graph, options)
    predicted = evidence.predicted_nlc(graph, graph.output)
    unpredicted = evidence.predicted(graph, graph.output) is None
    if not unpredicted and (predicted is None or predicted <= threshold * patterns.prediction_margin(graph)):
        return []
    live = patterns.live_signal_nodes(graph)
    nonlinear = sum(1 for n in graph.nodes if n.is_nonlinear and n.name in live)
    if unpredicted and not patterns.worth_measuring(nonlinear, threshold):
        return []
    return [_finding(graph, code, threshold, predicted=predicted, needs_measurement=unpredicted)]


def find(graph, report, options, context):
    """From the measurement: an output NLC above the threshold that the static pass did not
    report (its prediction was under the threshold's margin). The threshold was calibrated
    on the measured value (the validation study), so the measured value decides."""
    if patterns.is_batchnorm_cnn(graph) or graph.output is None or not patterns.sources(graph):
        return []
    finding = _finding(graph, CODE, patterns.family_threshold(graph, options),
                       predicted=evidence.predicted_nlc(graph, graph.output))
    verdict = confirm(finding, report, options)
    return [replace(finding, measured=verdict.measured)] if verdict.confirmed else []


def _finding(graph, code, threshold, **fields):
    return at_model(graph, graph.output,
        code=code,
        message=f"{graph.name} has NLC {{value}} from its input to its output",
        threshold=threshold,
        explanation=(
            "a network that is highly nonlinear at initialisation fits a highly folded function "
            "and generalises worse; the guide's best networks have NLC about 1-3"
        ),
        fix=(
            "add skip connections, use fewer nonlinear layers, run the activations in their "
            "near-linear range (smaller init gain for tanh/sigmoid, BatchNorm gain < 1), or "
            "normalise the nonlinearity"
        ),
        **fields,
    )

def confirm(finding, report, options):
    threshold = finding.threshold
    value = evidence.measured_nlc(report, report.output)
    if value is None:
        return Verdict(None, None, f"the output NLC could not be measured (signal {report.status})")
    return Verdict(value > threshold, value)
