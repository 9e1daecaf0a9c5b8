"""Exact NLC references for the benchmarks (float64, per-sample Jacobians with torch.func).

For a per-sample function f from a source node s to a node v of a traced model, on a sample
S = (s_1 .. s_N) of source values:

    numerator   = mean_n tr(J_n Ĉ J_n^T),  Ĉ = (1/N) sum_j (s_j - s̄)(s_j - s̄)^T,  J_n = df/ds(s_n)
                = (1/N^2) sum_n ||J_n U^T||_F^2,  U = S - s̄   (rows: centred samples)
    denominator = sum over units of the (biased) variance of f(s_n) over the sample

No randomness: the same quantity archlint.measure estimates with random probes. J_n comes
from vmap(jacrev) (one vector-Jacobian product per output unit) when the node has fewer units
than there are samples, otherwise from vmap(jvp) along all N centred directions (one
Jacobian-vector product per sample); both are exact, the cheaper one is used.

Only for models whose rows do not interact: eval mode, BatchNorm with running statistics.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import jacrev, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from archlint.trace import execute, trace


class _Stop(Exception):
    pass


class _NoFastPath(TorchFunctionMode):
    """Any active mode turns off nn.MultiheadAttention's fused fast path, which has no
    forward-mode derivative."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def node_function(graph, source: str, target: str):
    """f(s, *args) -> value of ``target`` for ONE sample, with ``source``'s value replaced
    by s (args: that sample's model inputs, without batch dimension)."""

    def f(s, *args):
        captured = {}

        def on_node(name, t):
            if name == source:
                t = s.unsqueeze(0)
                captured["replaced"] = True
            if name == target:
                captured["value"] = t
                raise _Stop
            return t if name == source else None

        try:
            execute(graph, tuple(a.unsqueeze(0) for a in args), on_node)
        except _Stop:
            pass
        return captured["value"][0]

    return f


def source_values(graph, source: str, args: tuple) -> torch.Tensor:
    """The values of ``source`` for a batch (batch first)."""
    out = {}

    def on_node(name, t):
        if name == source:
            out["v"] = t
            raise _Stop

    try:
        execute(graph, args, on_node)
    except _Stop:
        pass
    return out["v"]


def exact_nlc(model: nn.Module, args: tuple, source: str, targets: list[str], chunk: int = 16) -> dict[str, float]:
    """Exact float64 NLC from ``source`` to each of ``targets`` on the sample ``args``.

    The model is copied to float64 and put in eval mode (its BatchNorm statistics must be
    populated already)."""
    model64 = copy.deepcopy(model).double().eval()
    args64 = tuple(a.double() if a.is_floating_point() else a for a in args)
    graph = trace(model64, tuple(a[:2] for a in args64), name="exact")
    results = {}
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), _NoFastPath():
        S = source_values(graph, source, args64)
        n = S.shape[0]
        U = S - S.mean(0)
        for target in targets:
            f = node_function(graph, source, target)
            values = vmap(f)(S, *args64)
            units = values[0].numel()
            denominator = values.reshape(n, -1).var(0, correction=0).sum()
            numerator = 0.0
            for lo in range(0, n, chunk):
                s_chunk = S[lo:lo + chunk]
                a_chunk = tuple(a[lo:lo + chunk] for a in args64)
                if units <= n:
                    # Full Jacobians: (chunk, units, *source shape); J U^T per sample.
                    J = vmap(jacrev(f))(s_chunk, *a_chunk).reshape(s_chunk.shape[0], units, -1)
                    JU = J @ U.reshape(n, -1).T
                else:
                    # J_n u_j for all centred directions u_j: (chunk, n, units).
                    def all_directions(s, *a):
                        return vmap(lambda u: jvp(lambda z: f(z, *a), (s,), (u,))[1])(U)

                    JU = vmap(all_directions)(s_chunk, *a_chunk)
                numerator += float(JU.square().sum())
            numerator /= n * n
            results[target] = math.sqrt(numerator / float(denominator))
    return results


def jacrev_output_nlc(model: nn.Module, x: torch.Tensor) -> float:
    """The plain exact method timed by bench_cost.py: per-sample Jacobians of the model
    output with vmap(jacrev) on the model's own dtype, then mean_n tr(J_n Ĉ J_n^T)."""
    n = x.shape[0]
    with torch.no_grad():
        J = vmap(jacrev(lambda xi: model(xi.unsqueeze(0)).squeeze(0)))(x).reshape(n, -1, x[0].numel())
        U = (x - x.mean(0)).reshape(n, -1)
        numerator = float((J @ U.T).square().sum()) / (n * n)
        out = model(x).reshape(n, -1)
        denominator = float(out.var(0, correction=0).sum())
    return math.sqrt(numerator / denominator)


def populate_bn(model: nn.Module, args: tuple, batch_size: int) -> None:
    """Give every BatchNorm layer the running statistics momentum=None (a cumulative
    average) leaves after one train-mode pass per batch of ``args``, then eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = args[0].shape[0]
    with torch.no_grad():
        for lo in range(0, n - batch_size + 1, batch_size):
            model(*(a[lo:lo + batch_size] for a in args))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()
