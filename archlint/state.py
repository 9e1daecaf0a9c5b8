"""Leave the user's model exactly as it was.

Tracing and measuring run the model, and a train-mode forward pass updates BatchNorm running
statistics and ``num_batches_tracked``. ``preserved_state`` snapshots everything a run can
touch (parameter and buffer values, training flags, ``requires_grad``, a buffer's place
outside any autograd graph) and puts it back, bit for bit, on exit, also when the run raises.

A run that watches the model's calls (the measurement's function mode) can ask for its
parameters to be copied on write instead (``ParameterGuard``): a parameter is then copied only
before the first call that could write it, and a model that writes none (nearly all) costs no
copy. Copying all parameters, once before and once after every measurement, was about half a
forward pass of a depth-20 MLP of 512-wide layers (benchmarks/bench_cost.py --part state).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor


@contextmanager
def preserved_state(model: nn.Module, copy_parameters_on_write: bool = False) -> Iterator["ParameterGuard | None"]:
    """Yields the ParameterGuard that the run must consult before every call of the model's
    code (``copy_parameters_on_write``), or None: everything is copied up front."""
    guard = ParameterGuard(model) if copy_parameters_on_write else None
    lazy = guard.watched() if guard is not None else set()
    tensors = [(t, t.detach().clone()) for t in _state_tensors(model) if id(t) not in lazy]
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield guard
    finally:
        with torch.no_grad():
            if guard is not None:
                tensors += guard.copies()
            for tensor, saved in tensors:
                if tensor.shape != saved.shape or tensor.dtype != saved.dtype:
                    # Something replaced the storage (e.g. a lazy module materialised): put
                    # the original back as it was.
                    tensor.data = saved
                else:
                    tensor.copy_(saved)
                if tensor.grad_fn is not None:
                    # A buffer updated in place by a forward pass with gradients on (the
                    # measurement's reverse-mode pass) joined its graph: a leaf again.
                    tensor.detach_()
        for module, flag in training:
            module.training = flag
        for param, flag in requires_grad:
            param.requires_grad_(flag)
    if guard is not None:  # after a run that did not raise
        guard.check_unwritten()


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


# Calls that never write to their arguments and return no alias through which a write could
# escape the version counter (``detach`` and views share it): a parameter passed to one is
# not copied. Any other call that receives a tensor sharing a parameter's memory copies that
# parameter first, so a call missing here costs a copy, never a lost write. Not here: the
# norms with running statistics (they write them; their weights are small), ``F.embedding``
# (``max_norm`` renormalises the weight in place: _reads_only), activations with ``inplace``.
_READS = frozenset(f for f in (
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.layer_norm, F.group_norm, getattr(F, "rms_norm", None), F.prelu, F.scaled_dot_product_attention,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.einsum, torch.add, torch.sub, torch.mul,
    torch.div, torch.cat, torch.stack, torch.where, torch.exp, torch.sigmoid, torch.tanh,
    torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.__add__, torch.Tensor.__radd__,
    torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.__truediv__,
    torch.Tensor.__rtruediv__, torch.Tensor.__neg__, torch.Tensor.__pow__, torch.Tensor.__getitem__,
    torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul, torch.Tensor.div, torch.Tensor.exp, torch.Tensor.sigmoid,
    torch.Tensor.t, torch.Tensor.transpose, torch.Tensor.view, torch.Tensor.view_as, torch.Tensor.reshape,
    torch.Tensor.reshape_as, torch.Tensor.permute, torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.unsqueeze,
    torch.Tensor.squeeze, torch.Tensor.flatten, torch.Tensor.contiguous, torch.Tensor.detach, torch.Tensor.to,
    torch.Tensor.type_as, torch.Tensor.float, torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel,
    torch.Tensor.norm, torch.Tensor.sum, torch.Tensor.mean, torch.Tensor.std, torch.Tensor.var,
) if f is not None)
# The one attribute read that hands out the parameter's memory without its version counter:
# a write through ``.data`` would go unseen. (``.numpy()``, ``data_ptr()``, ``untyped_storage()``
# and ``.data = ...`` are calls outside _READS, so they copy too.)
_DATA = vars(torch._C.TensorBase)["data"]


def _reads_only(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in _READS:
        return "out" not in kwargs
    if getattr(func, "__name__", None) == "__get__":  # an attribute: p.shape, p.T, p.grad, ...
        return getattr(func, "__self__", None) is not _DATA
    if func is F.embedding:
        return (args[3] if len(args) > 3 else kwargs.get("max_norm")) is None
    return False


def unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The tensor under torch.func's wrappers (a value inside jvp or vmap), or ``t``."""
    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t


def _storage(t: torch.Tensor) -> int | None:
    """The address of the memory a tensor sees (under torch.func's wrappers, the wrapped
    tensor's); None where it has none that can be read (sparse tensors, wrapper subclasses)."""
    try:
        return unwrapped(t).untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class ParameterGuard:
    """Copies a parameter before the first call that could write it (see _READS), and gives
    the copies to ``preserved_state`` to put back. Parameters whose memory cannot be read, or
    is shared with a buffer, are not watched: ``preserved_state`` copies them up front."""

    def __init__(self, model: nn.Module) -> None:
        names: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), name)
        buffers = {_storage(b) for b in model.buffers()}
        # memory address -> the parameters on it, named (a parameter made from another's
        # memory shares it)
        self._waiting: dict[int, list[tuple[str, nn.Parameter]]] = {}
        for p in model.parameters():
            address = _storage(p) if type(p) is nn.Parameter and p.layout == torch.strided else None
            if address is not None and address not in buffers:
                self._waiting.setdefault(address, []).append((names[id(p)], p))
        # With what restoring checks of the parameters never copied (nothing wrote them): the
        # version counter and the memory address.
        self._watched = [(name, p, p._version, p.data_ptr()) for group in self._waiting.values() for name, p in group]
        self._copies: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}

    def watched(self) -> set[int]:
        """The parameters (ids) copied on write, not up front."""
        return {id(p) for _, p, _, _ in self._watched}

    def copied(self) -> list[str]:
        """The names of the parameters copied so far, in the order of their copies."""
        return [name for name, _, _ in self._copies.values()]

    def before(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Called before every call of the model's code runs."""
        if not self._waiting or _reads_only(func, args, kwargs):
            return
        for t in _tensors(args, kwargs):
            address = _storage(t)
            # A tensor whose memory cannot be read (a wrapper subclass) may hold a parameter.
            for address in [address] if address is not None else list(self._waiting):
                for name, p in self._waiting.pop(address, ()):
                    self._copies[id(p)] = (name, p, p.detach().clone())

    def copies(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, its copy) of the parameters copied."""
        return [(p, saved) for _, p, saved in self._copies.values()]

    def check_unwritten(self) -> None:
        """A watched parameter that was not copied must be as it was. A write that moved its
        version counter or replaced its memory without a call seen before it (a C++
        extension writing in place) could not be undone: said, not hidden."""
        for name, p, version, address in self._watched:
            if id(p) not in self._copies and (p._version, p.data_ptr()) != (version, address):
                raise RuntimeError(f"parameter {name!r} was written during the run by a call archlint could not see "
                                   "before it ran, so its values could not be put back")


def _tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    """The tensors among a call's arguments, also inside lists and tuples (torch.cat)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))
