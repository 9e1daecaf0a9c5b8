"""ARC205 output-scale: the model's outputs are huge, or dominated by a constant from the output layer.

## What it does
Predicts the standard deviation of the model's output (logits) over units and inputs, and
reports it above ``max-std``. Also reports an output whose neuron bias (the share of its RMS
that does not depend on the input) is above ``max-neuron-bias`` when the output layer itself
adds that constant: its input is not collapsed (a collapse upstream is ARC201). The
verification pass measures both.

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
- ``max-std`` (default 1.33): the output std above which the scale is reported (before the
  validation study: 5).
- ``max-neuron-bias`` (default 0.9): the output neuron bias above which it is reported (not
  calibrated: the study records the output std).

Calibrated on 309 architectures of the validation study: precision 0.85, recall 0.23; on the
331 held out: precision 0.74, recall 0.16.

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
OPTIONS = {"max-std": 1.33, "max-neuron-bias": 0.9}


def check(graph, options, context):
    if graph.output is None or not patterns.sources(graph):
        return []
    out = graph[graph.output]
    std = evidence.predicted_std(graph, graph.output)
    if std is not None and std > float(options["max-std"]):
        return [at_node(graph, out,
            code=CODE,
            message=f"{graph.name}'s outputs have std {{value}} at initialisation",
            predicted=std,
            threshold=float(options["max-std"]),
            explanation="large logits saturate the softmax: the first losses are huge and the gradients come from a few samples",
            fix="initialise the output layer small (std 1/sqrt(fan_in) or less, or zeros) with a zero bias",
            data={"kind": "std"},
        )]
    nb = evidence.predicted(graph, graph.output)
    head_input = patterns.head_input(graph)
    before = evidence.predicted(graph, head_input)
    limit = float(options["max-neuron-bias"])
    if nb is None or nb.neuron_bias is None or before is None or before.neuron_bias is None:
        return []
    if nb.neuron_bias <= limit or before.neuron_bias > limit:
        return []
    return [at_node(graph, out,
        code=CODE,
        message=f"{graph.name}'s output layer adds a constant that makes up {{value}} of the output's RMS",
        predicted=nb.neuron_bias,
        threshold=limit,
        explanation="an output dominated by an input-independent constant is the same for every input, so the first gradients mostly move that constant",
        fix="initialise the output layer's bias at zero (or at the log class priors) and its weights at std 1/sqrt(fan_in)",
        data={"kind": "neuron-bias"},
    )]


def confirm(finding, report, options):
    stats = evidence.measured(report, report.output)
    if stats is None or stats.std is None:
        return Verdict(None, None, f"the output could not be measured (signal {report.status})")
    if finding.data["kind"] == "std":
        return Verdict(stats.std > float(options["max-std"]), stats.std)
    return Verdict(stats.neuron_bias is not None and stats.neuron_bias > float(options["max-neuron-bias"]), stats.neuron_bias)
