"""ARC303 small-batch-batchnorm: train-mode BatchNorm trained on small batches.

## What it does
Flags a model with BatchNorm layers in train mode when the configured batch size
(``--batch-size``, ``batch-size`` in the config) is below 32 (a warning) or at most 4 (an
error). The predicted value is how much more nonlinear the function that is trained is than
the eval-mode network: the ratio of the batch NLC to the population NLC,

    product over the train-mode BatchNorm layers on the way to the output of
    sqrt((n - 2) / (n - 3)),   n = B x positions per channel

for batch size B (n = B for BatchNorm1d on features; degenerate for n <= 3). The
verification pass measures both NLCs at batch size B and confirms the finding when the
ratio exceeds the threshold. Convolutional BatchNorm averages over every position of the
batch, so its NLC inflation is small and the measurement usually dismisses the finding;
its batch statistics are still noisy at such batch sizes (Wu and He measure ResNet-50's
ImageNet error rising steeply below 16 images per batch).

## Why is this bad?
In train mode a BatchNorm layer normalises each unit over the batch, so a sample's output
depends on the other samples: the function that is trained maps a whole batch to a whole
batch. Normalising B values to zero mean and unit variance projects them onto a sphere of
dimension B - 2, which bends: for Gaussian pre-activations each layer multiplies the NLC of
that function by sqrt((B - 2) / (B - 3)) (the Jacobian of x -> x/|x| on a k-dimensional
Gaussian, with E 1/|x|^2 = 1/(k - 2)): 1.10 for B = 8, 1.41 for B = 4, and the factors
compound with depth. A depth-10 BatchNorm-ReLU network with a population NLC of 6.8 has a batch NLC of
8.3 at B = 32, 18.6 at B = 8 and 288 at B = 4; at B = 2 every pair of samples maps to
+-1 and the gradient carries no information. Training then optimises a far more nonlinear
(and noisier) function than the one evaluated, and the running statistics used at test
time come from very noisy batch estimates.

## Example
```python
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.bn1 = nn.BatchNorm1d(64)  # trained with --batch-size 4
        ...
```

## Use instead
Normalise without the batch: ``nn.GroupNorm`` or ``nn.LayerNorm`` (or ``nn.InstanceNorm``
for images), or train with batches of 32 or more (gradient accumulation does not help:
BatchNorm still sees the micro-batch). If the pretrained statistics are good, freeze the
BatchNorm layers in eval mode while fine-tuning.

``--fix`` (verified): each train-mode BatchNorm becomes ``nn.GroupNorm``: one group over
features (``nn.GroupNorm(1, 64)``), up to 32 groups over maps.

## Options
- ``warn-below`` (32): batch sizes below this are a warning.
- ``error-at-most`` (4): batch sizes at or below this are an error.
- ``threshold`` (1.1): the batch/population NLC ratio above which the measurement confirms.

The batch size itself is the run's ``--batch-size`` (``batch-size`` in the config), not an
option of this rule.

## References
- archlint NLC digest §1.5 (batch-dependent networks; the measured table above).
- S. Ioffe, *Batch Renormalization: Towards Reducing Minibatch Dependence in
  Batch-Normalized Models*, NeurIPS 2017.
- Y. Wu and K. He, *Group Normalization*, ECCV 2018.
"""

from __future__ import annotations

import math

from archlint.graph import OpKind
from archlint.rule import at_node, Verdict

CODE = "ARC303"
NAME = "small-batch-batchnorm"
SEVERITY = "warning"
SUMMARY = "Train-mode BatchNorm with a batch size below 32 trains a more nonlinear function"
OPTIONS = {"warn-below": 32, "error-at-most": 4, "threshold": 1.1}


def inflation(counts: list[int]) -> float | None:
    """Predicted batch NLC / population NLC for BatchNorm layers whose statistics are each
    taken over ``counts[i]`` values; None where it is degenerate (a count <= 3)."""
    if any(n <= 3 for n in counts):
        return None
    return math.prod(math.sqrt((n - 2) / (n - 3)) for n in counts)


def _count(node, batch: int) -> int:
    """Values per channel a BatchNorm statistic is taken over: the batch times the
    positions (BatchNorm2d on 8x8 maps at batch 4 averages 256 values)."""
    shape = node.shape or ()
    return batch * math.prod(shape[2:])


def check(graph, options, context):
    # The batch the model is trained with: the run's --batch-size (also the measured batch).
    batch = context.batch_size
    if batch >= options["warn-below"] or graph.output is None:
        return []
    upstream = graph.ancestors(graph.output) | {graph.output}
    bns = [n for n in graph.of_kind(OpKind.NORM)
           if n.attrs.get("norm_type") == "batch" and n.attrs.get("training") and n.name in upstream]
    if not bns:
        return []
    predicted = inflation([_count(n, batch) for n in bns])
    severity = "error" if batch <= options["error-at-most"] else "warning"
    s = "s" if len(bns) > 1 else ""
    # {value}: the engine fills in the measured ratio, else the predicted one.
    effect = ("{value}x as nonlinear as the eval-mode network (batch/population NLC)" if predicted is not None
              else "degenerate: with 3 or fewer samples BatchNorm leaves the gradient almost no information")
    return [at_node(graph, bns[0],
        code=CODE,
        message=(f"{len(bns)} train-mode BatchNorm layer{s} with batch size {batch}: "
                 f"the function that is trained is {effect}"),
        severity=severity,
        predicted=predicted,
        threshold=float(options["threshold"]),
        explanation=("in train mode BatchNorm normalises over the batch, so each sample's output depends "
                     "on the others; small batches make the trained function far more nonlinear"),
        fix="use nn.GroupNorm or nn.LayerNorm, or train with batches of 32 or more",
        data={"batch_size": batch, "layers": [n.name for n in bns]},
    )]


def confirm(finding, report, options):
    out = report.output_stats
    if report.mode != "train-bn":
        return Verdict(False, None, "measured in eval mode: no layer uses batch statistics")
    batch, population = out.nlc, out.nlc_population
    if out.status != "ok":
        # At B = 2 the batch Jacobian is 0 or the signal collapses: nothing left to train.
        return Verdict(True, None, f"at batch size {report.batch_size} the output is {out.status}")
    if population is None or out.status_population != "ok" or not population > 0:
        return Verdict(None, None, f"batch NLC {batch:.3g}; no population (eval) NLC to compare with")
    ratio = batch / population
    note = f"batch NLC {batch:.3g} at batch size {report.batch_size}, population NLC {population:.3g}"
    return Verdict(ratio > options["threshold"], ratio if math.isfinite(ratio) else None, note)
