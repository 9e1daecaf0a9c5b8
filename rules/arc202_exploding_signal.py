"""ARC202 exploding-signal: the activations grow by orders of magnitude through the model.

## What it does
Predicts the RMS of the output relative to the RMS of the input (or of the embedding output
for token models) from the mean-field recursion with the model's actual weights, and reports
a growth above ``threshold``. The verification pass measures both RMS values; where the
predictor does not follow the model (max pooling, attention) or predicted a growth under the
threshold, the measurement every model gets is judged alone (the threshold was calibrated
on measured values), except for token models: their input is an embedding, whose scale is a
convention, and the study had none.

MLPs with BatchNorm are left to ARC408 (off by default): in the validation study their
growth did not rank their outcomes (docs/validation.md).

## Why is this bad?
An un-normalised residual stack adds the branch's variance to the skip's in every block, and
a weight scale above the critical one (sigma_w^2 > 2 for ReLU) multiplies it in every layer:
the signal grows exponentially with depth. Large activations overflow in float16, saturate
any bounded activation downstream, and make the loss scale and learning rate hard to choose.

## Example
```python
for block in self.blocks:      # 30 blocks, He-initialised, no normalisation
    x = x + block(x)           # the variance doubles in every block
```

## Use instead
Normalise (pre-LN/pre-BN residual blocks), scale the residual branches down (zero-init the
last layer of each branch, or x + alpha * f(x) with alpha ~ 1/sqrt(blocks)), or initialise
at the critical scale.

No fix is offered (``--fix``): which layer's init or which normalisation to change depends
on where the growth starts; the finding says where.

## Options
- ``threshold`` (default 6.33): the output/input RMS ratio above which growth is reported,
  for models without convolutions (before the validation study: 100).
- ``conv-threshold`` (default 1.17): the same for models with convolutions (before the
  study: 100). The study's threshold over all its architectures; at it, MLPs were reported
  at a precision of 0.74, so they have their own.

Calibrated on 768 architectures of the validation study: precision 0.91, recall 0.26; on the
832 held out: precision 0.90, recall 0.23.

## References
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018.
- archlint's digest of the guide: sections 3 (INIT-SCALE, skip connections) and 6.
"""

from __future__ import annotations

from dataclasses import replace

from archlint import evidence, patterns
from archlint.rule import at_model, Verdict

CODE = "ARC202"
NAME = "exploding-signal"
SEVERITY = "warning"
SUMMARY = "The signal's RMS grows by orders of magnitude from the input to the output"
OPTIONS = {"threshold": 6.33, "conv-threshold": 1.17}


def _rms_ratio(rms_of, graph_or_report, output, sources):
    out = rms_of(graph_or_report, output)
    ins = [r for r in (rms_of(graph_or_report, s) for s in sources) if r]
    return out / max(ins) if out is not None and ins else None


def _predicted_rms(graph, name):
    node = evidence.predicted(graph, name)
    return node.rms if node is not None else None


def _measured_rms(report, name):
    stats = evidence.measured(report, name)
    return stats.rms if stats is not None else None


def check(graph, options, context):
    if patterns.is_batchnorm_mlp(graph):
        return []  # ARC408's, off by default (the docstring says why)
    return exploding(graph, options, CODE)


def find(graph, report, options, context):
    """From the measurement: a growth above the threshold where the predictor does not follow
    the model (max pooling, attention) or predicted one under it. The threshold was
    calibrated on the measured value (the validation study)."""
    if patterns.is_batchnorm_mlp(graph):
        return []
    return exploding_measured(graph, report, options, CODE)


def exploding(graph, options, code):
    """The finding of a predicted growth above the threshold (ARC202, and ARC408 for MLPs
    with BatchNorm)."""
    sources = patterns.sources(graph)
    if graph.output is None or not sources:
        return []
    threshold = patterns.family_threshold(graph, options)
    growth = _rms_ratio(_predicted_rms, graph, graph.output, sources)
    if growth is None or growth <= threshold:
        return []
    return [_finding(graph, code, sources, threshold, predicted=growth)]


def exploding_measured(graph, report, options, code):
    """The finding of a measured growth above the threshold (``find``), for models whose input
    is the data, as the study's were: a token model's input is its embedding, whose scale is a
    convention (N(0, 1) in PyTorch, std 0.02 in GPT-2), so the study says nothing of its ratio."""
    sources = patterns.sources(graph)
    if graph.output is None or not sources or patterns.has_token_inputs(graph):
        return []
    finding = _finding(graph, code, sources, patterns.family_threshold(graph, options),
                       predicted=_rms_ratio(_predicted_rms, graph, graph.output, sources))
    verdict = confirm(finding, report, options)
    # No measured growth (a NaN or overflowed output): ARC206 reports non-finite outputs.
    if not verdict.confirmed or verdict.measured is None:
        return []
    return [replace(finding, measured=verdict.measured)]


def _finding(graph, code, sources, threshold, **fields):
    return at_model(graph, graph.output,
        code=code,
        message=f"{graph.name}'s activations grow {{value}}x in RMS from the input to the output",
        threshold=threshold,
        explanation=(
            "without normalisation, residual additions and weight scales above the critical "
            "one multiply the signal's variance layer after layer, so it grows exponentially "
            "with depth"
        ),
        fix=(
            "normalise inside the blocks (pre-LN/pre-BN), scale residual branches down "
            "(zero-init their last layer, or x + alpha * f(x)), or initialise at the critical scale"
        ),
        data={"sources": sources},
        **fields,
    )


def confirm(finding, report, options):
    if report.status in ("exploded", "nan"):
        return Verdict(True, None, f"the measured signal {report.status}")
    growth = _rms_ratio(_measured_rms, report, report.output, finding.data["sources"])
    if growth is None:
        return Verdict(None, None, "the RMS could not be measured")
    return Verdict(growth > finding.threshold, growth)
