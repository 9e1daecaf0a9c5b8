"""The values of the convolutions, linear layers and batch norms of one pass, kept and
replayed in the passes that follow it over the same batch.

A measurement runs the model several times over the same batch in the same configuration:
the main pass, then perhaps a pass that adds probes (a noisy output: a depth-20 MLP needs
3), the reverse-mode pass of measure.deflate (a thin residual CNN), and the segments'
passes. Each recomputed every layer's value, the same numbers each time; for a
convolution or a linear layer that is a matrix product as large as the forward pass's, for a
batch norm two passes over its input. So the main pass keeps them (the activations a
training step would hold, of one batch), and the passes that follow take them instead of
computing them: in forward mode the value beside a tangent computed as before, in reverse
mode through ``ReplayedAffine`` (whose backward is the layer's input gradient) or batch
norm's own reverse rule (overrides._BatchNormEitherRule, given the kept statistics).

A kept value is used only for the same call: the same function and weight (the same
object, unwritten since), the same occurrence of that weight in the pass (a layer called
twice has two values), an input of the same shape, and the kept values themselves unwritten
since (a model that adds to a layer's output in place gets it computed again). The
passes replay a deterministic computation over the same rows (dropout is off while
measuring), so the inputs are the same values.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from archlint.state import unwrapped

# The layers with an input gradient here are also replayed in a reverse-mode pass (a
# transposed convolution is recomputed there). Which calls keep values: overrides._REPLAYED.
_CONV_INPUT = {F.conv1d: torch.nn.grad.conv1d_input, F.conv2d: torch.nn.grad.conv2d_input,
               F.conv3d: torch.nn.grad.conv3d_input}
_CONV_ARGS = ("weight", "bias", "stride", "padding", "dilation", "groups")


@dataclass
class _Kept:
    weight: weakref.ref
    weight_version: int
    shape: tuple[int, ...]
    values: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]


class Replay:
    """The kept values of one batch in one module configuration. ``recording``: a pass
    whose values are kept (the main pass); otherwise kept values are used and nothing new
    is kept."""

    def __init__(self) -> None:
        self.recording = True
        self._kept: dict[tuple, _Kept] = {}
        self._calls: dict[tuple, int] = {}
        self.replayed = 0

    def new_pass(self) -> None:
        self._calls.clear()

    def key(self, func: Any, weight: Any) -> tuple | None:
        """This call's key: every call of a replayed function counts, so that a layer's
        occurrences are numbered the same in every pass."""
        if not isinstance(weight, torch.Tensor):
            return None
        base = (func, id(weight))
        k = self._calls.get(base, 0)
        self._calls[base] = k + 1
        return base + (k,)

    def take(self, key: tuple | None, weight: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The kept values of this call, if any are kept and still valid."""
        kept = self._kept.get(key) if key is not None else None
        if (kept is None or kept.weight() is not weight or weight._version != kept.weight_version
                or kept.shape != tuple(x.shape) or tuple(v._version for v in kept.values) != kept.versions):
            return None
        self.replayed += 1
        return kept.values

    def values(self, key: tuple | None, weight: torch.Tensor, x: torch.Tensor,
               compute: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """The kept values of this call, else ``compute()`` (kept while recording)."""
        kept = self.take(key, weight, x)
        if kept is not None:
            return kept
        out = compute()
        if self.recording and key is not None:
            plain = tuple(_unwrapped(v) for v in out)
            if all(v is not None for v in plain):
                self._kept[key] = _Kept(weakref.ref(weight), weight._version, tuple(x.shape), plain,
                                        tuple(v._version for v in plain))
        return out


def _unwrapped(t: torch.Tensor) -> torch.Tensor | None:
    """The plain tensor under torch.func's wrappers (a value computed inside jvp), or None
    where it is batched (its shape then differs from the value's)."""
    plain = unwrapped(t)
    return plain if plain.shape == t.shape else None


def input_gradient(func: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The layer's gradient with respect to its input, as a function of the output's
    gradient (None where there is none here: transposed convolutions, string padding)."""
    bound = dict(zip(_CONV_ARGS, args), **kwargs)
    weight = bound.get("weight")
    if func is F.linear:
        return lambda grad: grad.matmul(weight)
    conv = _CONV_INPUT.get(func)
    padding = bound.get("padding", 0)
    if conv is None or isinstance(padding, str):
        return None
    options = {k: bound[k] for k in ("stride", "padding", "dilation", "groups") if k in bound}
    shape = x.shape
    return lambda grad: conv(shape, weight, grad, **options)


class ReplayedAffine(torch.autograd.Function):
    """A layer whose value was kept, in a reverse-mode pass: the kept value forward (a new
    alias, so the graph does not attach to it), the layer's input gradient backward."""

    @staticmethod
    def forward(ctx, x, value, gradient):
        ctx.gradient = gradient
        return value.detach()

    @staticmethod
    def backward(ctx, grad):
        return ctx.gradient(grad), None, None
