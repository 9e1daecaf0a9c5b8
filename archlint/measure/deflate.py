"""Fewer probes for outputs whose rows share a dominant direction.

Per row i the output's numerator is tr(M_i), M_i = J_i Ĉ J_i^T (output units x units), and a
probe estimates it by ||J_i u_i||^2. When M_i has one large eigenvalue that estimate is
nearly a one-degree-of-freedom chi-square, and the 1.75% noise target (measure.plan) asks for
many probes: a thin full-resolution residual CNN with a 10-way head needs 9. Its rows share
that direction (83% of the numerator lies along one output direction common to all rows:
``python benchmarks/bench_directions.py --part shared``).

So the numerator is split along a unit direction v of the output: the part along it,
v^T M_i v, computed exactly by one reverse-mode pass (runner.reverse), and the rest,
||t||^2 - (v . t)^2 of each probe's tangent t, estimated by the probes as before:

    a_i = v^T M_i v + mean over probes of (||t_i||^2 - (v . t_i)^2).

Both parts are unbiased for any fixed v, so a poor direction costs only noise. v (the same
for every row) is the top eigenvector of the second moment of the probes' output tangents.
Chosen on the very probes whose rest it leaves, it fits some of their noise and shrinks the
rest: by -0.05% of the NLC (+-0.06%, 16 seeds, against the exact value) on the thin residual
CNN. One direction for all rows keeps an affine map at exactly 1 (the rotated directions'
second moment is the sample's, runner._mixed). The probes' spread then measures only the
rest's noise, and plan asks for probes by it. With batch statistics rows interact; each
row's cotangent gets a random sign, so that the other rows' contributions through the batch
statistics add up to their expectation.

The population value that rides along in the main pass (plan._fusable) takes its part along
v from the batch's: its probes share the batch probes' input directions, and the difference
the two batch-norm rules make along v is estimated from those pairs (project_paired), which
saves a backward pass (the thin residual CNN: one of its two, all statistics 3.08 -> 2.63 s:
``python benchmarks/bench_cost.py --part paired``). Where more population probes are asked
for than there are batch probes to pair them with, or its noise will ask for more, the
population keeps its own direction and backward pass, over the same recorded forward pass.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from archlint import memory

# Deflate only where it saves at least this many probes: the reverse pass costs about as
# much as one or two (the thin residual CNN: forward and backward 3.0x a plain forward
# pass, one probe about 2.2x; a depth-20 MLP: 2.0x).
MIN_SAVED_PROBES = 3
# Whether a riding population value takes its part along v from the batch's (project_paired;
# benchmarks turn it off to set it beside the population's own backward pass).
PAIRED = True
# Output units per row up to which the runner keeps the output's tangents for this (their
# second moment's eigenvectors cost units^3). A wide output has many directions and little
# probe noise to begin with.
MAX_UNITS = 1024


@dataclass
class Deflation:
    """The output direction (units) and, per batch, each row's numerator along it."""

    direction: torch.Tensor
    exact: list[torch.Tensor]


def wide(graph, traced_batch: int | None) -> bool:
    """Whether the output has more than MAX_UNITS units per row (by the shapes the graph was
    traced with, ``traced_batch`` rows): many directions, little probe noise per probe, and
    second moments too costly to deflate (plan.first_probes starts it with one probe)."""
    out = graph[graph.output] if graph.output else None
    return bool(traced_batch and out is not None and out.shape and math.prod(out.shape) // traced_batch > MAX_UNITS)


def wanted(graph, traced_batch: int | None, rows: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the output's tangents are worth keeping: few units per row (by the shapes the
    graph was traced with, ``traced_batch`` rows), a dtype whose reverse pass is as precise
    as the forward one, and room on ``device`` for the activations of ``rows`` rows (the
    reverse pass holds them all: memory.measurement_room)."""
    out = graph[graph.output]
    if not traced_batch or not out.shape or dtype not in (torch.float32, torch.float64):
        return False
    if wide(graph, traced_batch):
        return False
    held = memory.values_size((node.shape for node in graph if node.shape), traced_batch, rows, dtype.itemsize)
    return held <= memory.measurement_room(device)


def direction(t: list[torch.Tensor]) -> torch.Tensor:
    """The unit direction of the output along which the probes' tangents (per batch: probes,
    rows, units) have the most energy: the top eigenvector of their second moment."""
    flat = torch.cat(t, dim=1).reshape(-1, t[0].shape[-1])
    return torch.linalg.eigh(flat.T @ flat).eigenvectors[:, -1]


def _rest(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each probe's squared tangent norm without its part along v (probes x rows)."""
    return (t.square().sum(-1) - (t @ v).square()).clamp(min=0)


def left_to_probes(acc, v: torch.Tensor):
    """A copy of the accumulated output whose tangent terms keep only the noise deflation
    along ``v`` would leave: the part along v replaced by its mean over the probes. Its probe
    noise tells how many probes the deflated output will need."""
    copied = copy.copy(acc)
    copied.a = [(t @ v).square().mean(0, keepdim=True) + _rest(t, v) for t in acc.t]
    return copied


def project(acc, deflation: Deflation) -> None:
    """The accumulated output's tangent terms ("a") with the part along the direction exact
    (its kept tangents, "t", are of the same rows and batches as the deflation's)."""
    acc.a = [e[None] + _rest(t, deflation.direction) for t, e in zip(acc.t, deflation.exact)]


def project_paired(acc, batch, deflation: Deflation) -> None:
    """The accumulated population output's tangent terms, its part along the direction of
    the batch's ``deflation`` taken from there: the batch's exact part, plus the difference
    between each population probe's part along v and that of the batch probe whose input
    directions it shares (runner._pass_once pairs them), plus its rest:

        a_i = v^T M_i v + (v . t_i)^2 - (v . t'_i)^2 + ||t_i||^2 - (v . t_i)^2
            = v^T M_i v + ||t_i||^2 - (v . t'_i)^2,

    t the population probe's tangent and t' the batch probe's. Unbiased for any fixed v
    (E (v . t)^2 = v^T Mpop_i v), and the difference is small where batch statistics change
    little between the two rules (the population rides along only where every channel has
    many values: plan._fusable). It saves the population's own backward pass."""
    v = deflation.direction
    acc.a = [e[None] + t.square().sum(-1) - (paired[:t.shape[0]] @ v).square()
             for t, paired, e in zip(acc.t, batch.t, deflation.exact)]


def find(runner, directions: list[tuple[torch.Tensor, bool]], seed: int) -> list[Deflation]:
    """For each (direction v, population) the output's numerator along v, by one forward
    pass over each batch and a backward pass per direction (runner.reverse).
    ``population``: the probes took the population rule of train-mode batch norm
    (plan._fusable), and so does that backward pass."""
    generator = torch.Generator().manual_seed(seed)
    signs = [(torch.randint(0, 2, (runner.n,), generator=generator) * 2 - 1).to(v) for v, _ in directions]
    centred = runner.centred_sources()
    exact: list[list[torch.Tensor]] = [[] for _ in directions]
    for lo, hi in runner.groups:
        totals = runner.reverse(lo, hi, [(s[lo:hi, None] * v, population) for s, (v, population) in zip(signs, directions)],
                                centred)
        for found, total in zip(exact, totals):
            found.append(total)
    return [Deflation(v, found) for (v, _), found in zip(directions, exact)]
