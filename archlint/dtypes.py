"""dtypes by name, as the graph records them (``"float32"``, ``"bfloat16"``, ``"int64"``).

The graph, the rules and the predictor never hold torch dtypes, only these names, so that
reading a graph needs no torch; this module is the one place that says which names are
floating point and which are low precision.
"""

from __future__ import annotations

from typing import Any

# Half precision: about 3 (float16) and 2 (bfloat16) significant digits.
LOW_PRECISION = ("float16", "bfloat16")


def name(dtype: Any) -> str:
    """The graph's name of a ``torch.dtype``: ``torch.float32`` -> ``"float32"``."""
    return str(dtype).replace("torch.", "")


def is_floating(dtype: str | None) -> bool:
    """A real floating-point dtype (float16/bfloat16/float32/float64, the float8 kinds), as
    ``torch.dtype.is_floating_point`` says; complex, integer, bool and unknown (None) are not."""
    return dtype is not None and (dtype.startswith("float") or dtype == "bfloat16")


def is_complex(dtype: str | None) -> bool:
    return dtype is not None and dtype.startswith("complex")
