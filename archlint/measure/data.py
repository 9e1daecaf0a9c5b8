"""The sample a measurement runs on: the inputs given (tensors, or ``module:func``), or
synthetic ones of the family ``archlint.inputs`` infers."""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Any

import torch
from torch import nn

from archlint.graph import ArchGraph
from archlint.measure.report import MeasureError

# At least this many samples by default: about ±3% sampling error on the NLC (digest §1.4).
MIN_SAMPLES = 128


def _resolve_inputs(model: nn.Module, inputs: Any, batch_size: int, samples: int | None, seed: int,
                    graph: ArchGraph | None = None) -> tuple[tuple[torch.Tensor, ...], list[int]]:
    """The forward's positional arguments for all rows, and the batch dimension of each.
    ``graph``: the model's trace, when there is one (its fx graph, the same as
    ``fx.symbolic_trace``'s, serves input inference instead of a second trace)."""
    graph_module = graph.graph_module if graph is not None else None
    if inputs is None:
        from archlint.inputs import infer_inputs, make_batch

        spec = infer_inputs(model, graph_module)
        if samples is None:
            samples = batch_size * math.ceil(MIN_SAMPLES / batch_size)
        generator = torch.Generator().manual_seed(seed)
        args = make_batch(spec, samples, generator)
        return args, [0 if a.batch_first else 1 for a in spec.args]
    if isinstance(inputs, str):
        inputs = load_data(inputs)
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not args or not all(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args):
        raise MeasureError("inputs must be a tensor or a tuple of tensors with a batch dimension")
    dims = _given_batch_dims(model, args, graph_module)
    rows = {a.shape[d] for a, d in zip(args, dims)}
    if len(rows) != 1:
        raise MeasureError(f"the inputs disagree on the batch size: {sorted(rows)}")
    if samples is not None:
        args = tuple(a.narrow(d, 0, min(samples, a.shape[d])) for a, d in zip(args, dims))
    return args, dims


def _given_batch_dims(model: nn.Module, args: tuple, graph_module) -> list[int]:
    """Batch first, except where the model's first layer is a time-major recurrent layer."""
    from archlint.inputs import InputInferenceError, infer_inputs

    try:
        spec = infer_inputs(model, graph_module)
    except InputInferenceError:
        return [0] * len(args)
    if len(spec.args) != len(args):
        return [0] * len(args)
    return [0 if a.batch_first or t.dim() < 2 else 1 for a, t in zip(spec.args, args)]


def load_data(spec: str) -> Any:
    """``"module:func"``: import the module (the working directory is importable) and return
    ``func()``: a tensor or tuple of tensors, the model's positional arguments."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise MeasureError(f"--data {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise MeasureError(f"--data {spec!r}: {module_name} has no function {func_name}")
    return func()
