"""Predicted and measured values as rules read them.

Rules read the static prediction from ``graph.prediction`` (set by the engine with
``archlint.predict.predict``) and the measurement from the ``archlint.measure.Report``
handed to ``confirm``. These accessors return None where a value does not exist (not
predicted, not measured, signal vanished), so that a rule can say so instead of guessing.
"""

from __future__ import annotations

import math
from typing import Any

from archlint.graph import ArchGraph


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a message: 3 significant digits, or "-" when there is none."""
    if value is None:
        return "-"
    if 0.99 < abs(value) < 1:
        # Neuron biases and fractions near 1: 0.9996 must not read as 1, nor 0.9999994.
        for places in range(4, 10):
            text = f"{value:.{places}f}"
            if abs(float(text)) < 1:
                return text
        return text
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def fmt_beside(value: float, threshold: float | None) -> str:
    """``fmt(value)`` with as many digits as it takes not to read as the threshold it is
    compared with: a block NLC of 1.2996 dismissed against 1.3 shows as 1.2996, not 1.3."""
    for digits in range(3, 7):
        text = fmt(value, digits)
        if threshold is None or value == threshold or text != fmt(threshold, digits):
            return text
    return text


def predicted(graph: ArchGraph, name: str | None) -> Any:
    """The NodePrediction of ``name`` when it is predicted, else None."""
    if graph.prediction is None or name is None:
        return None
    node = graph.prediction.nodes.get(name)
    return node if node is not None and node.predicted else None


def predicted_nlc(graph: ArchGraph, name: str | None) -> float | None:
    node = predicted(graph, name)
    return node.nlc if node is not None else None


def predicted_segment_nlc(graph: ArchGraph, start: str, end: str) -> float | None:
    """The predicted NLC of the sub-network ``start`` -> ``end`` (the node's own NLC when
    ``start`` is a source, where the segment is everything before ``end``)."""
    from archlint.predict import segment_nlc

    if graph.prediction is None:
        return None
    try:
        return segment_nlc(graph.prediction, start, end)
    except ValueError:
        return None


def predicted_std(graph: ArchGraph, name: str) -> float | None:
    """Standard deviation over units and inputs: sqrt(v + M - mean^2)."""
    node = predicted(graph, name)
    if node is None or node.v is None or node.M is None:
        return None
    mean = node.mean or 0.0
    return math.sqrt(max(node.v + node.M - mean * mean, 0.0))


def measured(report: Any, name: str | None) -> Any:
    """The NodeStats of ``name``, or None."""
    if report is None or name is None:
        return None
    return report.nodes.get(name)


def measured_nlc(report: Any, name: str | None) -> float | None:
    stats = measured(report, name)
    return stats.nlc if stats is not None and stats.status == "ok" else None


def measured_segment_nlc(report: Any, start: str, end: str) -> float | None:
    """The measured NLC of a segment; a segment starting at a source is the node's NLC."""
    if report is None:
        return None
    if start in report.sources and (start, end) not in report.segments:
        return measured_nlc(report, end)
    seg = report.segments.get((start, end))
    return seg.nlc if seg is not None and seg.status == "ok" else None


def measured_status(report: Any, name: str | None) -> str | None:
    stats = measured(report, name)
    return stats.status if stats is not None else None


def data_std(report: Any, name: str | None) -> float | None:
    """The input-dependent standard deviation of a node, sqrt(mean_i Var_x h_i)."""
    stats = measured(report, name)
    if stats is None or stats.unit_var is None:
        return None
    return math.sqrt(max(stats.unit_var, 0.0))
