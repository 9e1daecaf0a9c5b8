"""Elementwise chains: a node that is an elementwise function of one root node (activations,
scalar ops, sums and products of functions of the same node) becomes one function on a
grid, replayed from the fx node or rebuilt from the eager capture (docs/predictor.md,
"Propagation")."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from archlint import metainit
from archlint.graph import Node, OpKind
from archlint.predict.base import _DIV_OPS, _RSUB_OPS, _SUB_OPS, _RecursionBase, _fetch_attr
from archlint.predict.integrals import _CACHE_SIZE
from archlint.predict.state import _Chain, _identity_chain

# Functional activations of an eagerly captured graph that take no parameter the capture
# could have missed (leaky_relu's slope is recorded in attrs; gelu's ``approximate`` is not,
# and the exact and tanh forms differ by < 1e-3).
_EAGER_FUNCTIONS = {
    "relu", "relu6", "selu", "silu", "mish", "tanh", "sigmoid", "hardswish", "hardsigmoid",
    "softsign", "tanhshrink", "logsigmoid", "abs", "sin", "cos", "exp", "square", "gelu", "leaky_relu",
}
# Float64 copies of activation modules, shared between equal ones (_module64).
_MODULES64: dict[Any, nn.Module] = {}


class _ChainRules(_RecursionBase):
    """Whether a node is an elementwise function of one root node, and which (``_chain``)."""

    def _chain(self, node: Node) -> _Chain | None:
        """``node`` as an elementwise function of one root node, if it is one."""
        elementwise = (
            (node.kind is OpKind.ACTIVATION and node.attrs.get("elementwise"))
            or (node.kind is OpKind.MUL and not node.attrs.get("product"))
            or node.kind in (OpKind.ADD, OpKind.IDENTITY)
        )
        if not elementwise:
            return None
        inputs = [self.chains.get(i) or _identity_chain(i) for i in node.inputs]
        if len({c.root for c in inputs}) != 1:
            # Mixes different signals (a residual add, a gate): not one elementwise function.
            return None
        op = self._fx_op(node) if self.fx_nodes else self._eager_op(node)
        if op is None:
            return None
        fn_op, key = op

        def fn(t: torch.Tensor) -> torch.Tensor:
            return fn_op(*(c.fn(t) for c in inputs))

        # It must map a 1-D grid to the same grid: a per-channel constant (a bias vector, a
        # layer scale) broadcasts to another shape and is handled in closed form instead.
        probe = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)
        try:
            out = fn(probe)
        except Exception:
            return None
        if not isinstance(out, torch.Tensor) or out.shape != probe.shape or not out.is_floating_point():
            return None
        return _Chain(inputs[0].root, fn, (key, tuple(c.key for c in inputs)))

    def _fx_op(self, node: Node) -> tuple[Callable[..., torch.Tensor], Any] | None:
        """Replay the fx node itself, with its real constants (slopes, scalars...)."""
        fxn = self.fx_nodes.get(node.name)
        if fxn is None or fxn.op not in ("call_function", "call_method", "call_module"):
            return None
        constants: dict[str, Any] = {}
        for a in fxn.all_input_nodes:
            if a.name in node.inputs:
                continue
            if a.op != "get_attr":
                return None  # computed from something else (a size, a mask): not a constant
            value = _fetch_attr(self.gm, a.target)
            if isinstance(value, torch.Tensor) and value.is_meta:
                return None  # no values on the meta device: the closed forms read its init
            constants[a.name] = value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else value
        if fxn.op == "call_module":
            target: Any = self._module64(self.gm.get_submodule(fxn.target))
            target_key: Any = _module_key(target)
        else:
            target = target_key = fxn.target
        key = (
            fxn.op,
            target_key,
            repr(fx.node.map_arg((fxn.args, fxn.kwargs), lambda a: a.name if a.name in node.inputs else None)),
            tuple(tuple(v.flatten().tolist()) if isinstance(v, torch.Tensor) else v for v in constants.values()),
        )

        def op(*values: torch.Tensor) -> torch.Tensor:
            env = {**constants, **dict(zip(node.inputs, values))}
            args, kwargs = fx.node.map_arg((fxn.args, fxn.kwargs), lambda a: env[a.name])
            if fxn.op == "call_method":
                return getattr(args[0], fxn.target)(*args[1:], **kwargs)
            return target(*args, **kwargs)

        return op, key

    def _eager_op(self, node: Node) -> tuple[Callable[..., torch.Tensor], Any] | None:
        """Rebuild the op from what the eager capture recorded (no constants but a scalar)."""
        name = node.attrs.get("op", node.op)
        if node.kind is OpKind.ACTIVATION:
            if node.module is not None:
                module = self._module64(node.module)
                return module, _module_key(module)
            base = node.op.rstrip("_")
            if base not in _EAGER_FUNCTIONS:
                return None
            fn = getattr(F, base, None) or getattr(torch, base)
            if base == "leaky_relu":
                slope = node.attrs.get("negative_slope", 0.01)
                return (lambda x: F.leaky_relu(x, slope)), ("leaky_relu", slope)
            return fn, (base,)
        if node.kind is OpKind.MUL and len(node.inputs) == 1:
            scalar = node.attrs.get("scalar")
            return ((lambda x: x * scalar), ("scale", scalar)) if scalar is not None else None
        if node.kind is OpKind.MUL and len(node.inputs) == 2:
            return (torch.div, ("div",)) if name in _DIV_OPS else (torch.mul, ("mul",))
        if node.kind is OpKind.ADD and len(node.inputs) == 2:
            if name in _SUB_OPS:
                return torch.sub, ("sub",)
            if name in _RSUB_OPS:
                return (lambda a, b: b - a), ("rsub",)
            return torch.add, ("add",)
        return None  # e.g. x + constant: the eager capture does not record the constant

    def _module64(self, module: nn.Module) -> nn.Module:
        # Shared between equal modules (the 20 ReLUs of a deep net): a deep copy per module
        # would cost as much as the integrals.
        key = _module_key(module)
        if key not in _MODULES64:
            if len(_MODULES64) >= _CACHE_SIZE:
                _MODULES64.clear()
            _MODULES64[key] = _float64_module(module)
        return _MODULES64[key]


def _float64_module(module: nn.Module) -> nn.Module:
    # A copy: the user's module keeps its dtype and mode. Eval mode as when measuring (RReLU
    # uses its mean slope).
    copied = copy.deepcopy(module)
    if any(t.is_meta for t in module.state_dict().values()):
        copied = _constants_from_init(module, copied)
    return copied.to(torch.float64).eval()


def _constants_from_init(module: nn.Module, copied: nn.Module) -> nn.Module:
    """A meta-device module whose tensors were all initialised to constants (PReLU's 0.25)
    as a real one; otherwise ``copied`` unchanged (on meta, it fails on the grid)."""
    known = [metainit.stats(t) for t in module.state_dict(keep_vars=True).values()]
    if not all(s is not None and s[1] == 0 for s in known):
        return copied
    copied = copied.to_empty(device="cpu")
    with torch.no_grad():
        for t, s in zip(copied.state_dict(keep_vars=True).values(), known):
            t.fill_(s[0])
    return copied


def _module_key(module: nn.Module) -> Any:
    """What an (activation) module computes in eval mode: its class, settings and tensors."""
    tensors = list(module.state_dict().values())
    if any(t.is_meta for t in tensors):
        # No values to compare (a model on the meta device): never shared, and evaluating it
        # on the grid fails, so the node is not predicted.
        return (type(module).__module__, type(module).__qualname__, "meta", id(module))
    params = tuple(tuple(t.detach().flatten().tolist()) for t in tensors)
    return (type(module).__module__, type(module).__qualname__, module.extra_repr(), params)
