"""The per-layer profile of a model: how its statistics evolve along depth, measured beside
predicted, with the rules' thresholds and findings.

``rows(report, graph)`` gives one dict per node in forward order (measured from an
``archlint.measure`` Report, predicted from the mean-field prediction on the graph);
``to_dataframe`` the same as a pandas DataFrame when pandas is installed; ``plot`` draws four
panels with matplotlib (the optional extra ``archlint[plot]``):

1. the NLC from the input (log scale), with the band between the rules' thresholds for a
   too-linear (ARC406) and a too-nonlinear (ARC101) network;
2. each activation's layer NLC (its NLC over its input's), with ARC104's threshold;
3. the RMS and the between-input spread (log scale), with ARC202's and ARC203's ratios to
   the input;
4. neuron bias and the dead-unit fraction of pre-activations, with ARC201's and ARC204's
   thresholds.

Every finding is marked at its node's position with its code. Thresholds are read from the
rule registry (a user's rule options replace the defaults when given).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Iterable

from archlint.graph import ArchGraph, OpKind

PLOT_HINT = "archlint profile needs matplotlib: pip install 'archlint[plot]' (or pip install matplotlib)"
FIGSIZE = (11.0, 10.0)
DPI = 100

COLUMNS = ("index", "name", "kind", "op", "nlc", "nlc_predicted", "layer_nlc", "layer_nlc_predicted",
           "rms", "rms_predicted", "spread", "spread_predicted", "neuron_bias", "neuron_bias_predicted",
           "dead_fraction", "status")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(PLOT_HINT) from exc
    return plt


def thresholds(rule_options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Each rule's options by code: the registry's defaults, then ``rule_options`` (by rule
    name, as in the configuration)."""
    from archlint import rule as rules_api

    out = {}
    for code, r in rules_api.registry().items():
        out[code] = {**r.options, **((rule_options or {}).get(r.name) or {})}
    return out


def rows(report: Any, graph: ArchGraph | None = None) -> list[dict[str, Any]]:
    """One row per measured node, in forward order: measured and (where the graph has a
    prediction) predicted statistics. ``layer_nlc`` only for elementwise activations."""
    predicted = graph.prediction.nodes if graph is not None and graph.prediction is not None else {}
    nodes = {n.name: n for n in graph} if graph is not None else {}
    out = []
    for index, (name, s) in enumerate(report.nodes.items()):
        p = predicted.get(name)
        node = nodes.get(name)
        row = {
            "index": index, "name": name, "kind": s.kind, "op": s.op, "status": s.status,
            "nlc": s.nlc, "rms": s.rms, "spread": s.spread, "neuron_bias": s.neuron_bias,
            "dead_fraction": s.dead_fraction,
            "nlc_predicted": getattr(p, "nlc", None), "rms_predicted": getattr(p, "rms", None),
            "neuron_bias_predicted": getattr(p, "neuron_bias", None),
            "spread_predicted": None, "layer_nlc": None, "layer_nlc_predicted": None,
        }
        nb = row["neuron_bias_predicted"]
        if nb is not None and 0 <= nb <= 1:
            row["spread_predicted"] = math.sqrt(1 - nb * nb)
        is_act = s.kind == OpKind.ACTIVATION.value and (node is None or node.attrs.get("elementwise", True))
        parent = node.inputs[0] if node is not None and node.inputs else None
        if is_act and parent is not None:
            ps = report.nodes.get(parent)
            if s.nlc and ps is not None and ps.nlc:
                row["layer_nlc"] = s.nlc / ps.nlc
            pp = predicted.get(parent)
            if p is not None and pp is not None and getattr(p, "nlc", None) and getattr(pp, "nlc", None):
                row["layer_nlc_predicted"] = p.nlc / pp.nlc
        out.append(row)
    return out


def to_dataframe(report: Any, graph: ArchGraph | None = None):
    """``rows`` as a pandas DataFrame (pandas is not a dependency of archlint)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_dataframe needs pandas (pip install pandas); rows() gives the same as dicts") from exc
    return pd.DataFrame(rows(report, graph), columns=list(COLUMNS))


def plot(report: Any, graph: ArchGraph | None = None, findings: Iterable[Any] = (), path: str | Path | None = None,
         rule_options: dict[str, dict[str, Any]] | None = None, title: str | None = None):
    """Draw the profile; write it to ``path`` (.png, .svg, .pdf, or .html: the PNG embedded
    above a table of the rows) when given. Returns the matplotlib Figure."""
    plt = _matplotlib()
    data = rows(report, graph)
    opts = thresholds(rule_options)
    fig, axes = plt.subplots(4, 1, figsize=FIGSIZE, dpi=DPI, sharex=True)
    x = [r["index"] for r in data]

    def series(key: str):
        pts = [(r["index"], r[key]) for r in data if r[key] is not None and r[key] > 0 and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    def lines(ax, key: str, label: str, color: str, log: bool = False):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, "-o", ms=3, color=color, label=f"{label} (measured)")
        xs, ys = series(key + "_predicted")
        if xs:
            ax.plot(xs, ys, "--", color=color, alpha=0.6, label=f"{label} (predicted)")
        if log:
            ax.set_yscale("log")

    ax = axes[0]
    lines(ax, "nlc", "NLC from the input", "C0", log=True)
    low, high = opts.get("ARC406", {}).get("threshold"), opts.get("ARC101", {}).get("threshold")
    if low and high:
        ax.axhspan(low, high, color="green", alpha=0.08, label=f"band {low:g} to {high:g} (ARC406, ARC101)")
    ax.set_ylabel("NLC")
    ax = axes[1]
    lines(ax, "layer_nlc", "layer NLC", "C1")
    op_thr = opts.get("ARC104", {}).get("threshold")
    if op_thr:
        ax.axhline(op_thr, color="red", lw=0.8, ls=":", label=f"ARC104 threshold {op_thr:g}")
    ax.set_ylabel("layer NLC")
    ax = axes[2]
    lines(ax, "rms", "RMS", "C2", log=True)
    lines(ax, "spread", "between-input spread", "C4")
    first_rms = next((r["rms"] for r in data if r["rms"]), None)
    if first_rms:
        grow = opts.get("ARC202", {}).get("threshold")
        if grow:
            ax.axhline(first_rms * grow, color="red", lw=0.8, ls=":", label=f"ARC202: {grow:g} x input RMS")
    ax.set_ylabel("RMS / spread")
    ax = axes[3]
    pre = [r for r in data if r["dead_fraction"] is not None]
    pre_names = {r["name"] for r in pre}
    for key, label, color in (("neuron_bias", "neuron bias", "C3"), ("dead_fraction", "dead fraction", "C5")):
        pts = [(r["index"], r[key]) for r in data if r["name"] in pre_names and r[key] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color=color, label=f"{label} (measured)")
        pts = [(r["index"], r.get(key + "_predicted")) for r in data if r["name"] in pre_names and r.get(key + "_predicted") is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=color, alpha=0.6, label=f"{label} (predicted)")
    for code, key, label in (("ARC201", "threshold", "neuron bias"), ("ARC204", "threshold", "dead fraction")):
        value = opts.get(code, {}).get(key)
        if value is not None:
            ax.axhline(value, color="red", lw=0.8, ls=":", label=f"{code}: {label} {value:g}")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("pre-activations")
    positions = {r["name"]: r["index"] for r in data}
    for f in findings:
        at = positions.get(f.node) if getattr(f, "node", None) else None
        if at is None and getattr(f, "segment", None):
            at = positions.get(f.segment[1])
        if at is None:
            at = x[-1] if x else 0
        for a in axes:
            a.axvline(at, color="red", alpha=0.35, lw=1)
        axes[0].annotate(f.code, (at, 1), xycoords=("data", "axes fraction"), xytext=(2, -12),
                         textcoords="offset points", color="red", fontsize=8)
    ticks = [r["index"] for r in data if r["kind"] in (OpKind.ACTIVATION.value, OpKind.OUTPUT.value) or r["index"] == len(data) - 1]
    step = max(1, len(ticks) // 25)
    axes[-1].set_xticks(ticks[::step])
    axes[-1].set_xticklabels([data[i]["name"] for i in ticks[::step]], rotation=60, ha="right", fontsize=7)
    axes[-1].set_xlabel("node, in forward order")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="best")
    fig.suptitle(title or f"{report.model}: output NLC {_fmt(report.output_nlc_population or report.output_nlc)}")
    fig.tight_layout()
    if path is not None:
        save(fig, path, data)
    return fig


def save(fig: Any, path: str | Path, data: list[dict[str, Any]] | None = None) -> None:
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        img = base64.b64encode(buf.getvalue()).decode()
        table = ""
        if data:
            head = "".join(f"<th>{c}</th>" for c in COLUMNS)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in COLUMNS) + "</tr>" for r in data)
            table = f"<table border=1 cellspacing=0 cellpadding=3><tr>{head}</tr>{body}</table>"
        title = html.escape(fig._suptitle.get_text() if fig._suptitle else "archlint profile")
        path.write_text(f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                        f"<h1>{title}</h1><img src=\"data:image/png;base64,{img}\">{table}\n", encoding="utf-8")
    else:
        fig.savefig(path, dpi=DPI)


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"
