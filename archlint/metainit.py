"""Initial parameter statistics of a model built on the ``meta`` device.

A model too large for memory is built under ``torch.device("meta")``: its tensors have shapes
and dtypes but no values, and ``torch.nn.init`` skips meta tensors. The mean-field predictor
still needs each parameter's mean and standard deviation at initialisation, so
``record_init`` watches the build and derives them from *what the code asked for*:

- ``torch.nn.init`` functions (default ``reset_parameters`` of torch's layers, a user's
  ``_init_weights``): their distribution in closed form, with torch's own fan and gain
  helpers (``kaiming_uniform_(a=sqrt(5))`` of a Linear gives variance 1/(3 fan_in));
- in-place tensor methods (``normal_``, ``uniform_``, ``zero_``, ``fill_``, ``copy_``,
  scaling by a number), factories (``randn``, ``zeros``, ``ones``, ``full``, ``tensor``)
  and scalar arithmetic on them (``nn.Parameter(0.02 * torch.randn(d))``).

Anything else that writes a tensor (an op on a slice, ``clamp_``, an init archlint does not
know) makes it *unknown*: ``stats`` returns None and the predictor marks the nodes that need
it as not predicted rather than guessing. Statistics are keyed by storage, so an
``nn.Parameter`` wrapping a tracked tensor, or ``p.data = t``, keeps them.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

Stats = tuple[float, float]  # (mean, std) of the tensor's values at initialisation

# Statistics of the meta tensors of built models, by tensor object (see ``attach``).
_STATS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def stats(t: torch.Tensor) -> Stats | None:
    """The recorded (mean, std) of a meta tensor of a model built by ``load.build_all``."""
    return _STATS.get(t)


def attach(model: nn.Module, recorder: "InitRecorder") -> None:
    """Remember the statistics of ``model``'s parameters and buffers for ``stats``."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_meta:
            s = recorder.lookup(t)
            if s is not None:
                _STATS[t] = s


# --------------------------------------------------------------------------------------
# Closed forms of torch.nn.init


def _fans(t: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(t)


def _kaiming_std(t: torch.Tensor, a: float, mode: str, nonlinearity: str) -> float:
    fan = nn.init._calculate_correct_fan(t, mode)
    return nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)


def _truncated_normal(mean: float, std: float, a: float, b: float) -> Stats:
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    shift = (pdf(alpha) - pdf(beta)) / z
    var = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - shift**2
    return mean + std * shift, std * math.sqrt(max(var, 0.0))


def _eye(t: torch.Tensor) -> Stats:
    rows, cols = t.shape
    m = min(rows, cols) / (rows * cols)
    return m, math.sqrt(m - m * m)


def _orthogonal(t: torch.Tensor, gain: float) -> Stats:
    rows = t.shape[0]
    cols = t.numel() // rows
    return 0.0, gain * math.sqrt(min(rows, cols) / (rows * cols))


_UNIFORM_STD = 1 / math.sqrt(12)

# name -> (bound arguments -> (mean, std)); the tensor is args["tensor"].
_INIT_FORMULAS: dict[str, Callable[[dict[str, Any]], Stats | None]] = {
    "uniform_": lambda a: ((a["a"] + a["b"]) / 2, (a["b"] - a["a"]) * _UNIFORM_STD),
    "normal_": lambda a: (a["mean"], a["std"]),
    "trunc_normal_": lambda a: _truncated_normal(a["mean"], a["std"], a["a"], a["b"]),
    "constant_": lambda a: (float(a["val"]), 0.0),
    "ones_": lambda a: (1.0, 0.0),
    "zeros_": lambda a: (0.0, 0.0),
    "eye_": lambda a: _eye(a["tensor"]),
    "xavier_uniform_": lambda a: (0.0, a["gain"] * math.sqrt(2.0 / sum(_fans(a["tensor"])))),
    "xavier_normal_": lambda a: (0.0, a["gain"] * math.sqrt(2.0 / sum(_fans(a["tensor"])))),
    "kaiming_uniform_": lambda a: (0.0, _kaiming_std(a["tensor"], a["a"], a["mode"], a["nonlinearity"])),
    "kaiming_normal_": lambda a: (0.0, _kaiming_std(a["tensor"], a["a"], a["mode"], a["nonlinearity"])),
    "orthogonal_": lambda a: _orthogonal(a["tensor"], a["gain"]),
}

# Tensor methods and functions that create a tensor with known statistics.
_FACTORIES: dict[str, Callable[[tuple, dict], Stats | None]] = {
    "randn": lambda args, kw: (0.0, 1.0),
    "randn_like": lambda args, kw: (0.0, 1.0),
    "rand": lambda args, kw: (0.5, _UNIFORM_STD),
    "rand_like": lambda args, kw: (0.5, _UNIFORM_STD),
    "zeros": lambda args, kw: (0.0, 0.0),
    "zeros_like": lambda args, kw: (0.0, 0.0),
    "new_zeros": lambda args, kw: (0.0, 0.0),
    "ones": lambda args, kw: (1.0, 0.0),
    "ones_like": lambda args, kw: (1.0, 0.0),
    "new_ones": lambda args, kw: (1.0, 0.0),
    "full": lambda args, kw: (float(kw.get("fill_value", args[1] if len(args) > 1 else math.nan)), 0.0),
    "full_like": lambda args, kw: (float(kw.get("fill_value", args[1] if len(args) > 1 else math.nan)), 0.0),
}
# Ops that copy values unchanged into a new tensor.
_SAME_VALUES = {"clone", "detach", "to", "contiguous", "float", "double", "half", "bfloat16", "type_as", "cpu", "cuda"}
# In-place methods that do not change values.
_VALUE_PRESERVING = {"requires_grad_", "share_memory_", "retain_grad", "detach_"}
# In-place ops that only write values, which a meta tensor does not have: not run on one (nor
# are torch.nn.init's functions, see record_init). On the meta device some (normal_, erfinv_,
# clamp_, exponential_) dispatch to torch's Python references, whose first use imports torch's
# compiler stack: ~2 s for one nn.init.normal_.
_VALUES_ONLY = {"normal_", "uniform_", "exponential_", "log_normal_", "cauchy_", "geometric_", "random_",
                "bernoulli_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "clip_", "fill_", "zero_"}
_SCALE = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
_DIVIDE = {"div", "div_", "__truediv__", "__itruediv__"}
_SHIFT = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_SUBTRACT = {"sub", "sub_", "__sub__", "__isub__"}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _arith(name: str, s: Stats, other: float) -> Stats | None:
    mean, std = s
    if name in _SCALE:
        return mean * other, std * abs(other)
    if name in _DIVIDE:
        return (mean / other, std / abs(other)) if other else None
    if name in _SHIFT:
        return mean + other, std
    if name in _SUBTRACT:
        return mean - other, std
    return None


# --------------------------------------------------------------------------------------
# Recording


class InitRecorder(TorchFunctionMode):
    """Watches a build on the meta device; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        # storage key -> (storage, stats or None for unknown). The storage is kept alive so
        # that its key is never reused while recording; meta storages hold no memory.
        self._by_storage: dict[int, tuple[Any, Stats | None]] = {}

    def lookup(self, t: torch.Tensor) -> Stats | None:
        entry = self._by_storage.get(_storage_key(t))
        return entry[1] if entry is not None else None

    def set(self, t: torch.Tensor, s: Stats | None) -> None:
        if not isinstance(t, torch.Tensor) or not t.is_meta:
            return
        if s is not None and not _covers_storage(t):
            s = None  # a write to part of the tensor: the whole is no longer one distribution
        if s is not None and not all(math.isfinite(v) for v in s):
            s = None
        self._by_storage[_storage_key(t)] = (t.untyped_storage(), s)

    def init_function(self, name: str, bound: dict[str, Any]) -> None:
        """A ``torch.nn.init`` function ran on ``bound["tensor"]``."""
        t = bound.get("tensor")
        try:
            s = _INIT_FORMULAS[name](bound) if name in _INIT_FORMULAS else None
        except (ValueError, ZeroDivisionError, KeyError, TypeError):
            s = None
        self.set(t, s)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args else None
        if getattr(func, "__name__", "") in _VALUES_ONLY and isinstance(first, torch.Tensor) and first.is_meta:
            out = first  # what the op returns: the tensor itself, its metadata unchanged
        else:
            out = func(*args, **kwargs)
        try:
            self._observe(func, args, kwargs, out)
        except Exception:  # recording is best effort; an odd call makes nothing known
            pass
        return out

    def _observe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", "")
        if getattr(func, "__module__", None) == "torch.nn.init":
            return  # recorded by the wrapper in ``record_init`` with the bound arguments
        first = args[0] if args else None
        if name == "__set__" and len(args) == 2 and isinstance(args[1], torch.Tensor):
            return  # `p.data = t`: p now has t's storage, and with it t's statistics
        if name in _FACTORIES and isinstance(out, torch.Tensor):
            self.set(out, _FACTORIES[name](args, kwargs))
        elif name == "tensor" and isinstance(out, torch.Tensor) and args:
            values = torch.tensor(args[0], dtype=torch.float64)
            self.set(out, (float(values.mean()), float(values.std(unbiased=False))) if values.numel() else None)
        elif name == "normal" and isinstance(out, torch.Tensor) and _number(kwargs.get("mean", first)) is not None:
            mean = _number(kwargs.get("mean", first))
            std = _number(kwargs.get("std", args[1] if len(args) > 1 else 1.0))
            self.set(out, (mean, std) if std is not None else None)
        elif isinstance(first, torch.Tensor) and first.is_meta:
            self._tensor_op(name, first, args, kwargs, out)
        out_kw = kwargs.get("out")
        if isinstance(out_kw, torch.Tensor):
            self.set(out_kw, None)

    def _tensor_op(self, name: str, t: torch.Tensor, args: tuple, kwargs: dict, out: Any) -> None:
        if name == "uniform_":
            a, b = kwargs.get("from", args[1] if len(args) > 1 else 0.0), kwargs.get("to", args[2] if len(args) > 2 else 1.0)
            self.set(t, ((a + b) / 2, (b - a) * _UNIFORM_STD))
        elif name == "normal_":
            mean, std = kwargs.get("mean", args[1] if len(args) > 1 else 0.0), kwargs.get("std", args[2] if len(args) > 2 else 1.0)
            self.set(t, (float(mean), float(std)))
        elif name == "zero_":
            self.set(t, (0.0, 0.0))
        elif name == "fill_":
            value = _number(args[1] if len(args) > 1 else kwargs.get("value"))
            self.set(t, (value, 0.0) if value is not None else None)
        elif name == "copy_":
            src = args[1] if len(args) > 1 else kwargs.get("src")
            self.set(t, self._stats_of(src))
        elif name in _SAME_VALUES and isinstance(out, torch.Tensor) and out is not t:
            self.set(out, self.lookup(t))
        elif name in _SCALE | _DIVIDE | _SHIFT | _SUBTRACT:
            other = _number(args[1] if len(args) > 1 else kwargs.get("other"))
            known = self.lookup(t)
            s = _arith(name, known, other) if known is not None and other is not None else None
            target = t if name.endswith("_") and not name.startswith("__") or name.startswith("__i") else out
            self.set(target, s)
        elif name.endswith("_") and not name.startswith("__") and name not in _VALUE_PRESERVING:
            self.set(t, None)  # an in-place op archlint does not model

    def _stats_of(self, src: Any) -> Stats | None:
        if not isinstance(src, torch.Tensor):
            return None
        if src.is_meta:
            return self.lookup(src)
        if src.is_floating_point() and src.numel():
            std, mean = torch.std_mean(src.detach().double(), unbiased=False)
            return float(mean), float(std)
        return None


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _covers_storage(t: torch.Tensor) -> bool:
    return t.storage_offset() == 0 and t.numel() * t.element_size() == t.untyped_storage().nbytes()


@contextlib.contextmanager
def record_init() -> Iterator[InitRecorder]:
    """Build a model inside this block (under ``torch.device("meta")``) to record the
    statistics its initialisation asks for.

    ``torch.nn.init``'s functions are wrapped for the duration (only a few of them dispatch
    through ``__torch_function__``, and some return early on meta tensors), and put back on
    exit. Code that imported one of them by name before the build calls the original:
    those tensors stay unknown.
    """
    recorder = InitRecorder()
    originals = {name: getattr(nn.init, name) for name in _INIT_FORMULAS if hasattr(nn.init, name)}
    originals["sparse_"] = nn.init.sparse_
    originals["dirac_"] = nn.init.dirac_
    depth = [0]

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tensor = args[0] if args else kwargs.get("tensor")
            depth[0] += 1
            try:
                # An init only writes values, and a meta tensor has none (see _VALUES_ONLY).
                meta = isinstance(tensor, torch.Tensor) and tensor.is_meta
                result = tensor if meta else original(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:  # the outermost init call decides (xavier_ calls uniform_ ...)
                try:
                    bound = signature.bind(*args, **kwargs)
                    bound.apply_defaults()
                    recorder.init_function(name, dict(bound.arguments))
                except TypeError:
                    pass
            return result

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        return wrapper

    for name, original in originals.items():
        setattr(nn.init, name, wrap(name, original))
    try:
        with recorder:
            yield recorder
    finally:
        for name, original in originals.items():
            setattr(nn.init, name, original)
