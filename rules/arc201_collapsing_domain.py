"""ARC201 collapsing-domain: every input looks the same at the output.

## What it does
For models without BatchNorm-type re-centring (no normalisation, or LayerNorm only) and at
least ``min-layers`` activations on the main path, predicts the neuron bias of the deepest
activation's input (its pre-activation): the share of its RMS that does not depend on the
input, sqrt(M / (M + v)) in the mean-field state (digest §4.4). Reports it above
``threshold``. The verification pass measures the same pre-activation's neuron bias. The
finding points at the first activation whose input is already collapsed. The output layer
is not looked at: a constant added there is ARC205's business.

## Why is this bad?
Without re-centring, every layer adds input-independent offsets (biases, the positive mean of
ReLU outputs) while the input-dependent part shrinks or stays: after enough layers each unit
is always on or always off, the layers are pseudo-linear, and the output is nearly the same
for every input (the collapsing domain of Philipp et al. 2018). The network's effective depth
is far smaller than its depth, and gradients carry little information about the input.
PyTorch's default init drives a deep ReLU MLP there within about 10 layers (output neuron
bias 1.0000, digest §2.3). LayerNorm does not help: it rescales but does not remove each
unit's offset.

## Example
```python
self.net = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(12)])
# default init: weight variance 1/(3 fan_in), bias variance 1/(3 fan_in)
```

## Use instead
Re-centre the pre-activations (BatchNorm before the activations), add skip connections,
initialise for the activation (He init, std sqrt(2/fan_in), zero biases for ReLU), or use
fewer layers.

``--fix`` (verified): a BatchNorm of the layer's channels goes between each Linear/Conv and
the activation that follows it in a list or ``nn.Sequential`` literal (VGG-19 becomes
VGG-19-BN). Activations composed in ``forward`` get no fix, and the fix is not offered where
the normalised stack trips another rule (a deep plain stack: ARC103).

## Options
- ``threshold`` (default 0.98): pre-activation neuron bias above which the domain counts as
  collapsed: the input-dependent part is then under 20% of the RMS (sqrt(1 - 0.98^2)). The
  digest's starting point was 0.95, but LeNet-5 with PyTorch's default init measures
  0.93-0.95 at its last hidden layer and trains well; VGG-19 without BatchNorm measures 0.99
  and a 12-layer default-init ReLU MLP 1.0000.
- ``min-layers`` (default 3): fewer activations than this are not looked at.

## References
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018
  (collapsing domain, pseudo-linearity).
- archlint's digest of the guide: sections 2.3, 4.3, 4.4 and 3 (LN/no-norm collapse).
"""

from __future__ import annotations

from archlint import evidence, patterns
from archlint.rule import at_node, Verdict

CODE = "ARC201"
NAME = "collapsing-domain"
SEVERITY = "warning"
SUMMARY = "Units are always on or always off, whatever the input: the domain collapsed with depth"
OPTIONS = {"threshold": 0.98, "min-layers": 3}


def _pre_activations(graph):
    """(activation, its input) along the main path, in forward order."""
    main = set(patterns.main_path(graph))
    return [(n, n.inputs[0]) for n in graph.nodes if n.name in main and patterns.is_elementwise_activation(n) and n.inputs]


def check(graph, options, context):
    if graph.output is None or patterns.has_batchnorm(graph):
        return []
    layers = _pre_activations(graph)
    if len(layers) < int(options["min-layers"]):
        return []
    threshold = float(options["threshold"])
    last_act, last_pre = layers[-1]
    deepest = evidence.predicted(graph, last_pre)
    if deepest is not None and (deepest.neuron_bias is None or deepest.neuron_bias <= threshold):
        return []
    where = None
    for act, pre in layers:
        state = evidence.predicted(graph, pre)
        if state is not None and state.neuron_bias is not None and state.neuron_bias > threshold:
            where = act
            break
    at = f", from {where.module_path or where.name} on" if where is not None else ""
    return [at_node(graph, where, node=where.name if where is not None else last_act.name,
        code=CODE,
        message=(
            f"{graph.name}'s pre-activations have neuron bias {{value}}{at}: every unit is "
            "always on or always off, whatever the input"
        ),
        predicted=deepest.neuron_bias if deepest is not None else None,
        threshold=threshold,
        explanation=(
            "without re-centring, input-independent offsets grow while the input-dependent "
            "part shrinks, until units are always on or always off and the layers are "
            "pseudo-linear: the effective depth is far below the real depth"
        ),
        fix=(
            "re-centre with BatchNorm before the activations, add skip connections, or use "
            "He init (std sqrt(2/fan_in)) with zero biases"
        ),
        needs_measurement=deepest is None,
        data={"pre": last_pre},
    )]


def confirm(finding, report, options):
    stats = evidence.measured(report, finding.data["pre"])
    if stats is None or stats.neuron_bias is None:
        return Verdict(None, None, "the pre-activations could not be measured")
    return Verdict(stats.neuron_bias > float(options["threshold"]), stats.neuron_bias)
