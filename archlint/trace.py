"""Turn a built model into an ArchGraph, and run it node by node.

``trace`` tries torch.fx first: it gives the whole dataflow graph, functional ops included,
without guessing. Models fx cannot trace (data-dependent control flow, asserts on shapes, as
in common GPT implementations) are captured eagerly instead: forward hooks on torch's own
(leaf) modules plus a ``TorchFunctionMode`` that sees every functional op and tensor method
called outside them. Either way every node gets a source span: the construction site of its
module (recorded while the model was built), or the call site in ``forward`` (recorded while
tracing).

``execute`` runs a traced model on new inputs and hands every node's output tensor to a
callback, in forward order; the measurement pass builds on it (it works unchanged with
forward-mode AD dual tensors).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from archlint import dtypes, ops, sourcemap
from archlint.graph import ArchGraph, Node, OpKind, Span
from archlint.state import preserved_state

# Called with each node's name and output tensor; a tensor returned replaces the node's
# output downstream (the measurement pass injects tangents this way), None keeps it.
OnNode = Callable[[str, torch.Tensor], "torch.Tensor | None"]


class ForwardError(Exception):
    """The model raised on the example inputs (ARC904)."""

    def __init__(self, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.exc = exc


def trace(
    model: nn.Module,
    example_inputs: tuple,
    *,
    name: str,
    span: Span | None = None,
    sites: Mapping[nn.Module, Any] | None = None,
) -> ArchGraph:
    """Trace ``model`` into an ArchGraph; fall back to eager capture when fx fails.

    ``sites`` maps module objects to the positions where they were constructed
    (``sourcemap.record_constructions``). Raises ForwardError when the model itself fails on
    ``example_inputs``.
    """
    locate = _Locator(sites, model)
    fx_error: str | None = None
    try:
        tracer = _SiteTracer()
        fx_graph = tracer.trace(model)
        gm = fx.GraphModule(model, fx_graph, class_name=type(model).__name__)
    except Exception as exc:  # fx raises many kinds: TraceError, TypeError, AssertionError...
        fx_error = _short(exc)
    else:
        try:
            values = _run_recording_values(gm, model, example_inputs)
            if _take_output_out_of_its_layer(gm, values):
                values = _run_recording_values(gm, model, example_inputs)
        except Exception as exc:
            # The traced program differs from the eager one (e.g. a Python branch on a
            # shape that fx baked in); the eager capture decides below whether the model
            # itself is broken.
            fx_error = _short(exc)
        else:
            nodes, output, returned = _nodes_from_fx(gm, values, tracer.call_sites, locate)
            return ArchGraph(
                name=name, nodes=nodes, span=span, traced_with="fx", output=output, returned=returned,
                model=model, graph_module=gm, example_inputs=example_inputs,
            )
    nodes, output, returned = _eager_capture(model, example_inputs, locate)
    return ArchGraph(
        name=name, nodes=nodes, span=span, traced_with="eager", fallback_reason=fx_error,
        output=output, returned=returned, model=model, graph_module=None, example_inputs=example_inputs,
    )


def execute(graph: ArchGraph, args: tuple, on_node: OnNode) -> Any:
    """Run the traced model on ``args``, calling ``on_node(name, tensor)`` for every node.

    When ``on_node`` returns a tensor, that tensor replaces the node's output for the rest
    of the pass (input nodes included).

    The caller chooses the model's mode and grad state; nothing here changes them. For an
    eagerly captured graph, the forward pass must take the same path as during the trace:
    a mismatch raises RuntimeError rather than reporting numbers for the wrong nodes.
    """
    if graph.graph_module is not None:
        return _CallbackInterpreter(graph.graph_module, set(graph._by_name), on_node).run(*args)
    names = [n.name for n in graph.nodes if n.kind != OpKind.INPUT]
    ops_expected = [n.op for n in graph.nodes if n.kind != OpKind.INPUT]
    inputs = [n.name for n in graph.nodes if n.kind == OpKind.INPUT]
    position = 0

    def on_event(event: "_Event") -> Any:
        nonlocal position
        if position >= len(names) or event.op != ops_expected[position]:
            raise RuntimeError(
                f"the forward pass took a different path than when it was traced "
                f"(at step {position}: {event.op!r} instead of "
                f"{ops_expected[position] if position < len(ops_expected) else 'the end'!r})"
            )
        name, value = names[position], event.output
        position += 1
        if isinstance(value, torch.Tensor):
            return on_node(name, value)
        if name != graph.output:
            return None
        # The model returns a layer's tuple as it is (``return self.lstm(x)``): what archlint
        # measures is its first floating-point tensor, as fx's getitem nodes take it out
        # (_take_output_out_of_its_layer).
        first = first_float_output(value)
        replacement = on_node(name, first) if first is not None else None
        return None if replacement is None else _replace_tensors(value, lambda i, t: replacement if t is first else t)

    if inputs:
        args = _replace_tensors(args, lambda i, t: _or(on_node(inputs[i], t), t) if i < len(inputs) else t)
    return _EagerRunner(graph.model, on_event).run(args)


def first_float_output(output: Any) -> torch.Tensor | None:
    """The model's output as archlint measures it: the first floating-point tensor.

    Tuples and lists are searched in order, dicts in insertion order, dataclasses field by
    field; (logits, loss) -> logits, {"logits": ..., "hidden": ...} -> logits.
    """
    for t in _flatten(output):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    return None


# --------------------------------------------------------------------------------------
# fx


class _SiteTracer(fx.Tracer):
    """An fx tracer that remembers where in forward() each node was created."""

    def __init__(self) -> None:
        super().__init__()
        self.call_sites: dict[str, Any] = {}

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):  # type: ignore[override]
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        if kind in ("call_function", "call_method", "call_module"):
            self.call_sites[proxy.node.name] = sourcemap.user_call_site()
        return proxy


class _CallbackInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str], on_node: OnNode):
        super().__init__(gm)
        self._wanted = wanted
        self._on_node = on_node

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self._wanted and isinstance(result, torch.Tensor):
            replacement = self._on_node(n.name, result)
            if replacement is not None:
                return replacement
        return result


def _run_recording_values(gm: fx.GraphModule, model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """Run the GraphModule once; return every node's output (for shapes and dtypes)."""
    values: dict[str, Any] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            values[n.name] = _describe_value(result)
            return result

    with preserved_state(model), torch.no_grad():
        _Keep(gm).run(*inputs)
    return values


@dataclasses.dataclass
class _ValueInfo:
    is_tensor: bool
    has_tensor: bool
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    floating: bool = False
    # For a tuple or list: the indices that lead to its first floating-point tensor.
    float_path: tuple[int, ...] | None = None


def _describe_value(value: Any) -> _ValueInfo:
    if isinstance(value, torch.Tensor):
        return _ValueInfo(True, True, tuple(value.shape), dtypes.name(value.dtype), value.is_floating_point())
    tensors = [t for t in _flatten(value) if isinstance(t, torch.Tensor)]
    return _ValueInfo(False, bool(tensors), float_path=_float_path(value))


def _float_path(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return () if value.is_floating_point() else None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            path = _float_path(v)
            if path is not None:
                return (i,) + path
    return None


def _take_output_out_of_its_layer(gm: fx.GraphModule, values: dict[str, _ValueInfo]) -> bool:
    """When a model returns a layer's tuple as it is (``return self.lstm(x)``: its output and
    its final states), no node's value is the tensor archlint measures: the first
    floating-point one. Then getitem nodes that take it out are added after the layer (nothing
    uses them, so the model computes and returns what it did) and it becomes the graph's
    output (_first_float_node). Whether any were added."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if _first_float_node(out.args[0], values, {name: None for name in values}) is not None:
        return False
    for item in _flatten(out.args[0]):
        if isinstance(item, fx.Node) and item.name in values and values[item.name].float_path:
            node = item
            for index in values[item.name].float_path:
                with gm.graph.inserting_after(node):
                    node = gm.graph.call_function(operator.getitem, (node, index))
            gm.recompile()
            return True
    return False


def _nodes_from_fx(gm: fx.GraphModule, values: dict[str, _ValueInfo], call_sites: dict[str, Any],
                   locate: "_Locator") -> tuple[list[Node], str | None, list[str]]:
    """The graph's nodes, its output (the first floating-point value returned) and every node
    whose value is returned."""
    kept: dict[str, Node] = {}
    output: str | None = None
    returned: list[str] = []
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:
        info = values.get(n.name)
        if n.op == "output":
            output = _first_float_node(n.args[0], values, kept)
            returned = [a.name for a in _fx_arg_nodes(n) if a.name in kept]
            continue
        if n.op == "get_attr" or info is None or not info.has_tensor:
            continue
        tensor_inputs = [a.name for a in _fx_arg_nodes(n) if a.name in kept]
        module = None
        if n.op == "placeholder":
            kind, op, attrs = OpKind.INPUT, "input", {}
        elif n.op == "call_module":
            module = modules[n.target]
            kind, attrs = ops.classify_module(module)
            op = type(module).__name__
        else:
            op = ops.func_name(n.target)
            n_tensor = sum(1 for a in _fx_arg_nodes(n) if a.name in kept and values[a.name].is_tensor)
            plain_args = tuple(None if isinstance(a, fx.Node) else a for a in n.args)
            kind, attrs = ops.classify_function(op, n_tensor, plain_args, dict(n.kwargs))
        span = None
        if module is not None:
            span = locate.construction(module)
        if span is None and n.name in call_sites:
            span = locate.call(call_sites[n.name])
        kept[n.name] = Node(
            name=n.name,
            kind=kind,
            op=op,
            inputs=tensor_inputs,
            module_path=str(n.target) if n.op == "call_module" else None,
            params=ops.param_infos(module) if module is not None else {},
            attrs=attrs,
            shape=info.shape,
            dtype=info.dtype,
            span=span,
            module=module,
        )
    return list(kept.values()), output, returned


def _fx_arg_nodes(n: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), lambda a: found.append(a) or a)
    # Deduplicate while keeping order (x * x uses x twice but has one input).
    return list(dict.fromkeys(found))


def _first_float_node(out_arg: Any, values: dict[str, _ValueInfo], kept: dict[str, Node]) -> str | None:
    for item in _flatten(out_arg):
        if isinstance(item, fx.Node) and item.name in kept:
            info = values[item.name]
            if info.is_tensor and info.floating:
                return item.name
            taken = _taken_out(item, info.float_path)
            if taken is not None and taken.name in kept:
                return taken.name  # added by _take_output_out_of_its_layer
            if not info.is_tensor and item.op == "call_function":
                # A dataclass or namedtuple built in forward is a node of its own: its
                # fields are the node's arguments, in order.
                found = _first_float_node((item.args, item.kwargs), values, kept)
                if found is not None:
                    return found
    return None


def _taken_out(node: fx.Node, path: tuple[int, ...] | None) -> fx.Node | None:
    """The getitem node that takes the element at ``path`` out of ``node``'s value, if any."""
    if not path:
        return None
    for index in path:
        node = next((u for u in node.users if u.op == "call_function" and u.target is operator.getitem
                     and u.args == (node, index)), None)
        if node is None:
            return None
    return node


# --------------------------------------------------------------------------------------
# eager fallback


@dataclasses.dataclass
class _Event:
    op: str
    kind: OpKind
    attrs: dict[str, Any]
    inputs: list[int]  # ids of input tensors
    output: Any
    module: nn.Module | None = None
    module_path: str | None = None
    site: Any = None


class _EagerRunner(TorchFunctionMode):
    """Runs a model, reporting each leaf-module call and each functional op outside them."""

    def __init__(self, model: nn.Module, on_event: Callable[[_Event], Any]):
        super().__init__()
        self.model = model
        self.on_event = on_event
        self.depth = 0
        # Call sites are only needed while capturing the graph, not when re-running it.
        self.want_sites = False
        self.tracked: set[int] = set()
        # Keep every tracked tensor alive during the run so that ids are never reused.
        self._alive: list[torch.Tensor] = []
        # True while the listener runs: what it computes (a measurement unpacking forward-mode
        # tangents, its statistics) is not part of the model's forward pass.
        self._in_listener = False

    def track(self, t: Any) -> None:
        if isinstance(t, torch.Tensor):
            self.tracked.add(id(t))
            self._alive.append(t)

    def run(self, args: tuple) -> Any:
        for t in _tensor_args(args):
            self.track(t)
        handles = []
        for path, module in self.model.named_modules():
            if ops.is_leaf_module(module) and module is not self.model:
                handles.append(module.register_forward_pre_hook(self._pre))
                handles.append(module.register_forward_hook(self._make_post(path)))
        try:
            with self:
                return self.model(*args)
        finally:
            for h in handles:
                h.remove()

    def _pre(self, module: nn.Module, args: tuple) -> None:
        self.depth += 1

    def _make_post(self, path: str):
        def post(module: nn.Module, args: tuple, output: Any) -> None:
            self.depth -= 1
            if self.depth == 0:
                inputs = [id(t) for t in _tensor_args(args) if id(t) in self.tracked]
                kind, attrs = ops.classify_module(module)
                return self._emit(_Event(type(module).__name__, kind, attrs, inputs, output, module, path))
            return None

        return post

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._in_listener:
            return out
        name = ops.func_name(func)
        if self.depth == 0 and name not in ("__get__", "__set__", "__setitem__") and any(
            isinstance(t, torch.Tensor) for t in _flatten(out)
        ):
            arg_tensors = _tensor_args((args, kwargs))
            inputs = list(dict.fromkeys(id(t) for t in arg_tensors if id(t) in self.tracked))
            if inputs:
                plain_args = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
                kind, attrs = ops.classify_function(name, len(inputs), plain_args, kwargs)
                site = sourcemap.user_call_site() if self.want_sites else None
                return _or(self._emit(_Event(name, kind, attrs, inputs, out, site=site)), out)
        return out

    def _emit(self, event: _Event) -> Any:
        """Report an event; returns the replacement output, if the listener gave one."""
        self._in_listener = True
        try:
            replacement = self.on_event(event)
        finally:
            self._in_listener = False
        for t in _flatten(event.output if replacement is None else replacement):
            self.track(t)
        return replacement


def _eager_capture(model: nn.Module, inputs: tuple, locate: "_Locator") -> tuple[list[Node], str | None, list[str]]:
    """The nodes of one recorded forward pass, its output (the first floating-point tensor
    returned) and every node whose tensor is returned."""
    nodes: list[Node] = []
    owner: dict[int, str] = {}
    counts: dict[str, int] = {}

    def fresh(base: str) -> str:
        base = base.replace(".", "_") or "node"
        counts[base] = counts.get(base, 0) + 1
        return base if counts[base] == 1 else f"{base}_{counts[base] - 1}"

    for i, t in enumerate(_tensor_args(inputs)):
        name = fresh(f"input_{i}" if i else "x")
        owner[id(t)] = name
        nodes.append(Node(name=name, kind=OpKind.INPUT, op="input", shape=tuple(t.shape), dtype=_dtype(t)))

    def on_event(event: _Event) -> None:
        name = fresh(event.module_path or event.op)
        out_tensor = event.output if isinstance(event.output, torch.Tensor) else None
        span = locate.construction(event.module) if event.module is not None else None
        if span is None and event.site is not None:
            span = locate.call(event.site)
        nodes.append(Node(
            name=name,
            kind=event.kind,
            op=event.op,
            inputs=list(dict.fromkeys(owner[i] for i in event.inputs if i in owner)),
            module_path=event.module_path,
            params=ops.param_infos(event.module) if event.module is not None else {},
            attrs=event.attrs,
            shape=tuple(out_tensor.shape) if out_tensor is not None else None,
            dtype=_dtype(out_tensor) if out_tensor is not None else None,
            span=span,
            module=event.module,
        ))
        for t in _flatten(event.output):
            if isinstance(t, torch.Tensor):
                owner[id(t)] = name

    try:
        with preserved_state(model), torch.no_grad():
            runner = _EagerRunner(model, on_event)
            runner.want_sites = True
            out = runner.run(inputs)
            first = first_float_output(out)
            output = owner.get(id(first)) if first is not None else None
            returned = list(dict.fromkeys(owner[id(t)] for t in _flatten(out)
                                          if isinstance(t, torch.Tensor) and id(t) in owner))
        node = next((n for n in nodes if n.name == output), None)
        if node is not None and node.shape is None:
            # A layer's tuple returned as it is: the output node stands for its first
            # floating-point tensor (execute measures that one).
            node.shape, node.dtype = tuple(first.shape), _dtype(first)
    except Exception as exc:
        raise ForwardError(exc) from exc
    return nodes, output, returned


# --------------------------------------------------------------------------------------
# helpers


class _Locator:
    """Turns recorded positions into Spans, parsing each source file once."""

    def __init__(self, sites: Any, root: nn.Module):
        self.sites = sites
        self.root = root
        self.paths = {id(m): p for p, m in root.named_modules()}

    def construction(self, module: nn.Module | None) -> Span | None:
        if module is None or self.sites is None:
            return None
        pos = self.sites.get(module)
        if pos is None and id(module) in self.paths:
            # Deep-copied layers (nn.TransformerEncoder's clones) never ran __init__: use
            # the nearest recorded parent.
            pos = self.sites.find(self.root, self.paths[id(module)])
        return sourcemap.construction_span(pos) if pos is not None else None

    def call(self, pos: Any) -> Span | None:
        return sourcemap.call_span(pos) if pos is not None else None


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _flatten(getattr(value, f.name))
    else:
        yield value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _replace_tensors(value: Any, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> Any:
    """Rebuild a (nested) argument structure, passing each tensor through ``fn(index, t)``."""
    state = {"i": 0}

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            i = state["i"]
            state["i"] += 1
            return fn(i, v)
        if isinstance(v, tuple):
            return tuple(walk(x) for x in v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


def _tensor_args(args: Any) -> list[torch.Tensor]:
    return [t for t in _flatten(args) if isinstance(t, torch.Tensor)]


def _dtype(t: torch.Tensor) -> str:
    return dtypes.name(t.dtype)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]

