"""ARC403 residual-branch-dominates: residual branches swamp their skip connections (off by default).

## What it does
For every residual block on the model's main path (a region where one path is a skip with no
nonlinearity and the others form the branch, merged by an addition), predicts the block's own
NLC from the dilution formula NLC_block^2 = (k^2 + NLC_r^2) / (k^2 + 1), k being the
skip/branch standard deviation ratio (digest §1.6), via the mean-field recursion. Reports the
worst block when its NLC is above ``threshold``, with the number of blocks above it and the
branch/skip ratio. The verification pass measures that block's NLC (tangent entering at the
block's input). The finding points at the last layer of the branch, the one to scale. Off by
default; select it with ``--extend-select ARC403``. It was ARC105 (the old code still selects
and suppresses it).

Off by default because the validation study (benchmarks/validation, docs/validation.md)
found no predictive power in it: in the calibration half of all 1600 architectures (768), no
threshold on the worst block's NLC reached the study's precision goal of 0.85 above the base
rate (247 architectures, 129 bad), nor in any part of the study alone. Per family, the block
NLC ranked outcomes below chance with BatchNorm (AUC 0.16 over 38 MLPs, 0.37 over 96 CNNs)
and in CNNs without it (0.35 over 58); only in MLPs without BatchNorm did it rank them (AUC
0.70 over 55, 20 bad, with a threshold of 1.15 at the precision goal in both parts of the
random population), a family a rule of its own could judge (not built yet).

## Why is this bad?
A skip connection helps only when it carries a comparable share of the signal: the branch's
excess nonlinearity is divided by k^2 + 1. When the branch's variance is much larger than the
skip's at initialisation (k << 1), the block behaves like a plain layer, and stacking blocks
compounds the NLC exponentially again instead of polynomially.

## Example
```python
def forward(self, x):
    # the branch ends in BatchNorm (std 1) while x is a small signal: k << 1
    return x + self.bn3(self.fc3(self.f(x)))
```

## Use instead
Scale the branch down at initialisation: zero-initialise its last BatchNorm's weight
(``nn.init.zeros_(self.bn3.weight)``) or its last layer, multiply it by a small constant or a
learnable scale (``x + alpha * f(x)``, alpha 0.1-0.3: 40 BN-ReLU blocks measure NLC 1.03 at
alpha = 0.1), or normalise the branch input rather than its output (pre-activation blocks).

``--fix`` (verified): the last normalisation of the branch starts at the weight alpha that
brings the block NLC halfway to the threshold (``nn.init.constant_(self.branch[-1].weight,
0.4)``), or its last Linear/Conv's initial weights are scaled by alpha. Not zero: every
block would be the identity and the network linear.

## Options
- ``threshold`` (default 1.3): the block NLC above which a block is reported.

## References
- G. Philipp, "The Nonlinearity Coefficient: A Practical Guide to Neural Architecture
  Design", 2021: skip connections and dilution.
- G. Philipp, D. Song, J. Carbonell, "The exploding gradient problem demystified", 2018
  (k-dilution).
- archlint's digest of the guide: sections 1.6, 4.7, 4.8 and 3 (SKIP-DILUTION,
  RESIDUAL-SCALE).
"""

from __future__ import annotations

import math

from archlint import evidence, patterns
from archlint.graph import OpKind
from archlint.rule import at_node, Verdict

CODE = "ARC403"
NAME = "residual-branch-dominates"
SEVERITY = "warning"
SUMMARY = "Residual branches are so large at initialisation that the skip connections do not dilute them (off by default)"
OPTIONS = {"threshold": 1.3}


def _branch_and_skip(graph, region):
    """The add's (branch input, skip input), or None when the merge is not a residual add."""
    merge = graph[region.end]
    if merge.kind != OpKind.ADD or len(merge.inputs) != 2:
        return None
    inner = set(region.nodes)

    def linear_from_start(name):
        if name == region.start:
            return True
        node = graph[name]
        return name in inner and not node.is_nonlinear and any(linear_from_start(i) for i in node.inputs if i == region.start or i in inner)

    a, b = merge.inputs
    if linear_from_start(a) and not linear_from_start(b):
        return b, a
    if linear_from_start(b) and not linear_from_start(a):
        return a, b
    return None


def _block_name(graph, region) -> str:
    """The module the branch lives in: the common prefix of its nodes' module paths."""
    paths = [graph[n].module_path.split(".") for n in region.nodes if graph[n].module_path]
    if not paths:
        return f"from {region.start} to {region.end}"
    common = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) or "the model"


def check(graph, options, context):
    threshold = float(options["threshold"])
    blocks = []
    for region in patterns.regions(graph):
        if not region.skip:
            continue
        pair = _branch_and_skip(graph, region)
        if pair is None:
            continue
        block_nlc = evidence.predicted_segment_nlc(graph, region.start, region.end)
        if block_nlc is None or block_nlc <= threshold:
            continue
        blocks.append((block_nlc, region, pair))
    if not blocks:
        return []
    block_nlc, region, (branch, skip) = max(blocks, key=lambda b: b[0])
    vb, vs = evidence.predicted(graph, branch), evidence.predicted(graph, skip)
    ratio = math.sqrt(vb.v / vs.v) if vb and vs and vb.v and vs.v else None
    where = patterns.producer(graph, region.end) if graph[branch].kind in (OpKind.IDENTITY, OpKind.RESHAPE) else graph[branch]
    ratio_text = f"its std is {ratio:.2f}x the skip's, so " if ratio is not None else ""
    more = f"; {len(blocks)} residual blocks are above the threshold" if len(blocks) > 1 else ""
    return [at_node(graph, where,
        code=CODE,
        message=f"residual branch {_block_name(graph, region)}: {ratio_text}its block's NLC is {{value}}{more}",
        predicted=block_nlc,
        threshold=threshold,
        explanation=(
            "a skip dilutes its branch's excess nonlinearity by k^2 + 1 (k: skip/branch std "
            "ratio); a branch much larger than its skip is barely diluted, so the blocks "
            "compound like a plain stack"
        ),
        fix=(
            "scale the branch down at initialisation: zero-init its last BatchNorm weight or "
            "last layer, or multiply it by a small (learnable) factor such as 0.1"
        ),
        segment=(region.start, region.end),
        data={"branch_skip_ratio": ratio},
    )]


def confirm(finding, report, options):
    value = evidence.measured_segment_nlc(report, *finding.segment)
    if value is None:
        return Verdict(None, None, "the block's NLC could not be measured")
    return Verdict(value > float(options["threshold"]), value)
