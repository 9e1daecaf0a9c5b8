"""ARC304 low-precision-high-nonlinearity: float16/bfloat16 computation of a highly nonlinear
network.

## What it does
Flags a model that computes in float16 or bfloat16 (its parameters, or the dtypes of its
traced operations, e.g. under an autocast region the trace captured) when the mean-field
prediction puts the NLC of some node, from the input, above a threshold (100). The
verification pass measures the output NLC in the model's own precision and again with the
model copied to float64, and confirms the finding when the two disagree by more than 10%, or
when the low-precision pass overflows or produces NaN where float64 does not.

## Why is this bad?
A high NLC means large Jacobian norms relative to the spread of the output: rounding noise
in early layers is amplified as much as the signal is, relative to what distinguishes one
input from another. float16 keeps about 3 significant digits and bfloat16 about 2, so a
network with an NLC in the hundreds or thousands (deep BatchNorm-ReLU stacks, hot tanh
networks) cannot be represented meaningfully: gradients and outputs are dominated by
rounding. Measured: a depth-30 BatchNorm-ReLU MLP (NLC about 400) has an output NLC 29% off
in bfloat16; a depth-32 tanh network (NLC about 20000) overflows in float16.

## Example
```python
model = DeepPlainNet().to(torch.bfloat16)  # 40 BatchNorm-ReLU layers, no skips
```

## Use instead
Bring the NLC down first (skip connections, a gentler activation or operating point: see
ARC101-ARC104, ARC403), or keep the model in float32 (autocast only the layers that are safe, keep
normalisation and the loss in float32).

No fix is offered (``--fix``): the precision is chosen by the training code, not the model
file.

## Options
- ``threshold`` (100): the predicted NLC above which low precision is flagged.
- ``disagreement`` (0.1): the relative difference between the low-precision and the float64
  output NLC above which the measurement confirms.

## References
- archlint NLC digest §3 (floating-point precision) and §7 (PRECISION).
- P. Micikevicius et al., *Mixed Precision Training*, ICLR 2018.
"""

from __future__ import annotations

from archlint.dtypes import LOW_PRECISION
from archlint.rule import at_model, Verdict

CODE = "ARC304"
NAME = "low-precision-high-nonlinearity"
SEVERITY = "warning"
SUMMARY = "A highly nonlinear network computed in float16/bfloat16 is dominated by rounding"
OPTIONS = {"threshold": 100.0, "disagreement": 0.1}

def low_precision_dtypes(graph) -> list[str]:
    """The half-precision dtypes of the graph's parameters and operation outputs."""
    found = {n.dtype for n in graph if n.dtype in LOW_PRECISION}
    found |= {p.dtype for n in graph for p in n.params.values() if p.dtype in LOW_PRECISION}
    return sorted(found)


def check(graph, options, context):
    dtypes = low_precision_dtypes(graph)
    if not dtypes:
        return []
    # The engine's prediction; a rule never runs the predictor itself.
    if graph.prediction is None:
        return []
    nlcs = [(p.nlc, name) for name, p in graph.prediction.nodes.items() if p.nlc is not None]
    if not nlcs:
        return []
    nlc, node = max(nlcs)
    if not nlc > options["threshold"]:
        return []
    # {value} (the engine fills in the output NLC measured in the model's precision, else the
    # predicted one) only where the prediction is the output's.
    value = "{value} at the output" if node == graph.output else f"{nlc:.3g} at {node}"
    return [at_model(graph, node,
        code=CODE,
        message=(f"{graph.name} computes in {'/'.join(dtypes)} with an NLC of {value}: "
                 f"rounding is amplified as much as the signal"),
        predicted=nlc,
        threshold=float(options["threshold"]),
        explanation=("a high NLC amplifies rounding noise relative to the output's spread; half precision "
                     "keeps 2-3 significant digits"),
        fix="lower the NLC (skip connections, gentler activations) or keep the model in float32",
        data={"dtypes": dtypes},
    )]


def confirm(finding, report, options):
    by = report.output_by_dtype
    precise = by.get("float64")
    low = [(dtype, s) for dtype, s in by.items() if dtype != "float64"]
    if precise is None or not low:
        return Verdict(None, None, "not compared with float64: " + ("; ".join(report.notes) or "no float64 re-check ran"))
    dtype, s = low[0]
    if precise.status != "ok":
        return Verdict(False, None, f"float64 output is {precise.status} too: not a precision problem")
    if s.status != "ok":
        return Verdict(True, None, f"in {dtype} the output is {s.status}; in float64 its NLC is {precise.nlc:.3g}")
    gap = abs(s.nlc - precise.nlc) / precise.nlc
    note = f"output NLC {s.nlc:.3g} in {dtype} vs {precise.nlc:.3g} in float64 ({gap:.0%} apart)"
    return Verdict(gap > options["disagreement"], s.nlc, note)
