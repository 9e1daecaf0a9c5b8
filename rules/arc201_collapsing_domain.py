"""ARC201 collapsing-domain: every input looks the same at the output.

## What it does
For models without BatchNorm-type re-centring (no normalisation, or LayerNorm only) and at
least ``min-layers`` activations on the main path, predicts the neuron bias of the deepest
activation's input (its pre-activation): the share of its RMS that does not depend on the
input, sqrt(M / (M + v)) in the mean-field state (digest §4.4). Reports it above
``threshold``. The verification pass measures the same pre-activation's neuron bias. The
finding points at the first activation whose input is already collapsed. The output layer
is not looked at: a constant added there is ARC205's business.

Every model is measured when verification is on, so the rule also reports from the
measurement alone: the first pre-activation, or feature after the last activation (pooled
or flattened, the head's input), whose measured neuron bias is above ``threshold``. Pooling
averages the input-dependent part away faster than the offsets, so a deep plain CNN can be
collapsed after its pooling while its last pre-activation is just under the threshold.

The wording follows the activations: ReLU-family units collapse to always on or always off
(re-centre them); tanh and sigmoid units get pinned near one value by their offsets (give
the weights std 1/sqrt(fan_in) and zero biases; He init would be the wrong fix there).

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
- ``threshold`` (default 0.731): pre-activation neuron bias above which the domain counts
  as collapsed: the input-dependent part is then under 69% of the RMS (sqrt(1 - 0.731^2)).
  Before the validation study: 0.98. Known to train well in a long schedule and reported at
  this threshold: LeNet-5 with PyTorch's default init (0.93-0.95 at its last hidden layer);
  the study's label is the error after a short one (docs/validation.md, caveats).
- ``min-layers`` (default 3): fewer activations than this are not looked at.

Calibrated on 768 architectures of the validation study: precision 0.85, recall 0.30; on the
832 held out: precision 0.85, recall 0.29.

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
SUMMARY = "Every input looks the same deep in the network: units are stuck, the domain collapsed with depth"
OPTIONS = {"threshold": 0.731, "min-layers": 3}


def _saturating(layers) -> bool:
    """Whether the main path's activations are mostly bounded ones (tanh, sigmoid)."""
    names = [patterns.activation_name(act) for act, _ in layers]
    return sum(name in patterns.SATURATING for name in names) * 2 > len(names)


def _finding(graph, layers, where, options, **fields):
    """The finding at node ``where``, in the words of the network's activations: ReLU units
    switch always on or off and want re-centring; tanh/sigmoid units get pinned near one
    value by their offsets and want weights that outweigh the biases (He init, the ReLU fix,
    would be wrong there)."""
    if _saturating(layers):
        symptom = "its offsets outweigh the input-dependent part, so each unit sits near one value for most inputs (tanh/sigmoid pinned by its offsets)"
        fix = ("initialise the weights at std 1/sqrt(fan_in) with zero biases, so that they outweigh the "
               "offsets, or normalise (BatchNorm) before the activations")
    else:
        symptom = "its offsets outweigh the input-dependent part, so most units are always on or always off, whatever the input"
        fix = ("re-centre with BatchNorm before the activations, add skip connections, or use "
               "He init (std sqrt(2/fan_in)) with zero biases")
    node = graph[where] if isinstance(where, str) else where
    at = f" at {node.module_path or node.op}" if node is not None else ""
    return at_node(graph, node,
        code=CODE,
        message=f"{graph.name}'s signal has neuron bias {{value}}{at}: {symptom}",
        threshold=float(options["threshold"]),
        explanation=(
            "without re-centring, input-independent offsets grow while the input-dependent "
            "part shrinks, until units are stuck and the layers are pseudo-linear: the "
            "effective depth is far below the real depth, and every input looks the same"
        ),
        fix=fix,
        **fields,
    )


def _looked_at(graph, options):
    """The main path's (activation, pre-activation) pairs when the rule applies, else None."""
    if graph.output is None or patterns.has_batchnorm(graph):
        return None
    layers = patterns.pre_activations(graph)
    return layers if len(layers) >= int(options["min-layers"]) else None


def check(graph, options, context):
    layers = _looked_at(graph, options)
    if layers is None:
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
    return [_finding(graph, layers, where, options, node=where.name if where is not None else last_act.name,
                     predicted=deepest.neuron_bias if deepest is not None else None,
                     needs_measurement=deepest is None, data={"pre": last_pre})]


def find(graph, report, options, context):
    """From the measurement: the first pre-activation, or feature after the last activation
    (pooled, flattened, the head's input), whose neuron bias is above the threshold. Pooling
    averages the input-dependent part away faster than the offsets: a plain CNN whose last
    pre-activation is just under the threshold can be collapsed after its pooling."""
    layers = _looked_at(graph, options)
    if layers is None:
        return []
    threshold = float(options["threshold"])
    candidates = [pre for _, pre in layers] + [n for n in patterns.features_after_activations(graph) if n != graph.output]
    for name in candidates:
        stats = evidence.measured(report, name)
        if stats is not None and stats.neuron_bias is not None and stats.neuron_bias > threshold:
            state = evidence.predicted(graph, name)
            return [_finding(graph, layers, name, options, measured=stats.neuron_bias,
                             predicted=state.neuron_bias if state is not None else None, data={"pre": name})]
    return []


def confirm(finding, report, options):
    stats = evidence.measured(report, finding.data["pre"])
    if stats is None or stats.neuron_bias is None:
        return Verdict(None, None, "the pre-activations could not be measured")
    return Verdict(stats.neuron_bias > float(options["threshold"]), stats.neuron_bias)
