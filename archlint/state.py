"""Leave the user's model exactly as it was.

Tracing and measuring run the model, and a train-mode forward pass updates BatchNorm running
statistics and ``num_batches_tracked``. ``preserved_state`` snapshots everything a run can
touch (parameter and buffer values, training flags, ``requires_grad``, a buffer's place
outside any autograd graph) and puts it back, bit for bit, on exit, also when the run raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    tensors = [(t, t.detach().clone()) for t in _state_tensors(model)]
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        with torch.no_grad():
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


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out
