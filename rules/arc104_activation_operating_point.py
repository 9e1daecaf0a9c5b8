"""ARC104 activation-operating-point: an activation runs in a highly nonlinear regime.

## What it does
For every elementwise activation, predicts the NLC of that one layer from the mean and spread
of its input (the mean-field state of its pre-activation, integrated numerically through the
activation itself, so any elementwise function is covered, not a table of names), and
reports the activations whose layer NLC is above ``threshold``: one finding per activation
function, at its worst layer, saying how many layers of that function are above. Typical
causes: tanh, sigmoid or hardtanh with pre-activation std above about 2 (saturated), the ReLU
family with mean/std below about -1 (mostly off), GELU/SiLU around mean -1 to -2 (their
non-monotone dip), even functions such as abs (1.66 at any scale). The verification pass
measures the layer's own NLC (tangent entering at its input). Activations after an op the
predictor does not model (max pooling, attention) are not looked at, nor are those no value
the model returns depends on (a branch's condition, ``if torch.tanh(h).mean() > t:``).

It judges networks without BatchNorm. Those with it are left to ARC405 (off by default): in
the validation study the worst layer NLC ranked the outcomes of MLPs with BatchNorm at AUC
0.24 over 55 architectures and of CNNs with BatchNorm at 0.48 over 68 (0.5 is chance), with
no threshold at the study's precision goal (docs/validation.md).

## Why is this bad?
A layer's NLC multiplies into the network's (digest §1.6): tanh at std 2 is 1.27 per layer,
at std 8 it is 2.17, and a 10-layer tanh net with weight variance 4/fan_in measures 5.2. A
saturated unit also passes almost no gradient; a ReLU that is mostly off is mostly dead.

## Example
```python
self.fc = nn.Linear(256, 256)
nn.init.normal_(self.fc.weight, std=3 / 256 ** 0.5)  # pre-activation std 3
...
x = torch.tanh(self.fc(x))
```

## Use instead
Move the operating point: initialise the preceding layer for the activation (tanh: std
1/sqrt(fan_in)), remove a large negative bias before a ReLU, normalise before the activation
(BatchNorm fixes it at N(0, gamma^2): ReLU 1.211, tanh 1.085 at gamma = 1), or choose an
activation that is less nonlinear at that operating point.

``--fix`` (verified), for saturating activations (tanh, sigmoid, ...): the layer before is
initialised with gain 1 (std 1/sqrt(fan_in)), by rescaling the constant of its existing
``nn.init`` call or adding one after its construction. Mostly-off ReLUs (a bias to remove)
and even activations get no fix.

## Options
- ``threshold`` (default 1.22): the per-layer NLC above which a layer is reported (BN-ReLU,
  1.211 per layer, is below it; before the validation study: 1.25).

Calibrated on 768 architectures of the validation study: precision 0.88, recall 0.16; on the
832 held out: precision 0.79, recall 0.15.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021: activation functions and their operating points.
- archlint's digest of the guide: section 2.2 (tables A-D) and section 3 (rule
  ACT-OPERATING-POINT).
"""

from __future__ import annotations

from archlint import evidence, patterns
from archlint.rule import at_node, Verdict

CODE = "ARC104"
NAME = "activation-operating-point"
SEVERITY = "warning"
SUMMARY = "An activation runs in a highly nonlinear regime (saturated, mostly off, or even)"
OPTIONS = {"threshold": 1.22}

EVEN = {"abs", "square", "cos"}


def _fix(activation: str, mean: float, std: float) -> str:
    if activation in patterns.SATURATING:
        return (
            f"scale the pre-activations down (std {evidence.fmt(std)} now): initialise the preceding "
            "layer with std 1/sqrt(fan_in), or normalise before the activation with a gain of at most 1"
        )
    if activation in EVEN:
        return "use a monotone activation: an even function folds the input in two at every layer"
    if mean < 0:
        return (
            f"the pre-activations are mostly negative (mean/std {evidence.fmt(mean / std)}): remove the "
            "negative bias or re-centre them with a normalisation before the activation"
        )
    return "move the operating point: change the preceding layer's init or normalise before the activation"


def check(graph, options, context):
    if patterns.has_batchnorm(graph):
        return []  # ARC405's, off by default (the docstring says why)
    return operating_points(graph, options, CODE)


def operating_points(graph, options, code):
    """The findings of activations whose predicted layer NLC is above the threshold (ARC104,
    and ARC405 for networks with BatchNorm)."""
    threshold = float(options["threshold"])
    signal = patterns.live_signal_nodes(graph)
    worst: dict[str, tuple[float, str, int]] = {}
    for node in graph.nodes:
        if not patterns.is_elementwise_activation(node) or node.name not in signal or not node.inputs:
            continue
        pre = node.inputs[0]
        layer_nlc = evidence.predicted_segment_nlc(graph, pre, node.name) if evidence.predicted(graph, pre) else None
        if layer_nlc is None or layer_nlc <= threshold:
            continue
        name = patterns.activation_name(node)
        best, where, count = worst.get(name, (0.0, node.name, 0))
        worst[name] = (layer_nlc, node.name, count + 1) if layer_nlc > best else (best, where, count + 1)
    findings = []
    total = {}
    for node in graph.nodes:
        if patterns.is_elementwise_activation(node):
            total[patterns.activation_name(node)] = total.get(patterns.activation_name(node), 0) + 1
    for name, (layer_nlc, where, count) in worst.items():
        node = graph[where]
        pre = node.inputs[0]
        state = evidence.predicted(graph, pre)
        mean = state.mean or 0.0
        std = evidence.predicted_std(graph, pre) or 0.0
        others = f"; {count} of {total[name]} {name} layers {'is' if count == 1 else 'are'} above the threshold" if total[name] > 1 else ""
        at = f" at {node.module_path}" if node.module_path else ""
        findings.append(at_node(graph, node,
            code=code,
            message=(
                f"{name}{at} runs at pre-activation mean "
                f"{evidence.fmt(mean)}, std {evidence.fmt(std)}: layer NLC {{value}}{others}"
            ),
            predicted=layer_nlc,
            threshold=threshold,
            explanation=(
                "an activation's NLC depends on where its inputs fall: saturated, mostly-off or "
                "folding units make every layer more nonlinear, and layer NLCs multiply with depth"
            ),
            fix=_fix(name, mean, std if std > 0 else 1.0),
            segment=(pre, where),
        ))
    return findings


def confirm(finding, report, options):
    value = evidence.measured_segment_nlc(report, *finding.segment)
    if value is None:
        return Verdict(None, None, "the layer's NLC could not be measured")
    stats = evidence.measured(report, finding.segment[0])
    note = None
    if stats is not None and stats.mean is not None and stats.std is not None:
        note = f"measured pre-activation mean {evidence.fmt(stats.mean)}, std {evidence.fmt(stats.std)}"
    return Verdict(value > float(options["threshold"]), value, note)
