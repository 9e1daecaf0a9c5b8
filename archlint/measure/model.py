"""Where the model runs (in place, or a copy on another device or dtype) and how its modules
are configured during a measurement."""

from __future__ import annotations

import copy
import dataclasses
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from archlint.graph import ArchGraph, Node
from archlint.measure.overrides import _MeasureMode
from archlint.measure.report import MeasureError
from archlint.state import preserved_state


# --------------------------------------------------------------------------------------
# Devices and dtypes


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" are the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


# --------------------------------------------------------------------------------------
# Where the model runs


class _Runnable:
    """The graph to execute: the user's model in place, or a copy on another device/dtype."""

    def __init__(self, graph: ArchGraph, model: nn.Module, device: torch.device, dtype: torch.dtype | None = None):
        original = graph.graph_module if graph.graph_module is not None else graph.model if graph.model is not None else model
        self.device = device
        self.in_place = dtype is None and _same_device(device, _model_device(original))
        if self.in_place:
            self.graph = graph
            self.root = original
        else:
            try:
                copied = copy.deepcopy(original).to(device)
            except Exception as exc:
                raise MeasureError(f"cannot copy the model to {device}: {type(exc).__name__}: {exc}") from exc
            if dtype is not None:
                copied = copied.to(dtype)
            self.root = copied
            if graph.graph_module is not None:
                self.graph = dataclasses.replace(graph, graph_module=copied, model=copied)
            else:
                self.graph = dataclasses.replace(graph, model=copied)
        self.dtype = dtype or _float_dtype(self.root)

    def module(self, node: Node) -> nn.Module | None:
        if node.module_path is None:
            return None
        try:
            return self.root.get_submodule(node.module_path)
        except AttributeError:
            return None

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t


def _float_dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


# --------------------------------------------------------------------------------------
# Module configuration: which layers use batch statistics


@contextmanager
def _measuring(run: _Runnable) -> Iterator["_MeasureMode"]:
    """Everything a measurement changes on the modules is put back on exit. Yields the
    measurement's function overrides (fast tangents, dropout off, the parameter guard), which
    the runner turns on while the model's code runs."""
    norms = [m for m in run.root.modules() if isinstance(m, _NormBase)]
    tracking = [(m, m.track_running_stats) for m in norms]
    with ExitStack() as stack:
        guard = stack.enter_context(preserved_state(run.root, copy_parameters_on_write=True))
        stack.callback(lambda: [setattr(m, "track_running_stats", flag) for m, flag in tracking])
        stack.enter_context(torch.no_grad())
        # The fused attention kernels have no forward-mode derivative; the math one does.
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        # Entered by the runner while the model runs (runner._running_model). Active modes
        # also turn off nn.MultiheadAttention's fused fast path (same reason).
        yield _MeasureMode(guard)


def _configure(root: nn.Module, batch_stat_norms: set[int], tracking: dict[int, bool]) -> None:
    """Eval mode everywhere except the norm layers in ``batch_stat_norms`` (ids), which
    normalise with the statistics of the batch and leave their running statistics alone:
    functorch cannot mutate buffers inside a transform, and they are restored anyway."""
    for m in root.modules():
        if id(m) in batch_stat_norms:
            m.training = True
            m.track_running_stats = False
        else:
            m.training = False
            if id(m) in tracking:
                m.track_running_stats = tracking[id(m)]


def _is_fresh(m: _BatchNorm) -> bool:
    """Running statistics as PyTorch initialises them: never populated."""
    return (
        m.running_mean is not None
        and m.num_batches_tracked is not None
        and int(m.num_batches_tracked) == 0
        and not m.running_mean.any()
        and bool((m.running_var == 1).all())
    )

