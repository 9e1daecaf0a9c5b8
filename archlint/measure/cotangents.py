"""The output's numerator by reverse-mode probes, where the output alone is measured.

Per row i the output's numerator is tr(M_i), M_i = J_i Ĉ J_i^T (output units x units). The
runner's forward-mode probes estimate it by ||J_i u_i||^2 over input directions u_i, and each
costs about one forward pass. A narrow output (a 10-way head) needs two or three of them to
meet the plan's noise target (measure.plan), on top of the primal pass. Where the output's
NLC is all that is wanted, a reverse-mode probe estimates it instead: c^T M_i c, with the
cotangent c = Q s, s a vector of random signs and Q the eigenvectors of the output's
covariance over the batch. Q comes from the primal values, not from the probes, so the
estimate is unbiased (E[c c^T] = Q Q^T = I). Its variance is twice the sum of the squared
off-diagonal entries of Q^T M_i Q, and those vanish where M_i is the output's covariance:
an affine map measures exactly 1, with no probe noise, and a network near it has little.

Relative variance of one probe's estimate of the numerator over 128 rows, forward mode
against this (exact Jacobians of 48 rows in float64, BatchNorm in eval mode; ``python
benchmarks/bench_directions.py --part cotangents``): a depth-20 MLP 3.1e-3 / 1.0e-3, a thin
residual CNN 1.3e-2 / 3.5e-4, MobileNetV2 blocks 2.0e-3 / 2.4e-4, a CIFAR ResNet-18 1.8e-3 /
2.1e-4, a VGG-style CNN 1.9e-3 / 2.2e-4. The plan's target (measure.plan.PROBE_SE, on the
NLC, the square root) is 1.2e-3 on the numerator: one reverse-mode probe meets it for all
five, where forward mode needs 2 to 11. Its cost is one forward pass that records the graph
(the output's statistics are taken from it) and one backward pass per probe.

With batch statistics rows interact: a row's input gradient then also holds the other rows'
cotangents through them. Each row's signs are its own, so those contributions add up to
their expectation, as in measure.deflate.

The plan (plan._Plan._by_cotangents) takes this route where the output alone is measured
(``nodes=()``, no segments), its rows have at most deflate.MAX_UNITS units, the dtype is
float32 or float64, the recorded graph fits the memory a measurement may hold
(deflate.wanted), and a population value, if any, rides along (plan._fusable). Elsewhere,
and where a reverse-mode pass fails (the report's notes say so), forward-mode probes measure.
"""

from __future__ import annotations

from typing import Callable

import torch

from archlint.measure.report import MeasureError
from archlint.measure.runner import _node_stats, _NodeAcc, _PassResult

# Whether a measurement of the output alone takes this route (benchmarks turn it off to set
# it beside forward-mode probes).
ENABLED = True


def measure_output(runner, probes: int, population_probes: int, seed: int,
                   needed: Callable[[torch.Tensor], tuple[int, int]] | None = None,
                   signal: frozenset[str] = frozenset()) -> tuple[_PassResult, _PassResult | None]:
    """The output's statistics, and its numerator by ``probes`` reverse-mode probes per row
    (the batch rule of train-mode batch norm) and ``population_probes`` (its population rule,
    plan._fusable), over all of the runner's batches: one forward pass for each batch and one
    backward pass per probe. ``needed``: given the first batch's tangent terms (probes x rows),
    the probes and population probes per row its noise asks for; the first batch gets what
    more it asks for by backward passes over the graph it recorded, the other batches get as
    many. ``signal``: other nodes whose signal statistics alone (no NLC) are taken on the
    way, from the same forward passes. The second result is None without population probes."""
    graph = runner.run.graph
    name = graph.output
    generator = torch.Generator().manual_seed(seed)
    centred = runner.centred_sources()
    main, pop = _NodeAcc(), _NodeAcc()
    others: dict[str, _NodeAcc] = {}

    def on_value(node: str, value: torch.Tensor) -> None:
        if node in signal and node != name:
            stats = runner.primal_statistics(node, value, hi - lo)
            if stats is not None:
                acc = others.setdefault(node, _NodeAcc())
                acc.primal_only = True
                acc.add(stats)

    for g, (lo, hi) in enumerate(runner.groups):
        with runner.reverse_pass(lo, hi, on_value if signal else None) as recorded:
            value, bd, rows = recorded.output, recorded.batch_dim, recorded.rows
            if not value.is_floating_point():
                raise MeasureError("the output is not floating-point")
            stats = _node_stats(value, None, bd, rows, False, False)
            basis = _basis(value.movedim(bd, 0).reshape(rows, -1))

            def numerators(count: int, population: bool) -> list[torch.Tensor]:
                return [recorded.numerator(_signs(rows, basis, generator) @ basis.T, population, centred)
                        for _ in range(count)]

            a, a_pop = numerators(probes, False), numerators(population_probes, True)
            if g == 0 and needed is not None and a:
                more, more_pop = needed(torch.stack(a))
                a += numerators(max(0, more - probes), False)
                a_pop += numerators(max(0, more_pop - population_probes), True)
                probes, population_probes = len(a), len(a_pop)
        # Without probes of a kind its pass has no tangent terms (plan._add_probes skips it).
        main.add({**stats, **({"a": torch.stack(a)} if a else {})})
        if a_pop:
            pop.add({**stats, "a": torch.stack(a_pop)})
    runner.info.seen.add(name)
    runner.info.batch_dim[name] = bd
    return (_PassResult({**others, name: main}, {}, runner.info),
            _PassResult({name: pop}, {}, runner.info) if population_probes else None)


def _signs(rows: int, basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random signs, rows x units (the basis's columns), drawn on the CPU."""
    return (torch.randint(0, 2, (rows, basis.shape[0]), generator=generator) * 2 - 1).to(basis)


def _basis(rows: torch.Tensor) -> torch.Tensor:
    """The eigenvectors of the covariance of ``rows`` (rows x units), in float64, as columns."""
    flat = rows.double()
    centred = flat - flat.mean(0)
    return torch.linalg.eigh(centred.T @ centred).eigenvectors
