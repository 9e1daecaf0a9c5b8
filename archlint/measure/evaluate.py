"""From accumulated sums to numbers: each node's NLC, standard error and signal statistics,
whether float32 resolved them, and the ``Report`` of one run of the plan."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from archlint import dtypes
from archlint.measure.model import _Runnable
from archlint.measure.report import NodeStats, Report, SegmentStats
from archlint.measure.runner import _groups, _NodeAcc, _NodeInfo, _PassResult

if TYPE_CHECKING:
    from archlint.measure.plan import _Plan

# An output NLC above this amplifies float32 rounding (digest §3, precision): check in float64.
PRECISION_NLC = 100.0
# A spread (input-dependent share of the RMS) below this leaves a float32 variance with a
# rounding error of about 1% or more after a few dozen layers: check in float64.
PRECISION_SPREAD = 1e-4
# Ops that write a given value where a mask says: the infinity a causal attention mask writes
# (masked_fill(mask, -inf)) is the model's own, and float64 writes the same one.
FILL_OPS = {"masked_fill", "masked_fill_", "where", "index_fill", "index_fill_", "fill_", "full", "full_like"}


@dataclass
class _Value:
    """The NLC part of a node's result, with what it needs to decide on a float64 re-check."""

    status: str
    nlc: float | None = None
    se: float | None = None
    stats: dict[str, float | None] = field(default_factory=dict)
    # Why float32 cannot be trusted here (None when it can).
    doubt: str | None = None


def _evaluate(acc: _NodeAcc | None, info: _NodeInfo, name: str, dtype: torch.dtype) -> _Value:
    if name not in info.seen:
        return _Value("not-tensor")
    if name in info.not_float:
        return _Value("not-float")
    if acc is None:
        return _Value("not-per-sample")
    acc = _on_host(acc)
    n = acc.n
    mean = acc.mean
    var = float(acc.m2) / n  # tr Cov over the sample (biased, like the directions)
    msq = float(mean.square().sum())
    units = mean.numel()
    a = torch.cat(acc.a, dim=1).mean(0) if acc.has_tangent and acc.a else None  # per row, over probes
    b = torch.cat(acc.b)
    checked = [mean, b] + ([a] if a is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in checked):
        # A unit that overflowed has an infinite mean (NaN once +inf meets -inf in the
        # centring): any inf means the signal exploded, NaN alone that the model made NaNs.
        exploded = any(bool(torch.isinf(t).any()) for t in checked)
        status = "exploded" if exploded else "nan"
        return _Value(status, doubt=status)
    scale = var + msq
    stats: dict[str, float | None] = {
        "mean": float(mean.mean()),
        "rms": math.sqrt(scale / units),
        "std": math.sqrt(max(scale / units - float(mean.mean()) ** 2, 0.0)),
        "neuron_bias": math.sqrt(msq / scale) if scale > 0 else None,
        "spread": math.sqrt(var / scale) if scale > 0 else None,
        "unit_var": var / units,
        "unit_mean_sq": msq / units,
    }
    if acc.pos is not None:
        # N counts the values that are not positive: exact zeros are as inactive as negatives.
        pos = acc.pos.double()
        stats["sign_diversity"] = float(torch.minimum(pos, n - pos).mean() / n)
        stats["dead_fraction"] = float((acc.pos == 0).double().mean())
    finfo = torch.finfo(dtype)
    # Rounding makes any variance below (eps * scale)^2 meaningless; near the underflow
    # threshold values lose their precision altogether.
    # float16's smallest normal number (6e-5) is itself a plausible activation scale: for it
    # the margin is a factor 10 on the RMS instead of 1e6 on the mean square.
    floor = (10 * finfo.tiny) ** 2 if dtype == torch.float16 else finfo.tiny * 1e6
    resolved = var > (64 * finfo.eps) ** 2 * scale and scale / units > floor
    if a is None:
        if acc.primal_only:
            # Signal statistics only (no NLC was asked for here), re-checked in float64 where
            # float32 cannot resolve them, as elsewhere. The nodes asked for so are the signal's
            # (patterns.screened_nodes): with a tangent, no variance would read "vanished" too.
            if not resolved:
                return _Value("vanished", stats=stats, doubt="vanished")
            return _Value("ok", stats=stats, doubt=_spread_doubt(stats))
        return _Value("constant" if var == 0 else "no-gradient", stats=stats)
    if not resolved:
        # Rechecked in float64 unless all-zero weights made it (see _Result._doubts).
        return _Value("vanished", stats=stats, doubt="vanished")
    numerator = float(a.mean())
    if numerator == 0:
        return _Value("no-gradient", nlc=0.0, se=0.0, stats=stats)
    nlc = math.sqrt(numerator / var)
    se = nlc * _relative_se(a, b)
    return _Value("ok", nlc=nlc, se=se, stats=stats, doubt=_spread_doubt(stats))


def _spread_doubt(stats: dict[str, float | None]) -> str | None:
    return "spread" if stats["spread"] is not None and stats["spread"] < PRECISION_SPREAD else None


def _on_host(acc: _NodeAcc) -> _NodeAcc:
    """The sums _evaluate reads, copied to the CPU at once: it reads a dozen scalars per
    node, and on a GPU each would be a small kernel and a synchronisation."""
    if acc.mean is None or acc.mean.device.type == "cpu":
        return acc
    host = copy.copy(acc)
    host.mean, host.m2 = acc.mean.cpu(), acc.m2.cpu()
    host.a = [torch.cat(acc.a, dim=1).cpu()] if acc.a else []
    host.b = [torch.cat(acc.b).cpu()]
    host.pos = acc.pos.cpu() if acc.pos is not None else None
    return host


def _relative_se(a: torch.Tensor, b: torch.Tensor) -> float:
    """Standard error of sqrt(mean a / mean b) relative to it, by the delta method: a and b
    are per-row numerator and denominator terms, correlated through the row."""
    n = a.numel()
    if n < 2:
        return float("nan")
    # Var(log mean a - log mean b) ~ Var(a / E a - b / E b) / n: the two relative terms'
    # variances less twice their covariance, in one variance of their difference.
    var_log = (a / a.mean() - b / b.mean()).var() / n
    return 0.5 * math.sqrt(max(float(var_log), 0.0))


class _Result:
    """The numbers of one run of the plan (one precision), before they become a Report."""

    def __init__(self, plan: _Plan, run: _Runnable, mode, main: _PassResult, pop, segs, pop_segs, notes, sources):
        self.plan = plan
        self.sources = sources
        self.graph = run.graph
        self.dtype = run.dtype
        self.mode = mode
        self.notes = notes + _run_notes(run)
        self.main = {name: _evaluate(main.accs.get(name), main.info, name, run.dtype) for name in plan.wanted}
        self.pop = None
        if pop is not None:
            self.pop = {name: _evaluate(pop.accs.get(name), pop.info, name, run.dtype) for name in plan.wanted}
        self.segs = {k: _evaluate(r.acc, r.info, r.name, run.dtype) for k, r in segs.items()}
        self.pop_segs = {k: _evaluate(r.acc, r.info, r.name, run.dtype) for k, r in pop_segs.items()}
        self.reasons = self._doubts(run)
        self.output_nlc_float32: float | None = None
        self.output_by_dtype: dict[str, NodeStats] = {}
        self.probes = plan.probes
        self.population_probes: int | None = None

    def _doubts(self, run: _Runnable) -> list[str]:
        """Why a float64 re-check is needed: nodes whose float32 numbers are rounding artefacts.
        An exact zero made by all-zero weights (zero-initialised layers) is not one."""
        structural: set[str] = set()
        reasons = []
        out = self.main[self.graph.output]
        if out.nlc is not None and out.nlc > PRECISION_NLC:
            reasons.append(f"{self.graph.output} (NLC {out.nlc:.3g} > {PRECISION_NLC:g})")
        low = sorted({n.dtype for n in self.graph if n.dtype in dtypes.LOW_PRECISION} | (
            {dtypes.name(self.dtype)} if dtypes.name(self.dtype) in dtypes.LOW_PRECISION else set()))
        if low and self.dtype != torch.float64:
            reasons.append(f"{'/'.join(low)} computation (precision check)")
        for values in [self.main] + ([self.pop] if self.pop else []):
            for node in self.graph:
                v = values.get(node.name)
                if v is None:
                    continue  # not asked for
                if v.status == "vanished" and (_zero_weight(run.module(node)) or any(i in structural for i in node.inputs)):
                    structural.add(node.name)
                    continue
                if v.status == "exploded" and node.op in FILL_OPS and not any(
                        values.get(i) is not None and values[i].status in ("exploded", "nan") for i in node.inputs):
                    continue  # a written infinity (a mask), not an overflow of finite inputs
                if v.doubt is not None:
                    reasons.append(f"{node.name} ({v.doubt})")
        for v, (start, end) in [(v, k) for k, v in list(self.segs.items()) + list(self.pop_segs.items())]:
            if v.doubt is not None and end not in structural:
                reasons.append(f"segment {start}->{end} ({v.doubt})")
        return list(dict.fromkeys(reasons))

    @property
    def needs_float64(self) -> bool:
        return bool(self.reasons)

    def report_nodes(self) -> dict[str, NodeStats]:
        nodes = {}
        for name in self.plan.wanted:
            node, v = self.graph[name], self.main[name]
            s = NodeStats(name=node.name, kind=node.kind.value, op=node.op, status=v.status, nlc=v.nlc, nlc_se=v.se,
                          dtype=dtypes.name(self.dtype), **v.stats)
            if self.pop is not None:
                p = self.pop[node.name]
                s.nlc_population, s.nlc_population_se, s.status_population = p.nlc, p.se, p.status
            nodes[node.name] = s
        return nodes

    def report(self, model_name: str, device: str) -> Report:
        segments = {}
        for key, v in self.segs.items():
            seg = SegmentStats(start=key[0], end=key[1], status=v.status, nlc=v.nlc, nlc_se=v.se, dtype=dtypes.name(self.dtype))
            if key in self.pop_segs:
                p = self.pop_segs[key]
                seg.nlc_population, seg.nlc_population_se, seg.status_population = p.nlc, p.se, p.status
            segments[key] = seg
        plan = self.plan
        return Report(
            model=model_name,
            output=self.graph.output,
            mode=self.mode,
            device=device,
            dtype=dtypes.name(self.dtype),
            batch_size=plan.batch_size,
            samples=_groups(plan.args[0].shape[plan.batch_dims[0]], plan.batch_size, self.mode == "train-bn")[-1][1],
            probes=self.probes,
            population_probes=self.population_probes,
            sources=list(self.sources),
            nodes=self.report_nodes(),
            segments=segments,
            output_nlc_float32=self.output_nlc_float32,
            notes=self.notes,
        )


def _run_notes(run: _Runnable) -> list[str]:
    notes = []
    if not run.in_place:
        notes.append(f"measured a copy of the model on {run.device} ({dtypes.name(run.dtype)})")
    return notes


def _zero_weight(module: nn.Module | None) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.numel() > 0 and not bool(w.detach().any())
