"""ARC203 vanishing-signal: the input-dependent signal fades away through the model.

## What it does
Predicts the input-dependent standard deviation (sqrt of the mean over units of Var_x) at the
model's features, the input of its final Linear/Conv layer (or the output when it does not
end in one), relative to that of the input (or the embedding output), and reports a decay
below ``threshold`` (``conv-threshold`` for models with convolutions). The final layer is
left out because a small or zero-initialised output layer is a deliberate and harmless
choice. The verification pass measures the same ratio;
when the signal has dropped below floating-point resolution it says "signal vanished" and
never reports an NLC of 0. A model the prediction leaves above the threshold (or cannot
follow) is still reported when the measurement every model gets finds the decay below it
(the threshold was calibrated on measured values). Averaging counts: pooling, or a mean over
positions or tokens, lowers the ratio of a model's features (LeNet-5 with its default init
measures 0.02, a token classifier that averages over its sequence 0.04); the study's CNNs
pool too, so the threshold was calibrated with it included. CNNs with BatchNorm are left to
ARC407 (off by default; the study found no predictive power there).

## Why is this bad?
With a weight scale below the critical one and no normalisation (PyTorch's default init has
sigma_w^2 = 1/3, a sixth of what a ReLU layer needs to keep the variance), every layer shrinks
the input-dependent signal by a constant factor: after a dozen layers it is buried under the
biases or under rounding error, the output is the same for every input and the gradients
vanish. The NLC is then undefined (0/0): there is no signal left to be nonlinear in.

## Example
```python
self.net = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256, bias=False), nn.ReLU()) for _ in range(12)])
# default init: each layer keeps 1/6 of the variance; 6**-12 of it is left
```

## Use instead
Initialise at the critical scale for the activation (ReLU: ``nn.init.kaiming_normal_``,
tanh: std 1/sqrt(fan_in)), or normalise (BatchNorm/LayerNorm) so that every layer's input has
unit scale.

No fix is offered (``--fix``): the remedy (He init, normalisation, fewer layers) depends on
the architecture.

## Options
- ``threshold`` (default 0.0514): the features/input ratio of input-dependent std below
  which the signal of a model without convolutions counts as vanishing (before the
  validation study: 0.001; after its first 640 architectures: 0.021, after 1280: 0.176). A
  known false alarm at this threshold: MLPs of 3-4 hidden layers at PyTorch's default init
  (0.017-0.051). Trained with the study's protocol (benchmarks/validation/default_init.py),
  8 such MLPs were reported and none trained badly by its label; among the study's own
  default-init MLPs without BatchNorm below the threshold, 2 of 8 with 3-4 layers trained
  badly, 31 of 32 with 8 or more (docs/validation.md).
- ``conv-threshold`` (default 0.332): the same for models with convolutions, whose pooling
  lowers the ratio (before the study: ``threshold``).

Calibrated on 768 architectures of the validation study: precision 0.93, recall 0.39; on the
832 held out: precision 0.96, recall 0.39. The threshold is per family because the families
differ (decided on the calibration half): within MLPs the best threshold is 0.0514 (44 bad,
7 good flagged), and at the global one MLPs were reported at a precision of 0.72. CNNs
without BatchNorm have too few good architectures (12 of 206) for a threshold of their own
and keep the global one, 0.332, most of whose precision is theirs: the study's short SGD
budget rarely trains them well. CNNs with BatchNorm are left to ARC407 (off by default):
there the ratio showed no predictive power (AUC 0.51 over 179 architectures, 116 bad).

## References
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018.
- archlint's digest of the guide: sections 2.3 (default init) and 3 (INIT-SCALE).
"""

from __future__ import annotations

import math
from dataclasses import replace

from archlint import evidence, patterns
from archlint.rule import at_model, Verdict

CODE = "ARC203"
NAME = "vanishing-signal"
SEVERITY = "warning"
SUMMARY = "The input-dependent signal shrinks by orders of magnitude before the output layer"
OPTIONS = {"threshold": 0.0514, "conv-threshold": 0.332}


def _features(graph) -> str:
    """The input of the final Linear/Conv (a small or zero-initialised output layer is a
    deliberate choice), else the output."""
    return patterns.head_input(graph) or graph.output


def _predicted_std(graph, name):
    node = evidence.predicted(graph, name)
    return math.sqrt(node.v) if node is not None and node.v is not None else None


def _predicted_decay(graph, sources, features) -> float | None:
    out = _predicted_std(graph, features)
    ins = [s for s in (_predicted_std(graph, s) for s in sources) if s]
    return out / max(ins) if out is not None and ins else None


def check(graph, options, context):
    if patterns.is_batchnorm_cnn(graph):
        return []  # ARC407's, off by default (the docstring says why)
    return vanishing(graph, options, CODE)


def find(graph, report, options, context):
    """From the measurement: a decay below the threshold that the static pass did not report
    (no prediction, or a predicted one above it). The threshold was calibrated on the
    measured value (the validation study)."""
    if patterns.is_batchnorm_cnn(graph):
        return []
    return vanishing_measured(graph, report, options, CODE)


def vanishing(graph, options, code):
    """The finding of a predicted decay below the threshold (ARC203, and ARC407 for CNNs
    with BatchNorm)."""
    sources = patterns.sources(graph)
    if graph.output is None or not sources:
        return []
    threshold = patterns.family_threshold(graph, options)
    features = _features(graph)
    decay = _predicted_decay(graph, sources, features)
    if decay is None or decay >= threshold:
        return []
    return [_finding(graph, code, sources, features, threshold, predicted=decay)]


def vanishing_measured(graph, report, options, code):
    """The finding of a measured decay below the threshold (``find``)."""
    sources = patterns.sources(graph)
    if graph.output is None or not sources:
        return []
    finding = _finding(graph, code, sources, _features(graph), patterns.family_threshold(graph, options))
    verdict = confirm(finding, report, options)
    if not verdict.confirmed:
        return []
    return [replace(finding, measured=verdict.measured, reason=verdict.note,
                    predicted=_predicted_decay(graph, sources, finding.data["features"]))]


def _finding(graph, code, sources, features, threshold, **fields):
    return at_model(graph, features,
        code=code,
        message=f"{graph.name}'s input-dependent signal shrinks to {{value}} of the input's before its output layer",
        threshold=threshold,
        explanation=(
            "below the critical weight scale and without normalisation every layer shrinks "
            "the input-dependent signal, until the output no longer depends on the input and "
            "the gradients vanish"
        ),
        fix=(
            "initialise at the critical scale for the activation (ReLU: kaiming_normal_, "
            "tanh: std 1/sqrt(fan_in)) or normalise the layers"
        ),
        data={"sources": sources, "features": features},
        **fields,
    )


def confirm(finding, report, options):
    features = finding.data["features"]
    status = evidence.measured_status(report, features)
    if status == "vanished":
        return Verdict(True, None, "signal vanished: no input-dependent variance is left at float64 resolution")
    out = evidence.data_std(report, features)
    ins = [s for s in (evidence.data_std(report, s) for s in finding.data["sources"]) if s]
    if out is None or not ins:
        return Verdict(None, None, f"the signal could not be measured ({status})")
    decay = out / max(ins)
    return Verdict(decay < finding.threshold, decay)
