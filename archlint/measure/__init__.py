"""Measure the nonlinearity coefficient (NLC) and signal statistics of every node of a model.

    NLC(node) = sqrt( E_x tr(J Cov_x J^T) / tr Cov(node) ),   J = d node / d input

(digest §1.1). One measurement carries tangents with forward-mode AD from the model input
through the whole graph, so every node gets its numbers from the same pass; a backward pass
per node would cost O(depth^2).

Estimator (digest §1.4). The numerator uses the exact identity
tr(J Cov_x J^T) = E_{x'} ||J(x)(x' - E x)||^2: every row x of the sample gets ``probes``
tangent directions: the sample's centred rows x' - mean(x), permuted and rotated among
themselves by a random orthogonal matrix (runner._mixed; one per probe). So each probe's
directions have exactly the sample covariance, each mixes many samples, and the estimate is
unbiased for the NLC of the sample. The probes are batched with ``torch.func.vmap`` over
``torch.func.jvp``: the primal values are computed once and only the tangents are repeated.
Two probes per row to start with (one for an output of more than WIDE_OUTPUT_UNITS units per
row, whose many directions make one enough); more when the probe part of the output's
standard error, estimated from the spread between each row's probes (with one probe, bounded
by the spread between the rows), is above PROBE_SE. The denominator is the trace of the
sample covariance of the node (biased, like the directions). The standard error comes from
the per-row numerator and denominator terms (delta method), so it covers both the sampling
of the inputs and the probes.

Where only the output's NLC is wanted (``nodes=()``, or ``nlc_nodes=[output]``: the other
wanted nodes then get their signal statistics alone) and it has at most 1024 units per row,
reverse-mode probes estimate its numerator instead (``cotangents``): per row, one backward
pass along a cotangent of random signs in the eigenvectors of the output's covariance. Such
a probe has a fraction of a forward-mode probe's noise on these outputs (an affine map has
none), so one usually meets PROBE_SE where forward mode needs two to eleven.

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

The package, by stage: ``report`` (the result types), ``data`` (the sample), ``model``
(where the model runs, module configuration), ``overrides`` (function overrides during a
measurement), ``runner`` (one pass over all batches), ``replay`` (a batch's layer values kept for the
passes after the first), ``deflate`` (an output direction all rows share, computed exactly),
``cotangents`` (the output alone by reverse-mode probes), ``evaluate`` (from accumulated sums
to numbers), ``plan`` (which passes run), ``budget`` (what fits a time budget) and ``api`` (``measure()``). Importing the package, or
``archlint.measure.report``, does not import torch: code that only reads reports (output
formats, the cache) need not pay for it. The names below that need torch are imported on
first use.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import TYPE_CHECKING, Any

from archlint.measure.report import STATUSES, MeasureError, NodeStats, Report, SegmentStats

if TYPE_CHECKING:
    from torch import nn

    from archlint.measure.api import measure
    from archlint.measure.data import MIN_SAMPLES, load_data
    from archlint.measure.evaluate import PRECISION_NLC, PRECISION_SPREAD
    from archlint.measure.plan import (FUSED_MIN_COUNT, MAX_PROBES, POPULATION_PROBE_SE, POPULATION_PROBES, PROBE_SE, PROBES,
                                       WIDE_OUTPUT_UNITS)

# The public names that need torch, and the submodule that defines each.
_LAZY = {
    "measure": "api",
    "load_data": "data",
    "MIN_SAMPLES": "data",
    "PROBES": "plan",
    "WIDE_OUTPUT_UNITS": "plan",
    "PROBE_SE": "plan",
    "MAX_PROBES": "plan",
    "POPULATION_PROBE_SE": "plan",
    "POPULATION_PROBES": "plan",
    "FUSED_MIN_COUNT": "plan",
    "PRECISION_NLC": "evaluate",
    "PRECISION_SPREAD": "evaluate",
}

__all__ = ["Report", "NodeStats", "SegmentStats", "MeasureError", "STATUSES", *_LAZY]


def __getattr__(name: str) -> Any:
    # PEP 562: called only for names not yet in the package's namespace; each is bound there
    # once imported, so this runs once per name.
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# --------------------------------------------------------------------------------------
# ``archlint.measure(model, ...)``: the package is callable


class _CallableModule(types.ModuleType):
    """``archlint.measure(...)`` calls ``archlint.measure.measure(...)``.

    The public API is ``archlint.measure(model)``, and ``archlint.measure`` is also this
    package, which rules and the engine import (``from archlint.measure import Report``).
    Making the package callable keeps both spellings working with one object, where renaming
    it would break every existing import of it."""

    def __call__(self, model: nn.Module, inputs: Any = None, **kwargs: Any) -> Report:
        return self.measure(model, inputs, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        # inspect.signature(archlint.measure) and help() show measure()'s parameters; a
        # property, so that torch is imported only when they are asked for.
        return inspect.signature(self.measure)


sys.modules[__name__].__class__ = _CallableModule
