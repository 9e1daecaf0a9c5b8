"""Nonlinearity normalisation: set a model's NLC at initialisation to a target.

``archlint.normalize(model, inputs=None, *, target=2.0)`` returns a modified deep copy of the
model (the user's model is never touched) whose measured NLC is ``target``, and a report of
what changed. It changes each activation's *degree of nonlinearity*, in the form a user would
write in their own code:

- ReLU / LeakyReLU modules: the negative slope, ``nn.LeakyReLU(negative_slope=a)``. A slope
  of 1 is the identity (NLC 1); 0 is ReLU; negative slopes (down to -1, the absolute value)
  make a layer more nonlinear than ReLU, for networks below the target.
- Saturating activations (tanh, sigmoid, hardtanh, softsign, hardsigmoid; modules or
  functions) whose pre-activation comes straight from a Linear, Conv or affine BatchNorm
  used by nothing else: a pre-activation gain, written into that layer's initial weight
  and bias (``weight *= c; bias *= c``): tau(c h). A small gain makes tanh nearly linear,
  a large one saturates it.
- Any other elementwise activation module (GELU, SELU, SiLU, a custom module): an
  interpolation with the identity, ``Interpolated(act, alpha)`` = alpha act(x) + (1-alpha) x
  (for ReLU this *is* LeakyReLU with slope 1 - alpha). alpha in [0, 3]: above 1 it
  extrapolates away from the identity and raises the NLC.
- Everything else (a functional ReLU in ``forward``, max pooling, attention) is left as it
  is and reported as unchanged, with the reason.

Algorithm (digest §5 and §1.6). Each activation's layer NLC is exact and cheap from its
pre-activations H over the sample, since its Jacobian is diagonal:

    NLC_layer^2 = sum_i Var(h_i) E[tau'(h_i)^2] / sum_i Var(tau(h_i))

1. One shared per-layer target t = exp(u) for all activations. For a given u, one forward
   pass sets the activations in forward order (each sees pre-activations with every earlier
   change in place, BatchNorm on batch statistics): each one's knob is bisected so its
   layer NLC is t (or as close as its range allows).
2. The start u0 comes from the mean-field prediction (``archlint.predict``): log NLC of
   the network is about g * (sum of log layer NLCs), with g = 1 for a plain chain (NLCs
   multiply) and g < 1 where skip connections dilute the layers; g is read from the
   prediction of the unmodified model, so u0 = log(target) / (g L).
3. The candidate is measured (``archlint.measure``: the population NLC for train-mode
   BatchNorm models) and u corrected by the secant method on (u, log NLC), starting from the
   exact anchor u = 0 (every changed layer linear), with a bisection bracket as a safeguard,
   until the measured NLC is within ``tolerance`` of the target.

Assumptions: the sample stands for the data (default: 256 synthetic inputs of the family
``archlint.inputs`` infers); the per-layer NLCs compose roughly multiplicatively (the
correction absorbs the rest); each knob's layer NLC is monotone in it (true for the forms
above on the usual operating points). A target out of reach (every layer at its limit, or
nonlinear ops that are not activations already above the target) ends with the nearest
value and ``converged`` False.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archlint.graph import ArchGraph, OpKind, Span
from archlint.patterns import TARGET_NLC
from archlint.state import preserved_state

__all__ = ["Interpolated", "ActivationChange", "Normalized", "NormalizeError", "normalize", "layer_nlc"]

SATURATING = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "hardtanh": F.hardtanh, "softsign": F.softsign, "hardsigmoid": F.hardsigmoid}
# Functional activations a pre-activation gain can act on (the function is applied as is).
_FUNCTIONS = {
    **SATURATING, "gelu": F.gelu, "silu": F.silu, "elu": F.elu, "selu": F.selu, "celu": F.celu,
    "mish": F.mish, "softplus": F.softplus,
}
# Each knob's range, from its most linear value to its most nonlinear one.
SLOPE_RANGE = (1.0, -1.0)
GAIN_RANGE = (1 / 64, 64.0)
ALPHA_RANGE = (0.0, 3.0)
GRID = 25
BISECTION_STEPS = 30
DEFAULT_SAMPLES = 256


class NormalizeError(Exception):
    """The model cannot be normalised (nothing to change, or it cannot be measured)."""


class Interpolated(nn.Module):
    """``alpha * act(x) + (1 - alpha) * x``: an activation made more linear (alpha < 1) or
    more nonlinear (alpha > 1) by interpolating with the identity.

    Self-contained: copy it into your code to keep a normalised model. For ReLU it equals
    ``nn.LeakyReLU(negative_slope=1 - alpha)``."""

    def __init__(self, act: nn.Module, alpha: float):
        super().__init__()
        self.act = act
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.act(x) + (1.0 - self.alpha) * x

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4g}"


@dataclass
class ActivationChange:
    """What normalisation did to one activation."""

    name: str                 # the activation's module path, or its graph node (functional)
    activation: str           # "ReLU", "tanh", "Swish", ...
    form: str                 # "slope" | "gain" | "interpolate" | "unchanged"
    value: float | None       # the slope, gain or alpha chosen (None if unchanged)
    change: str               # the change in words, as code
    layer_nlc_before: float | None = None
    layer_nlc_after: float | None = None
    # Where to make the change in the source: the construction of the module to change.
    span: Span | None = None
    # Where a gain goes: the producing layer's module path.
    target_module: str | None = None
    reason: str | None = None


@dataclass
class Normalized:
    """The result of ``normalize``: the modified copy and what changed."""

    model: nn.Module
    target: float
    nlc_before: float
    nlc_after: float
    predicted_before: float | None
    changes: list[ActivationChange]
    # (per-layer target t, measured network NLC) of every candidate measured.
    steps: list[tuple[float, float]] = field(default_factory=list)
    converged: bool = True
    tolerance: float = 0.03

    def table(self) -> str:
        rows = [["activation", "change", "layer NLC before", "after"]]
        for c in self.changes:
            rows.append([c.name, c.change if c.form != "unchanged" else f"unchanged ({c.reason})",
                         _fmt(c.layer_nlc_before), _fmt(c.layer_nlc_after)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)

    def __str__(self) -> str:
        pred = f" (predicted {_fmt(self.predicted_before)})" if self.predicted_before is not None else ""
        head = f"NLC {_fmt(self.nlc_before)}{pred} -> {_fmt(self.nlc_after)} measured (target {_fmt(self.target)})"
        if not self.converged:
            head += f"; not within {self.tolerance:.0%} of the target: {self.reason_not_converged()}"
        return head + "\n" + self.table()

    def reason_not_converged(self) -> str:
        if all(c.form == "unchanged" for c in self.changes):
            return "no activation could be changed"
        return "every changeable activation is at the end of its range, or other nonlinear ops dominate"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


# --------------------------------------------------------------------------------------
# Layer NLC


def layer_nlc(fn: Callable[[torch.Tensor], torch.Tensor], H: torch.Tensor) -> float:
    """Exact NLC of the elementwise ``fn`` on the sample ``H`` (batch first, float64):
    sqrt(sum_i Var(h_i) E[fn'(h_i)^2] / sum_i Var(fn(h_i))) (digest §1.3)."""
    H = H.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        y = fn(H)
        (d,) = torch.autograd.grad(y.sum(), H)
    n = H.shape[0]
    num = (H.detach().reshape(n, -1).var(0, correction=0) * d.reshape(n, -1).square().mean(0)).sum()
    den = y.detach().reshape(n, -1).var(0, correction=0).sum()
    if not float(den) > 0:
        return float("nan")
    return math.sqrt(float(num) / float(den))


# --------------------------------------------------------------------------------------
# Activation sites


@dataclass
class _Site:
    name: str
    activation: str
    form: str                      # slope | gain | interpolate
    hook_path: str                 # the module whose call the calibration pass intercepts
    # tau (gain: the activation; interpolate: the module's forward, which bypasses the
    # calibration hooks on that module)
    fn: Callable | None = None
    base: float = 0.0              # slope: the original negative slope
    span: Span | None = None
    act_path: str | None = None    # slope/interpolate: the module replaced
    inplace: bool = False

    @property
    def neutral(self) -> float:
        return {"slope": self.base, "gain": 1.0, "interpolate": 1.0}[self.form]

    @property
    def bounds(self) -> tuple[float, float]:
        """(the knob's most linear value, its most nonlinear one)."""
        return {"slope": SLOPE_RANGE, "gain": GAIN_RANGE, "interpolate": ALPHA_RANGE}[self.form]

    def function(self, knob: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """The elementwise map from this site's intercepted tensor to the activation output."""
        if self.form == "slope":
            return lambda h: F.leaky_relu(h, knob)
        if self.form == "gain":
            fn = self.fn
            return lambda h: fn(knob * h)
        act = self.fn
        return lambda h: knob * act(h) + (1.0 - knob) * h

    def output(self, knob: float, h: torch.Tensor) -> torch.Tensor:
        """What the intercepted module returns with ``knob``: the activation, or for a gain
        the scaled pre-activation (the activation follows)."""
        if self.form == "slope":
            return F.leaky_relu(h, knob)
        if self.form == "gain":
            return knob * h
        return knob * self.fn(h) + (1.0 - knob) * h

    def describe(self, knob: float) -> str:
        if self.form == "slope":
            return f"{self.activation} -> nn.LeakyReLU(negative_slope={knob:.4g})"
        if self.form == "gain":
            return f"{self.hook_path}: weight and bias x {knob:.4g} (pre-activation gain of {self.activation})"
        return f"{self.activation} -> Interpolated({self.activation}, alpha={knob:.4g})"


def _is_torch_module(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.")


def _custom_elementwise(m: nn.Module) -> bool:
    """A user-defined module that acts elementwise and nonlinearly on one tensor: tried on a
    small random input (a changed element changes only its own output)."""
    if _is_torch_module(m) or isinstance(m, Interpolated):
        return False
    if any(p.dim() > 0 and p.numel() > 1 for p in m.parameters()):
        return False  # per-channel parameters: not a pure elementwise function
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    try:
        with torch.no_grad(), preserved_state(m):
            y = m(x)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                return False
            x2 = x.clone()
            x2[1, 2] += 0.5
            changed = m(x2) != y
    except Exception:
        return False
    if int(changed.sum()) != 1 or not bool(changed[1, 2]):
        return False
    try:
        return layer_nlc(lambda h: m(h.float()).double(), x.double()) > 1.001
    except Exception:
        return False


def _forward_lines(m: nn.Module) -> tuple[str, int, int] | None:
    try:
        lines, start = inspect.getsourcelines(type(m).forward)
        return inspect.getsourcefile(type(m).forward), start, start + len(lines) - 1
    except (OSError, TypeError):
        return None


def _scalable_producer(graph: ArchGraph, node) -> str | None:
    """The module path of the Linear/Conv/affine norm whose output is ``node``'s only input
    and feeds nothing else: scaling its weight and bias scales the pre-activation."""
    if len(node.inputs) != 1 or node.inputs[0] not in graph:
        return None
    prod = graph[node.inputs[0]]
    if prod.module_path is None or graph.users(prod.name) != [node.name]:
        return None
    if prod.kind in (OpKind.LINEAR, OpKind.CONV) and "weight" in prod.params:
        return prod.module_path
    if prod.kind == OpKind.NORM and prod.attrs.get("affine") and "weight" in prod.params:
        return prod.module_path
    return None


def _sites(model: nn.Module, graph: ArchGraph) -> tuple[list[_Site], list[ActivationChange]]:
    modules = dict(model.named_modules())
    sites: list[_Site] = []
    unchanged: list[ActivationChange] = []
    claimed: set[str] = set()
    custom_lines = []
    for path, m in modules.items():
        if path and not any(path.startswith(c + ".") for c in claimed) and _custom_elementwise(m):
            claimed.add(path)
            where = _forward_lines(m)
            if where:
                custom_lines.append(where)
            sites.append(_Site(path, type(m).__name__, "interpolate", path, fn=m.forward, act_path=path, span=_span_of(graph, path)))
    seen_modules: set[str] = set()
    gain_producers: set[str] = set()
    for node in graph.of_kind(OpKind.ACTIVATION):
        if not node.attrs.get("elementwise"):
            continue
        act = node.attrs.get("activation", node.op)
        path = node.module_path
        if path is not None and any(path == c or path.startswith(c + ".") for c in claimed):
            continue
        if path is None and node.span is not None and any(
            node.span.path == f and lo <= node.span.line <= hi for f, lo, hi in custom_lines
        ):
            continue  # inside a custom activation module: that module is the site
        if path is not None and path in seen_modules:
            continue  # a module called twice: one site, one knob
        producer = _scalable_producer(graph, node)
        module = modules.get(path) if path is not None else None
        if module is not None and type(module).__name__ in ("ReLU", "LeakyReLU"):
            seen_modules.add(path)
            sites.append(_Site(path, type(module).__name__, "slope", path, base=float(getattr(module, "negative_slope", 0.0)),
                               span=node.span, act_path=path, inplace=bool(getattr(module, "inplace", False))))
        elif act in SATURATING and producer is not None and producer not in gain_producers:
            gain_producers.add(producer)
            fn = module.forward if module is not None else _FUNCTIONS[act]
            if path is not None:
                seen_modules.add(path)
            sites.append(_Site(path or node.name, act if module is None else type(module).__name__, "gain", producer,
                               fn=fn, span=graph[node.inputs[0]].span))
        elif module is not None:
            seen_modules.add(path)
            sites.append(_Site(path, type(module).__name__, "interpolate", path, fn=module.forward, span=node.span, act_path=path))
        elif act in _FUNCTIONS and producer is not None and producer not in gain_producers:
            gain_producers.add(producer)
            sites.append(_Site(node.name, act, "gain", producer, fn=_FUNCTIONS[act], span=graph[node.inputs[0]].span))
        else:
            unchanged.append(ActivationChange(node.name, act, "unchanged", None, "", span=node.span,
                                              reason=f"functional {act} in forward() with no Linear/Conv/norm of its own before it; use a module"))
    return sites, unchanged


def _span_of(graph: ArchGraph, path: str) -> Span | None:
    for node in graph:
        if node.module_path == path or (node.module_path or "").startswith(path + "."):
            return node.span
    return None


# --------------------------------------------------------------------------------------
# The calibration pass


def _solve(f: Callable[[float], float], linear_end: float, far_end: float, target: float, log: bool) -> float:
    """The knob nearest the linear end with f(knob) = target: a grid scan from the linear end
    finds the first crossing, bisection refines it. A layer NLC need not be monotone in the
    knob (an interpolation past 1 passes through an even function, then flattens again), so
    where no grid point reaches the target the closest one is taken, not an end."""
    to = math.log if log else (lambda v: v)
    back = math.exp if log else (lambda v: v)
    a, b = to(linear_end), to(far_end)
    grid = [a + (b - a) * i / (GRID - 1) for i in range(GRID)]
    values = [f(back(g)) for g in grid]
    for i in range(1, GRID):
        lo, hi, f_lo, f_hi = grid[i - 1], grid[i], values[i - 1], values[i]
        if math.isfinite(f_lo) and math.isfinite(f_hi) and (f_lo - target) * (f_hi - target) <= 0:
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                f_mid = f(back(mid))
                if (f_mid - target) * (f_lo - target) <= 0:
                    hi = mid
                else:
                    lo, f_lo = mid, f_mid
            return back((lo + hi) / 2)
    finite = [(abs(v - target), g) for g, v in zip(grid, values) if math.isfinite(v)]
    return back(min(finite)[1]) if finite else back(a)


def _run_pass(model: nn.Module, args: tuple, sites: list[_Site], per_layer: float | None, knobs: dict[str, float] | None) -> tuple[dict[str, float], dict[str, float]]:
    """One forward pass over the sample with every site intercepted, in forward order.

    ``per_layer`` given: each site's knob is solved on its pre-activations (earlier sites
    already changed) so its layer NLC is ``per_layer``. Otherwise the knobs in ``knobs``
    (default: neutral) are applied. Returns the knobs and each site's layer NLC.
    BatchNorm uses the sample's statistics; dropout is off; the model is put back after."""
    chosen: dict[str, float] = {}
    nlcs: dict[str, float] = {}
    modules = dict(model.named_modules())
    handles = []
    pending: dict[str, torch.Tensor] = {}

    def pre(site: _Site):
        def hook(module, inputs):
            pending[site.hook_path] = inputs[0].detach().clone()
        return hook

    def post(site: _Site):
        def hook(module, inputs, output):
            h = pending.pop(site.hook_path, None) if site.form != "gain" else output.detach()
            if h is None:
                return None
            if site.name not in chosen:
                if per_layer is not None:
                    linear_end, far_end = site.bounds
                    knob = _solve(lambda k: layer_nlc(site.function(k), h), linear_end, far_end, per_layer, log=site.form == "gain")
                else:
                    knob = (knobs or {}).get(site.name, site.neutral)
                chosen[site.name] = knob
                nlcs[site.name] = layer_nlc(site.function(knob), h)
            return site.output(chosen[site.name], h.to(output.dtype) if site.form != "gain" else output)
        return hook

    with preserved_state(model), torch.no_grad():
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        for site in sites:
            module = modules[site.hook_path]
            if site.form != "gain":
                handles.append(module.register_forward_pre_hook(pre(site)))
            handles.append(module.register_forward_hook(post(site)))
        try:
            model(*args)
        finally:
            for h in handles:
                h.remove()
    return chosen, nlcs


def _apply(model: nn.Module, sites: list[_Site], knobs: dict[str, float]) -> None:
    """Write the knobs into ``model`` as standard modules and initial weights."""
    for site in sites:
        if site.name not in knobs:
            continue
        k = knobs[site.name]
        if site.form == "gain":
            module = model.get_submodule(site.hook_path)
            with torch.no_grad():
                module.weight.mul_(k)
                if getattr(module, "bias", None) is not None:
                    module.bias.mul_(k)
            continue
        old = model.get_submodule(site.act_path)
        # In-place leaky_relu has no derivative for negative slopes (torch refuses it).
        new = nn.LeakyReLU(negative_slope=k, inplace=site.inplace and k >= 0) if site.form == "slope" else Interpolated(old, k)
        new.train(old.training)
        _replace(model, old, new)


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    # Every path holding this module object (a module registered twice) gets the new one.
    for path, m in list(root.named_modules(remove_duplicate=False)):
        if m is old and path:
            parent_path, _, attr = path.rpartition(".")
            setattr(root.get_submodule(parent_path), attr, new)


# --------------------------------------------------------------------------------------
# Entry point


def _network_nlc(model: nn.Module, args: tuple, device: str, seed: int) -> float:
    from archlint.measure import measure

    report = measure(model, args, device=device, batch_size=args[0].shape[0], seed=seed)
    value = report.output_nlc_population if report.output_nlc_population is not None else report.output_nlc
    if value is None or not math.isfinite(value):
        raise NormalizeError(f"the model's NLC could not be measured (output {report.status})")
    return float(value)


def _inputs(model: nn.Module, inputs: Any, samples: int, seed: int) -> tuple:
    if inputs is None:
        from archlint.inputs import infer_inputs, make_batch

        return make_batch(infer_inputs(model), samples, torch.Generator().manual_seed(seed))
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not args or not all(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args):
        raise NormalizeError("inputs must be a tensor or a tuple of tensors with a batch dimension")
    return args


def _mean_field_share(graph: ArchGraph, sites: list[_Site], before: dict[str, float]) -> tuple[float | None, float]:
    """(predicted network NLC, g): the share of the summed log layer NLCs that reaches the
    output in the mean-field prediction of the unmodified model (1: a plain chain)."""
    from archlint import predict as predictor

    try:
        pred = predictor.predict(graph)
    except Exception:
        pred = None
    out = pred.output_nlc if pred is not None else None
    total = 0.0
    for site in sites:
        layer = None
        node = _site_node(graph, site)
        if pred is not None and node is not None:
            p_out, p_in = pred.nodes[node.name].nlc, pred.nodes.get(node.inputs[0]) if node.inputs else None
            if p_out and p_in is not None and p_in.nlc:
                layer = p_out / p_in.nlc
        if layer is None:
            layer = before.get(site.name)
        if layer and layer > 1:
            total += math.log(layer)
    if out is None or out <= 1 or total <= 0:
        return out, 1.0
    return out, min(max(math.log(out) / total, 0.05), 1.0)


def _site_node(graph: ArchGraph, site: _Site):
    for node in graph.of_kind(OpKind.ACTIVATION):
        if site.form == "gain" and node.inputs and node.inputs[0] in graph and graph[node.inputs[0]].module_path == site.hook_path:
            return node
        if site.form != "gain" and node.module_path == site.act_path:
            return node
    return None


def normalize(
    model: nn.Module,
    inputs: Any = None,
    *,
    target: float = TARGET_NLC,
    tolerance: float = 0.03,
    max_steps: int = 8,
    samples: int = DEFAULT_SAMPLES,
    device: str = "auto",
    seed: int = 0,
    graph: ArchGraph | None = None,
) -> Normalized:
    """A copy of ``model`` whose measured NLC at initialisation is ``target`` (module
    docstring). ``inputs``: a tensor or tuple of forward arguments, batch first (default:
    ``samples`` synthetic rows). The result's ``model`` is the copy; ``changes`` says, per
    activation, what changed and its layer NLC before and after. ``graph``: the model's
    trace, if there is one already (its source spans locate the changes)."""
    if not target >= 1.0:
        raise ValueError(f"target must be at least 1 (the NLC of a linear model), got {target}")
    from archlint.trace import trace

    args = _inputs(model, inputs, samples, seed)
    # The calibration passes run the model where it lives.
    home = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    args = tuple(a.to(home) for a in args)
    if args[0].shape[0] < 8:
        raise NormalizeError(f"normalising needs a sample of at least 8 rows, got {args[0].shape[0]}")
    work = copy.deepcopy(model)
    if graph is None:
        graph = trace(work, tuple(a[:2] for a in args), name=type(model).__name__)
    sites, unchanged = _sites(work, graph)
    if not sites:
        raise NormalizeError(f"{type(model).__name__} has no activation normalisation can change"
                             + (f" ({unchanged[0].reason})" if unchanged else ""))
    _, before = _run_pass(work, args, sites, None, None)
    nlc_before = _network_nlc(work, args, device, seed)
    predicted, share = _mean_field_share(graph, sites, before)
    active = [s for s in sites if s.name in before]
    log_target = math.log(target)

    def evaluate(u: float) -> tuple[float, dict[str, float], nn.Module]:
        knobs, _ = _run_pass(work, args, sites, math.exp(u), None)
        candidate = copy.deepcopy(model)
        _apply(candidate, sites, knobs)
        return _network_nlc(candidate, args, device, seed), knobs, candidate

    # u = 0 makes every changed layer linear: the exact anchor of the first secant step.
    points: list[tuple[float, float]] = [(0.0, 0.0)]
    u = log_target / (share * max(len(active), 1))
    best = None
    steps = []
    lo_u, hi_u = 0.0, None
    for _ in range(max_steps):
        nlc, knobs, candidate = evaluate(u)
        steps.append((math.exp(u), nlc))
        y = math.log(nlc)
        if best is None or abs(y - log_target) < abs(math.log(best[0]) - log_target):
            best = (nlc, knobs, candidate)
        if abs(nlc / target - 1) <= tolerance:
            break
        if y < log_target:
            lo_u = max(lo_u, u)
        else:
            hi_u = u if hi_u is None else min(hi_u, u)
        (u0, y0) = points[-1]
        points.append((u, y))
        slope = (y - y0) / (u - u0) if u != u0 else 0.0
        nxt = u + (log_target - y) / slope if slope > 0 else None
        if nxt is None or nxt <= lo_u or (hi_u is not None and nxt >= hi_u):
            nxt = (lo_u + hi_u) / 2 if hi_u is not None else max(2 * u, u + 0.05)
        if abs(nxt - u) < 1e-9:
            break
        u = nxt
    nlc_after, knobs, candidate = best
    # The candidate carries the changes: its gains are in the weights (knob 1 now), its new
    # modules compute what the knobs say.
    _, after = _run_pass(candidate, args, sites, None, {s.name: 1.0 if s.form == "gain" else knobs.get(s.name, s.neutral) for s in sites})
    changes = []
    for site in sites:
        k = knobs.get(site.name)
        changes.append(ActivationChange(
            site.name, site.activation, site.form if k is not None else "unchanged", k,
            site.describe(k) if k is not None else "",
            before.get(site.name), after.get(site.name), span=site.span,
            target_module=site.hook_path if site.form == "gain" else None,
            reason=None if k is not None else "not called on the sample",
        ))
    changes += unchanged
    return Normalized(candidate, target, nlc_before, nlc_after, predicted, changes, steps,
                      converged=abs(nlc_after / target - 1) <= tolerance, tolerance=tolerance)
