"""Example inputs for a model: inferred from its first layer, or given by the user.

Only shapes matter for tracing, but the measured statistics depend on what the input looks
like: white noise has power at every spatial frequency, so it overstates how nonlinear a CNN
is on real images. Images are therefore 1/f noise, whose spectrum falls off like that of
natural images.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import torch
from torch import fx, nn

FAMILIES = ("vector", "image", "tokens", "sequence")

# Per-sample sizes of the inferred inputs: small enough for a fast CPU pass, large enough
# for convolutions and pooling to keep a non-trivial spatial extent.
SEQ_LEN_CONV1D = 256
IMAGE_SIZE_2D = 32
IMAGE_SIZE_3D = 16
TOKENS_LEN = 64
RNN_STEPS = 32


class InputInferenceError(Exception):
    """archlint cannot tell what the model's forward expects."""


class InputsError(Exception):
    """The user's ``--inputs`` expression or ``--input-shape`` is unusable."""


@dataclass(frozen=True)
class ArgSpec:
    """One forward argument, per sample (the batch dimension is not in ``shape``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    family: str = "vector"  # "vector" | "image" | "tokens" | "sequence"
    # Vocabulary size: token ids are drawn from [0, high).
    high: int | None = None
    # False for time-major recurrent layers: the batch goes to dim 1, after time.
    batch_first: bool = True

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"input family {self.family!r} not in {FAMILIES}")
        if self.family == "tokens" and not self.high:
            raise ValueError("a tokens input needs its vocabulary size (high)")

    def full_shape(self, batch_size: int) -> tuple[int, ...]:
        at = 0 if self.batch_first else 1
        return self.shape[:at] + (batch_size,) + self.shape[at:]

    def describe(self) -> str:
        at = 0 if self.batch_first else 1
        dims = [str(d) for d in self.shape]
        dims.insert(at, "B")
        dtype = str(self.dtype).replace("torch.", "")
        notes = [self.family]
        if self.high is not None:
            notes.append(f"ids < {self.high}")
        if not self.batch_first:
            notes.append("time-major")
        return f"{dtype}[{','.join(dims)}] ({', '.join(notes)})"


@dataclass(frozen=True)
class InputSpec:
    args: tuple[ArgSpec, ...]

    def describe(self) -> str:
        return ", ".join(a.describe() for a in self.args)


# --------------------------------------------------------------------------------------
# Inference


def infer_inputs(model: nn.Module, graph_module: fx.GraphModule | None = None) -> InputSpec:
    """The input the model's first layer expects, as a one-argument spec. ``graph_module``:
    the model's fx trace when the caller already has one, so that it is not traced again."""
    required = _required_forward_args(model)
    if len(required) > 1:
        raise InputInferenceError(
            f"{type(model).__name__}.forward takes {len(required)} required arguments "
            f"({', '.join(required)}); give them with --inputs \"(torch.randn(...), ...)\""
        )
    candidates = []
    first = _first_consumer(model, graph_module)
    if first is not None:
        candidates.append(first)
    candidates += [m for _, m in model.named_modules() if not any(True for _ in m.children())]
    for module in candidates:
        spec = _spec_for(module)
        if spec is not None:
            if spec.family == "tokens":
                spec = _fit_token_length(model, module, spec)
            return InputSpec((spec,))
    raise InputInferenceError(
        f"cannot infer the input of {type(model).__name__} from its first layer; "
        f"give it with --input-shape (e.g. 3,32,32) or --inputs \"torch.randn(8, 3, 32, 32)\""
    )


def _fit_token_length(model: nn.Module, token_table: nn.Module, spec: ArgSpec) -> ArgSpec:
    """No longer than the model's other embedding tables: a learned position table of 32
    rows (a GPT with block_size 32) fails on 64 tokens."""
    tables = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding) and m is not token_table]
    length = min([spec.shape[0]] + tables)
    return replace(spec, shape=(length,) + spec.shape[1:])


def _required_forward_args(model: nn.Module) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _first_consumer(model: nn.Module, graph_module: fx.GraphModule | None = None) -> nn.Module | None:
    """The first submodule fx sees called directly on a forward argument."""
    if graph_module is None:
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception:  # untraceable forward (data-dependent control flow...): fall back
            return None
    graph = graph_module.graph
    for node in graph.nodes:
        if node.op == "call_module" and any(a.op == "placeholder" for a in node.all_input_nodes):
            return model.get_submodule(node.target)
    return None


def _float_dtype(module: nn.Module) -> torch.dtype:
    # Match the layer's own precision, so a model.double() gets float64 inputs.
    for p in module.parameters(recurse=False):
        if p.is_floating_point():
            return p.dtype
    return torch.float32


_CONV = {
    1: (nn.Conv1d, nn.ConvTranspose1d),
    2: (nn.Conv2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.ConvTranspose3d),
}
_NORM = {
    1: (nn.BatchNorm1d,),
    2: (nn.BatchNorm2d, nn.InstanceNorm2d),
    3: (nn.BatchNorm3d, nn.InstanceNorm3d),
}


def _spatial(channels: int, dims: int, dtype: torch.dtype) -> ArgSpec:
    if dims == 1:
        return ArgSpec((channels, SEQ_LEN_CONV1D), dtype, "sequence")
    size = IMAGE_SIZE_2D if dims == 2 else IMAGE_SIZE_3D
    return ArgSpec((channels,) + (size,) * dims, dtype, "image")


def _spec_for(m: nn.Module) -> ArgSpec | None:
    """The per-sample input ``m`` accepts when it is the model's first layer, if known."""
    if isinstance(m, nn.modules.lazy.LazyModuleMixin):
        return None  # sizes not known until the first forward
    dtype = _float_dtype(m)
    for dims, types in _CONV.items():
        if isinstance(m, types):
            return _spatial(m.in_channels, dims, dtype)
    if isinstance(m, nn.Linear):
        return ArgSpec((m.in_features,), dtype, "vector")
    if isinstance(m, nn.Embedding):
        return ArgSpec((TOKENS_LEN,), torch.int64, "tokens", high=m.num_embeddings)
    if isinstance(m, nn.RNNBase):
        return ArgSpec((RNN_STEPS, m.input_size), dtype, "sequence", batch_first=m.batch_first)
    if isinstance(m, _NORM[1]):
        return ArgSpec((m.num_features,), dtype, "vector")
    for dims in (2, 3):
        if isinstance(m, _NORM[dims]):
            return _spatial(m.num_features, dims, dtype)
    if isinstance(m, nn.LayerNorm):
        return ArgSpec(tuple(m.normalized_shape), dtype, "vector")
    return None


def parse_input_shape(text: str) -> InputSpec:
    """``--input-shape 3,32,32``: a per-sample float input whose rank names its family."""
    try:
        shape = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise InputsError(f"--input-shape {text!r}: expected comma-separated integers, e.g. 3,32,32") from None
    if any(d <= 0 for d in shape):
        raise InputsError(f"--input-shape {text!r}: sizes must be positive")
    family = {1: "vector", 2: "sequence", 3: "image", 4: "image"}.get(len(shape))
    if family is None:
        raise InputsError(f"--input-shape {text!r}: give 1 to 4 per-sample sizes (no batch)")
    return InputSpec((ArgSpec(shape, torch.float32, family),))


# --------------------------------------------------------------------------------------
# Batches


def make_batch(spec: InputSpec, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One batch for ``spec``, the same for the same generator state."""
    return tuple(_make_arg(a, batch_size, generator) for a in spec.args)


def _make_arg(arg: ArgSpec, batch_size: int, g: torch.Generator) -> torch.Tensor:
    shape = arg.full_shape(batch_size)
    if arg.family == "tokens":
        return torch.randint(0, arg.high, shape, generator=g, dtype=arg.dtype)
    if arg.family == "image":
        return pink_noise(batch_size, arg.shape[0], arg.shape[1:], g).to(arg.dtype)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(arg.dtype)


def pink_noise(batch_size: int, channels: int, spatial: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Natural-image-like noise: amplitude spectrum 1/f over the spatial dims (power 1/f^2),
    then each channel standardised to mean 0, std 1 over the batch."""
    white = torch.randn((batch_size, channels) + tuple(spatial), generator=g, dtype=torch.float64)
    dims = tuple(range(2, white.dim()))
    freqs = torch.meshgrid(*(torch.fft.fftfreq(n, dtype=torch.float64) for n in spatial), indexing="ij")
    f = torch.sqrt(sum(fr**2 for fr in freqs))
    amplitude = torch.where(f > 0, 1.0 / f.clamp_min(1e-12), torch.zeros_like(f))  # no DC: mean comes out 0
    x = torch.fft.ifftn(torch.fft.fftn(white, dim=dims) * amplitude, dim=dims).real
    over = (0,) + dims
    x = x - x.mean(dim=over, keepdim=True)
    return x / x.std(dim=over, keepdim=True).clamp_min(1e-12)


def eval_inputs(expr: str, module: ModuleType, model: nn.Module, seed: int = 0) -> tuple[Any, ...]:
    """The forward arguments from the user's ``--inputs`` expression, evaluated in the model
    file's namespace with ``torch`` and the built ``model`` in scope, with torch's RNG seeded
    by ``seed`` (``torch.randn(64, 41)`` gives the same batch on every run) and put back after."""
    namespace = dict(vars(module))
    namespace["torch"] = torch
    namespace["model"] = model
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value = eval(expr, namespace)
    except Exception as exc:
        raise InputsError(f"--inputs {expr!r} failed: {type(exc).__name__}: {exc}") from exc
    return value if isinstance(value, tuple) else (value,)
