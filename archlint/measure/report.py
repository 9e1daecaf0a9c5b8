"""The results of a measurement: ``Report`` and its per-node and per-segment statistics.

Plain data without torch, so that code which only reads or formats reports need not import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = {
    "ok": "measured",
    "vanished": "the signal is below floating-point resolution (no input-dependent variance left)",
    "exploded": "the signal or its tangent overflowed to inf",
    "nan": "the signal or its tangent is NaN",
    "constant": "does not depend on the input: no tangent and no variance over the batch",
    "no-gradient": "varies with the input but has no derivative with respect to it",
    "not-per-sample": "has no batch dimension (a constant table or a reduction over the batch)",
    "not-tensor": "its value is not a single tensor (e.g. a tuple of outputs)",
    "not-float": "integer or boolean values",
}


class MeasureError(Exception):
    """The model cannot be measured (it fails on the inputs, or the inputs are unusable)."""


def failure(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it), for a note saying
    why a faster path gave way to a slower one."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


@dataclass
class NodeStats:
    """One node's measured statistics over the sample.

    A "unit" is one element of the node's output for one sample (a neuron, or a channel at
    one position). The NLC and signal statistics are None unless ``status`` is "ok"; the
    signal statistics are also given for "vanished" nodes.
    """

    name: str
    kind: str
    op: str
    status: str
    # NLC from the model input (the embedding output for token inputs) to this node.
    nlc: float | None = None
    nlc_se: float | None = None
    # Over all units and samples.
    mean: float | None = None
    std: float | None = None
    rms: float | None = None
    # sqrt(sum_i (E_x h_i)^2 / sum_i E_x h_i^2): the share of the RMS that does not depend on
    # the input (digest §4.4); 1 means every input looks the same (collapsing domain).
    neuron_bias: float | None = None
    # sqrt(sum_i Var_x h_i / sum_i E_x h_i^2): the between-input spread relative to the RMS.
    # spread^2 + neuron_bias^2 = 1.
    spread: float | None = None
    # The mean-field state (digest §6): v = mean_i Var_x(h_i), M = mean_i (E_x h_i)^2.
    unit_var: float | None = None
    unit_mean_sq: float | None = None
    # Pre-activations only (nodes that feed an elementwise activation): the mean over units of
    # min(P, N) / (P + N), P and N counting positive and non-positive values over the sample
    # (digest §4.3), and the fraction of units never > 0 (dead ReLU units).
    sign_diversity: float | None = None
    dead_fraction: float | None = None
    # Train-mode BatchNorm models: the NLC of the eval-mode model with populated statistics.
    nlc_population: float | None = None
    nlc_population_se: float | None = None
    status_population: str | None = None
    # The precision the numbers were measured in ("float64" after a float64 re-check).
    dtype: str | None = None


@dataclass
class SegmentStats:
    """The NLC of the sub-network from ``start``'s output to ``end``'s output."""

    start: str
    end: str
    status: str
    nlc: float | None = None
    nlc_se: float | None = None
    nlc_population: float | None = None
    nlc_population_se: float | None = None
    status_population: str | None = None
    dtype: str | None = None


@dataclass
class Report:
    model: str
    # The output node (the model's first floating-point output).
    output: str
    # "train-bn": BatchNorm uses batch statistics, so ``nlc`` is the NLC of the function that
    # is trained, on batches of ``batch_size``; "eval": no batch dependence.
    mode: str
    device: str
    dtype: str
    batch_size: int
    samples: int
    probes: int
    # Where the tangent enters: the floating-point inputs, or the embedding outputs.
    sources: list[str]
    nodes: dict[str, NodeStats]
    segments: dict[tuple[str, str], SegmentStats] = field(default_factory=dict)
    population_probes: int | None = None
    # The float32 output NLC when a float64 re-check replaced it (the precision difference).
    output_nlc_float32: float | None = None
    # The output node measured in each precision that ran, by dtype name: the model's own
    # (float16/bfloat16 parameters or autocast) and "float64" after a re-check. Low-precision
    # models are always re-checked, so their rounding error is visible (ARC304).
    output_by_dtype: dict[str, NodeStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # What was given up to fit the time budget (fewer samples or probes, the float64
    # re-check; also the first of ``notes``), else None.
    budget_note: str | None = None

    @property
    def output_stats(self) -> NodeStats:
        return self.nodes[self.output]

    @property
    def output_nlc(self) -> float | None:
        return self.output_stats.nlc

    @property
    def output_nlc_se(self) -> float | None:
        return self.output_stats.nlc_se

    @property
    def output_nlc_population(self) -> float | None:
        return self.output_stats.nlc_population

    @property
    def output_nlc_population_se(self) -> float | None:
        return self.output_stats.nlc_population_se

    @property
    def status(self) -> str:
        return self.output_stats.status

    def table(self) -> str:
        """The per-node statistics as an aligned text table, in forward order."""
        population = self.mode == "train-bn" and self.population_probes is not None
        header = ["node", "kind", "op", "NLC", "±se"] + (["NLC eval", "±se"] if population else [])
        header += ["mean", "std", "NB", "spread", "signdiv", "dead", "status"]
        rows = [header]
        for s in self.nodes.values():
            row = [s.name, s.kind, s.op, _fmt(s.nlc), _fmt(s.nlc_se)]
            if population:
                row += [_fmt(s.nlc_population), _fmt(s.nlc_population_se)]
            row += [_fmt(s.mean), _fmt(s.std), _fmt(s.neuron_bias), _fmt(s.spread),
                    _fmt(s.sign_diversity), _fmt(s.dead_fraction), s.status]
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self) -> str:
        out = self.output_stats
        head = f"{self.model}: output NLC {_fmt(out.nlc)} ± {_fmt(out.nlc_se)}"
        if out.nlc_population is not None:
            head += f" (eval with populated BatchNorm statistics: {_fmt(out.nlc_population)} ± {_fmt(out.nlc_population_se)})"
        if out.status != "ok":
            head += f" [{out.status}]"
        lines = [
            head,
            f"mode {self.mode}, {self.samples} samples in batches of {self.batch_size}, "
            f"{self.probes} probes per sample, {self.device}, {self.dtype}, {self.seconds:.2f}s",
            "",
            self.table(),
        ]
        if self.segments:
            lines += ["", "segments:"]
            for (start, end), seg in self.segments.items():
                text = f"  {start} -> {end}: NLC {_fmt(seg.nlc)} ± {_fmt(seg.nlc_se)}"
                if seg.nlc_population is not None:
                    text += f", eval {_fmt(seg.nlc_population)} ± {_fmt(seg.nlc_population_se)}"
                lines.append(text + ("" if seg.status == "ok" else f" [{seg.status}]"))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
