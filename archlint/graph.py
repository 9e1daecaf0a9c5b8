"""The ArchGraph: everything archlint knows about one model, in forward order.

A trace (``archlint.trace``) turns a built ``nn.Module`` into an ``ArchGraph``. Rules read it
and never touch torch themselves; the mean-field predictor and the measurement pass attach
their per-node statistics to it (``predicted`` / ``measured``), keyed by node name.

Positions inside archlint are 1-based lines and 0-based columns (Python's ``ast``
convention, in code points); ``Span.end_col`` is exclusive. Output formats convert columns to 1-based at the
edge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class Span:
    """A source region: 1-based lines, 0-based columns, exclusive end column."""

    path: str
    line: int
    col: int = 0
    end_line: int | None = None
    end_col: int | None = None

    @classmethod
    def whole_line(cls, path: str, line: int, source_lines: list[str]) -> "Span":
        """Line ``line`` of ``source_lines`` from its first non-blank character to its last
        (where a problem has a line but no finer location: an import error, a crash)."""
        text = source_lines[line - 1].rstrip() if 0 < line <= len(source_lines) else ""
        return cls(path, line, len(text) - len(text.lstrip()), line, len(text) if text else None)


class OpKind(str, enum.Enum):
    """What a node does, as far as signal propagation is concerned."""

    INPUT = "input"
    OUTPUT = "output"
    LINEAR = "linear"
    CONV = "conv"
    NORM = "norm"
    ACTIVATION = "activation"
    ADD = "add"
    MUL = "mul"
    POOL = "pool"
    RESHAPE = "reshape"
    ATTENTION = "attention"
    EMBEDDING = "embedding"
    # Dropout, nn.Identity and friends: the identity at measurement time (dropout is off).
    IDENTITY = "identity"
    # Whatever archlint cannot classify: a recurrent layer, a custom op, an indexing node.
    UNKNOWN = "unknown"


@dataclass
class ParamInfo:
    """Shape and initial statistics of one parameter or buffer of a node's module."""

    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    # fan_in as torch.nn.init computes it (weights of rank >= 2 only), so that the mean-field
    # predictor can read the effective gain sigma_w^2 = std^2 * fan_in.
    fan_in: int | None = None
    requires_grad: bool = True


@dataclass
class Node:
    """One operation of the model's forward pass."""

    name: str
    kind: OpKind
    # The concrete operation: the module class ("Conv2d"), or the function ("relu", "add").
    op: str
    # Names of the nodes whose tensors this node consumes, in argument order.
    inputs: list[str] = field(default_factory=list)
    # Dotted path of the module that computes this node ("layer1.0.conv1"), or None for
    # functional ops and placeholders.
    module_path: str | None = None
    # Parameters and buffers of that module, by their local name ("weight", "running_var").
    params: dict[str, ParamInfo] = field(default_factory=dict)
    # Op-specific facts the rules and the predictor need: activation name and slope, norm
    # type and affine/training flags, eps, stride, the scalar of a `mul`, and so on.
    attrs: dict[str, Any] = field(default_factory=dict)
    # Output shape and dtype on the example inputs (batch included), when known.
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    # The line a user would change: the constructor call that built the module, or the call
    # in forward() for functional ops.
    span: Span | None = None
    # The module object itself (not serialised; rules must not run it).
    module: Any = field(default=None, repr=False, compare=False)

    @property
    def is_nonlinear(self) -> bool:
        return self.kind in (OpKind.ACTIVATION, OpKind.ATTENTION) or (
            self.kind == OpKind.MUL and bool(self.attrs.get("elementwise_product"))
        )


@dataclass
class ArchGraph:
    """One model's forward pass as a list of nodes in forward order."""

    # The model's display name: the class or factory it was built from.
    name: str
    nodes: list[Node]
    # The class/def line: where whole-model findings point.
    span: Span | None = None
    # "fx" when torch.fx traced the model, "eager" when the hook-based fallback captured it.
    traced_with: str = "fx"
    # Why fx failed, when traced_with == "eager".
    fallback_reason: str | None = None
    # The name of the node whose value is the model's (first floating-point) output.
    output: str | None = None
    # Every node whose value the model returns (a second head, an auxiliary output), in the
    # order returned; empty when not known.
    returned: list[str] = field(default_factory=list)
    # The static prediction (archlint.predict.Prediction: per-node statistics by name, and
    # what segment predictions need), set by the engine; None when it failed.
    prediction: Any = field(default=None, repr=False, compare=False)
    # The verification pass's archlint.measure.Report, when the model was measured.
    measured: Any = None
    # Runtime objects, not serialised: the built model, the fx GraphModule (fx only), the
    # example inputs used for the trace.
    model: Any = field(default=None, repr=False, compare=False)
    graph_module: Any = field(default=None, repr=False, compare=False)
    example_inputs: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}
        self._users: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                if i in self._users:
                    self._users[i].append(n.name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def users(self, name: str) -> list[str]:
        """Names of the nodes that consume ``name``'s output, in forward order."""
        return list(self._users.get(name, ()))

    def of_kind(self, *kinds: OpKind) -> list[Node]:
        return [n for n in self.nodes if n.kind in kinds]

    @property
    def inputs(self) -> list[Node]:
        return self.of_kind(OpKind.INPUT)

    def ancestors(self, name: str) -> set[str]:
        """Every node that ``name`` depends on (not including itself)."""
        seen: set[str] = set()
        stack = list(self[name].inputs)
        while stack:
            cur = stack.pop()
            if cur in seen or cur not in self._by_name:
                continue
            seen.add(cur)
            stack.extend(self._by_name[cur].inputs)
        return seen
