"""ARC406 nonlinearity-too-low: a plain deep network that is effectively linear (off by default).

## What it does
Looks at models with at least ``min-layers`` nonlinear layers and no skip connections, and
reports one whose NLC from input to output is below ``threshold``: the nonlinear layers do
almost nothing at initialisation. The predicted value is the mean-field NLC; the measured
output NLC confirms; a model the prediction leaves above the threshold (or cannot follow) is
still reported when the measurement finds its NLC below it. Residual networks are exempt:
starting near the identity is their design (the residual trick), and their NLC at
initialisation says little about their depth. Off by default; select it with
``--extend-select ARC406``. It was ARC102 (the old code still selects and suppresses it).

Off by default because the validation study (benchmarks/validation, docs/validation.md),
with every architecture's value recorded, found its evidence inconsistent. In the
calibration half of all 1600 architectures (768) it applies to 401, 280 of them bad (a base
rate of 0.70); its best threshold there (1.08) flags 31 bad and 5 good, a precision of 0.86
whose lower 95% bound (0.71) is barely above that base rate, and over all of them a lower
NLC ranks the outcome at chance (AUC 0.52). The first 640's calibration half alone had no
such threshold (its best, 1.09, flagged 16 bad and 1 good: a lower bound of 0.73 against a
base rate of 0.74), the second's has one (1.18), and so has the default-init part's (1.44,
AUC 0.71 over 88). A rule or family branch changes status only where both parts of the
study's random population agree (docs/validation.md). Plain deep networks train badly in
that study whatever their NLC: the rule's own condition carries most of the information, not
its value. (On the 832 held out, the default 1.09 flags 30 bad and 6 good of the 423 it
applies to, 281 bad.) Before the 43 values the run had not recorded (models the prediction
cannot follow, 38 of them bad) were added to the first 640, the threshold 1.09 had passed
there (base rate 0.70), and the rule shipped on by default as ARC102.

## Why is this bad?
A network with NLC near 1 computes a nearly linear function of its input: its depth buys
nothing at the start of training, it underfits, and the NLC must grow during training before
the layers become useful. The common cause is an activation run in its linear range: tanh or
sigmoid with small pre-activations (PyTorch's default init gives a deep tanh MLP NLC 1.03),
or smooth activations (ELU, SELU, softplus) at small scale.

## Example
```python
self.net = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(8)])
# default init: weight variance 1/(3 fan_in), so every tanh sees std ~0.3
```

## Use instead
Initialise for the activation's working range (tanh: std 1/sqrt(fan_in), i.e.
``nn.init.xavier_normal_`` or ``nn.init.normal_(w, std=fan_in ** -0.5)``), add normalisation
before the activations, or use fewer layers.

No fix is offered (``--fix``): making a model more nonlinear means choosing depth or
activations, a design decision rather than a mechanical edit.

## Options
- ``threshold`` (default 1.09): the NLC below which the model counts as effectively linear
  (before the validation study: 1.1).
- ``min-layers`` (default 3): fewer nonlinear layers than this are not looked at.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021.
- archlint's digest of the guide: sections 2.3 (default init) and 3 (NLC-RANGE, INIT-SCALE).
"""

from __future__ import annotations

from dataclasses import replace

from archlint import evidence, patterns
from archlint.rule import at_model, Verdict

CODE = "ARC406"
NAME = "nonlinearity-too-low"
SEVERITY = "warning"
SUMMARY = "A plain deep network is effectively linear at initialisation (off by default)"
OPTIONS = {"threshold": 1.09, "min-layers": 3}


def _layers(graph, options) -> int | None:
    """The number of nonlinear layers of a plain model the rule looks at, else None."""
    if graph.output is None or patterns.has_skip_connections(graph):
        return None
    layers = sum(len(run.layers) for run in patterns.plain_runs(graph))
    return layers if layers >= int(options["min-layers"]) else None


def check(graph, options, context):
    layers = _layers(graph, options)
    if layers is None:
        return []
    threshold = float(options["threshold"])
    predicted = evidence.predicted_nlc(graph, graph.output)
    # Statically, only a prediction raises the question; a model the predictor cannot follow
    # is judged by the measurement every model gets (find).
    if predicted is None or predicted >= threshold:
        return []
    return [_finding(graph, layers, threshold, predicted=predicted)]


def find(graph, report, options, context):
    """From the measurement: an output NLC below the threshold that the static pass did not
    report. The threshold was calibrated on the measured value (the validation study)."""
    layers = _layers(graph, options)
    if layers is None:
        return []
    finding = _finding(graph, layers, float(options["threshold"]), predicted=evidence.predicted_nlc(graph, graph.output))
    verdict = confirm(finding, report, options)
    return [replace(finding, measured=verdict.measured)] if verdict.confirmed else []


def _finding(graph, layers, threshold, **fields):
    return at_model(graph, graph.output,
        code=CODE,
        message=f"{graph.name} has {layers} nonlinear layers but NLC {{value}}: it is nearly linear",
        threshold=threshold,
        explanation=(
            "with NLC near 1 the layers compute an almost linear function at initialisation, "
            "so the depth buys nothing and the network underfits until training bends it"
        ),
        fix=(
            "initialise for the activation's working range (tanh: std 1/sqrt(fan_in)), "
            "normalise before the activations, or use fewer layers"
        ),
        **fields,
    )


def confirm(finding, report, options):
    value = evidence.measured_nlc(report, report.output)
    if value is None:
        return Verdict(None, None, f"the output NLC could not be measured (signal {report.status})")
    return Verdict(value < finding.threshold, value)
