"""ARC205 output-scale: the model's outputs are huge, or dominated by a constant from the output layer.

## What it does
Predicts the standard deviation of the model's output (logits) over units and inputs, and
reports it above ``max-std`` (``conv-max-std`` for models with convolutions). Also reports
an output whose neuron bias (the share of its RMS that does not depend on the input) is
above ``max-neuron-bias`` when the output layer itself adds that constant: its input is not
collapsed (a collapse upstream is ARC201). The verification pass measures both. Where the
predictor does not follow the model (max pooling, attention) or predicted a std within the
limit, the measured std every model gets is judged alone (its threshold was calibrated on
measured values; the neuron bias's limit was not, so it is judged only where it is
predicted).

MLPs with BatchNorm are left to ARC409 (off by default): in the validation study their
output std did not rank their outcomes (docs/validation.md).

## Why is this bad?
Logits with a large scale at initialisation make the softmax saturate: the first loss values
are huge, the gradients come from a handful of samples, and the first steps are spent
shrinking the output layer. An output dominated by a constant (a large output bias) is the
same for every input, so the early gradients mostly move that constant (the "output bias"
risk factor of Philipp and Carbonell 2018).

## Example
```python
self.head = nn.Linear(512, 10)
nn.init.normal_(self.head.weight, std=1.0)   # logits std ~ sqrt(512) * input scale
```

## Use instead
Initialise the output layer small (``std=1/sqrt(fan_in)`` or smaller; zero is fine for the
last layer of a classifier), and its bias at zero (or at the log class priors).

``--fix`` (verified) for a large output std: the output layer is initialised with gain 1
(std 1/sqrt(fan_in)), editing its existing ``nn.init`` call or adding one. A
constant-dominated output gets no fix.

## Options
- ``max-std`` (default 6.32): the output std above which the scale is reported, for models
  without convolutions (before the validation study: 5).
- ``conv-max-std`` (default 1.18): the same for models with convolutions (before the study:
  5). The study's threshold over all its architectures; at it, MLPs were reported at a
  precision of 0.76, so they have their own.
- ``max-neuron-bias`` (default 0.9): the output neuron bias above which it is reported (not
  calibrated: the study records the output std).

Calibrated on 768 architectures of the validation study: precision 0.92, recall 0.25; on the
832 held out: precision 0.89, recall 0.22.

## References
- G. Philipp, J. Carbonell, "The Nonlinearity Coefficient - Predicting Generalization in
  Deep Neural Networks", 2018 (output bias).
- archlint's digest of the guide: section 3 (rule BIAS) and section 4.4.
"""

from __future__ import annotations

from archlint import evidence, patterns
from archlint.rule import at_node, Verdict

CODE = "ARC205"
NAME = "output-scale"
SEVERITY = "warning"
SUMMARY = "The model's outputs are very large, or dominated by a constant from the output layer"
OPTIONS = {"max-std": 6.32, "conv-max-std": 1.18, "max-neuron-bias": 0.9}


def check(graph, options, context):
    if patterns.is_batchnorm_mlp(graph):
        return []  # ARC409's, off by default (the docstring says why)
    return output_scale(graph, options, CODE)


def find(graph, report, options, context):
    """From the measurement: an output std above the model's limit (``max-std``, or
    ``conv-max-std`` for CNNs) where the predictor does not follow the model (max pooling,
    attention) or predicted one under it. The limit was calibrated on the measured std (the
    validation study); the neuron bias's was not, so it is judged only where it is predicted."""
    if patterns.is_batchnorm_mlp(graph):
        return []
    return output_scale_measured(graph, report, options, CODE)


def output_scale(graph, options, code):
    """The finding of a predicted output std above the model's limit, else of a constant the
    output layer adds (ARC205, and ARC409 for MLPs with BatchNorm)."""
    if graph.output is None or not patterns.sources(graph):
        return []
    std = evidence.predicted_std(graph, graph.output)
    if std is not None and std > patterns.family_threshold(graph, options, "max-std"):
        return [_std_finding(graph, code, options, predicted=std)]
    nb = evidence.predicted(graph, graph.output)
    before = evidence.predicted(graph, patterns.head_input(graph))
    if _added_by_output_layer(nb, before, options):
        return [_bias_finding(graph, code, options, predicted=nb.neuron_bias)]
    return []


def output_scale_measured(graph, report, options, code):
    """The finding of a measured output std above the model's limit (``find``)."""
    if graph.output is None or not patterns.sources(graph):
        return []
    out = evidence.measured(report, graph.output)
    if out is None or out.std is None or out.std <= patterns.family_threshold(graph, options, "max-std"):
        return []
    return [_std_finding(graph, code, options, measured=out.std, predicted=evidence.predicted_std(graph, graph.output))]


def _added_by_output_layer(output, head_input, options) -> bool:
    """The output's neuron bias is above the limit and its input's is not: the output layer
    adds the constant (a collapse upstream is ARC201's)."""
    limit = float(options["max-neuron-bias"])
    if output is None or output.neuron_bias is None or head_input is None or head_input.neuron_bias is None:
        return False
    return output.neuron_bias > limit and head_input.neuron_bias <= limit


def _std_finding(graph, code, options, **fields):
    return at_node(graph, graph[graph.output],
        code=code,
        message=f"{graph.name}'s outputs have std {{value}} at initialisation",
        threshold=patterns.family_threshold(graph, options, "max-std"),
        explanation="large logits saturate the softmax: the first losses are huge and the gradients come from a few samples",
        fix="initialise the output layer small (std 1/sqrt(fan_in) or less, or zeros) with a zero bias",
        data={"kind": "std"},
        **fields,
    )


def _bias_finding(graph, code, options, **fields):
    return at_node(graph, graph[graph.output],
        code=code,
        message=f"{graph.name}'s output layer adds a constant that makes up {{value}} of the output's RMS",
        threshold=float(options["max-neuron-bias"]),
        explanation="an output dominated by an input-independent constant is the same for every input, so the first gradients mostly move that constant",
        fix="initialise the output layer's bias at zero (or at the log class priors) and its weights at std 1/sqrt(fan_in)",
        data={"kind": "neuron-bias"},
        **fields,
    )


def confirm(finding, report, options):
    stats = evidence.measured(report, report.output)
    if stats is None or stats.std is None:
        return Verdict(None, None, f"the output could not be measured (signal {report.status})")
    if finding.data["kind"] == "std":
        return Verdict(stats.std > finding.threshold, stats.std)
    return Verdict(stats.neuron_bias is not None and stats.neuron_bias > finding.threshold, stats.neuron_bias)
