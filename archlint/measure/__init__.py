"""Measure the nonlinearity coefficient (NLC) and signal statistics of every node of a model.

    NLC(node) = sqrt( E_x tr(J Cov_x J^T) / tr Cov(node) ),   J = d node / d input

(digest §1.1). One measurement carries tangents with forward-mode AD from the model input
through the whole graph, so every node gets its numbers from the same pass; a backward pass
per node would cost O(depth^2).

Estimator (digest §1.4). The numerator uses the exact identity
tr(J Cov_x J^T) = E_{x'} ||J(x)(x' - E x)||^2: every row x of the sample gets ``probes``
tangent directions u = x' - mean(x), where x' is the row that a random permutation of the
sample puts there (one permutation per probe). So each probe's directions have exactly the
sample covariance, and the estimate is unbiased for the NLC of the sample. The probes are
batched with ``torch.func.vmap`` over ``torch.func.jvp``: the primal values are computed once
and only the tangents are repeated. Two probes per row to start with; more when the probe
part of the output's standard error, estimated from the spread between each row's probes, is
above PROBE_SE. The denominator is the trace of the sample covariance of the node (biased,
like the directions). The standard error comes from the per-row numerator and denominator
terms (delta method), so it covers both the sampling of the inputs and the probes.

Cost: about one forward pass for the primal values plus one per probe, because the tangent
rules of the layers that dominate (convolution, linear, batch norm) are replaced by lean ones
(_MeasureMode) and the per-node statistics are read-only reductions. A train-mode BatchNorm
model also gets ``nlc_population``: when the sample is one batch and every BatchNorm sees
many values per channel (a CNN at the default batch), the eval-mode model computes the same
values as the trained one, so its probes ride along in the same pass (one more probe);
otherwise a second pass in eval mode computes it.

Semantics:
- Dropout and other train-only behaviour are off: every module is put in eval mode, and the
  dropout functions are replaced by the identity (fx bakes ``self.training`` into the graph).
- Train-mode BatchNorm makes the output of one row depend on the whole batch. The NLC reported
  is that of the function that is actually trained (digest §1.5): the whole batch is one input,
  the tangent of each row is an independent draw, and the rows are split into batches of
  ``batch_size``. Beside it, ``nlc_population`` is the NLC of the eval-mode model with its
  running statistics populated from the same batches (the cumulative average that
  ``momentum=None`` gives); PyTorch's fresh statistics (0 and 1) are never used as if they were
  populated. (In the one-pass case the running variance is the batch's biased one, not
  PyTorch's unbiased one: a relative difference of 1/count, under 0.1%; see plan._fusable.)
  Eval-mode BatchNorm layers with fresh statistics are populated the same way first.
- Integer inputs (token ids): the tangent enters at the embedding outputs.
- Values that a float32 pass cannot resolve (variance under the rounding level, overflow, NaN,
  an output NLC above 100) are measured again in float64; whatever is still unresolved gets a
  status ("vanished", "exploded", "nan") instead of an NLC of 0 or inf.
- The user's model is left exactly as it was. On its own device it runs in place under
  ``preserved_state``; on another device a deep copy runs.

The package, by stage: ``report`` (the result types, without torch), ``data`` (the sample),
``model`` (where the model runs, module configuration), ``overrides`` (function overrides
during a measurement), ``runner`` (one pass over all batches), ``evaluate`` (from accumulated
sums to numbers), ``plan`` (which passes run) and ``api`` (``measure()``).
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from torch import nn

from archlint.measure.api import measure
from archlint.measure.data import MIN_SAMPLES, load_data
from archlint.measure.evaluate import PRECISION_NLC, PRECISION_SPREAD
from archlint.measure.plan import FUSED_MIN_COUNT, MAX_PROBES, POPULATION_PROBE_SE, POPULATION_PROBES, PROBE_SE, PROBES
from archlint.measure.report import STATUSES, MeasureError, NodeStats, Report, SegmentStats

__all__ = [
    "measure", "load_data", "Report", "NodeStats", "SegmentStats", "MeasureError", "STATUSES", "MIN_SAMPLES", "PROBES",
    "PROBE_SE", "MAX_PROBES", "POPULATION_PROBE_SE", "POPULATION_PROBES", "PRECISION_NLC", "PRECISION_SPREAD",
    "FUSED_MIN_COUNT",
]


# --------------------------------------------------------------------------------------
# ``archlint.measure(model, ...)``: the package is callable


class _CallableModule(types.ModuleType):
    """``archlint.measure(...)`` calls ``archlint.measure.measure(...)``.

    The public API is ``archlint.measure(model)``, and ``archlint.measure`` is also this
    package, which rules and the engine import (``from archlint.measure import Report``).
    Making the package callable keeps both spellings working with one object, where renaming
    it would break every existing import of it."""

    def __call__(self, model: nn.Module, inputs: Any = None, **kwargs: Any) -> Report:
        return measure(model, inputs, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# inspect.signature(archlint.measure) and help() show measure()'s parameters.
__signature__ = inspect.signature(measure)
