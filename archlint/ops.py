"""Classify modules and functional ops into ArchGraph node kinds.

One table per source of ops (module classes, function / method names), so that adding an op
is one line. Anything not listed is ``OpKind.UNKNOWN``: the mean-field predictor refuses to
guess there and rules fall back to measurement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archlint import metainit
from archlint.graph import OpKind, ParamInfo

# Elementwise activations: module class name -> canonical activation name.
_ACTIVATION_MODULES = {
    "ReLU": "relu",
    "ReLU6": "relu6",
    "LeakyReLU": "leaky_relu",
    "PReLU": "prelu",
    "RReLU": "rrelu",
    "ELU": "elu",
    "SELU": "selu",
    "CELU": "celu",
    "GELU": "gelu",
    "SiLU": "silu",
    "Mish": "mish",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Hardtanh": "hardtanh",
    "Hardswish": "hardswish",
    "Hardsigmoid": "hardsigmoid",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Tanhshrink": "tanhshrink",
    "LogSigmoid": "logsigmoid",
    "Softshrink": "softshrink",
    "Hardshrink": "hardshrink",
    "Threshold": "threshold",
}
# Activations that mix a whole dimension: nonlinear, but not elementwise.
_SOFTMAX_MODULES = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Softmin": "softmin", "Softmax2d": "softmax"}

_ACTIVATION_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "rrelu", "elu", "elu_", "selu",
    "selu_", "celu", "gelu", "silu", "mish", "tanh", "tanh_", "sigmoid", "sigmoid_", "hardtanh",
    "hardtanh_", "hardswish", "hardsigmoid", "softplus", "softsign", "tanhshrink", "logsigmoid",
    "softshrink", "hardshrink", "threshold", "abs", "abs_", "sin", "cos", "exp", "square",
}
_SOFTMAX_FUNCS = {"softmax", "log_softmax", "softmin"}
_ADD_FUNCS = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__"}
_MUL_FUNCS = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__"}
_MATMUL_FUNCS = {"matmul", "__matmul__", "bmm", "einsum", "baddbmm"}
_RESHAPE_FUNCS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "cat", "concat", "stack", "chunk", "split", "expand", "expand_as", "__getitem__", "getitem",
    "narrow", "repeat", "t", "unflatten", "view_as", "roll", "pad", "interpolate", "upsample",
    "pixel_shuffle", "clone", "to", "float", "type_as", "masked_fill", "tril", "triu",
}
_POOL_FUNCS = {
    "avg_pool1d": "avg", "avg_pool2d": "avg", "avg_pool3d": "avg", "adaptive_avg_pool1d": "avg",
    "adaptive_avg_pool2d": "avg", "adaptive_avg_pool3d": "avg", "mean": "avg", "sum": "avg",
    "max_pool1d": "max", "max_pool2d": "max", "max_pool3d": "max", "adaptive_max_pool1d": "max",
    "adaptive_max_pool2d": "max", "adaptive_max_pool3d": "max", "amax": "max", "max": "max",
}
_NORM_FUNCS = {"layer_norm": "layer", "batch_norm": "batch", "group_norm": "group", "instance_norm": "instance", "rms_norm": "rms", "normalize": "l2"}
_LINEAR_FUNCS = {"linear": OpKind.LINEAR, "conv1d": OpKind.CONV, "conv2d": OpKind.CONV, "conv3d": OpKind.CONV}
_IDENTITY_FUNCS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "detach", "identity"}


def classify_module(module: nn.Module) -> tuple[OpKind, dict[str, Any]]:
    """Kind and attributes of a leaf module."""
    cls = type(module).__name__
    if isinstance(module, (nn.Linear, nn.Bilinear)) or cls in ("LazyLinear", "NonDynamicallyQuantizableLinear"):
        return OpKind.LINEAR, {}
    if isinstance(module, nn.modules.conv._ConvNd):
        return OpKind.CONV, {
            "stride": list(module.stride),
            "kernel_size": list(module.kernel_size),
            "groups": module.groups,
            "transposed": module.transposed,
        }
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return OpKind.NORM, _norm_attrs(module, "batch")
    if isinstance(module, nn.LayerNorm):
        return OpKind.NORM, _norm_attrs(module, "layer")
    if isinstance(module, nn.GroupNorm):
        return OpKind.NORM, _norm_attrs(module, "group")
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return OpKind.NORM, _norm_attrs(module, "instance")
    if cls == "RMSNorm":
        return OpKind.NORM, _norm_attrs(module, "rms")
    if cls == "LocalResponseNorm":
        return OpKind.NORM, {"norm_type": "lrn"}
    if cls in _ACTIVATION_MODULES:
        attrs: dict[str, Any] = {"activation": _ACTIVATION_MODULES[cls], "elementwise": True}
        if hasattr(module, "negative_slope"):
            attrs["negative_slope"] = float(module.negative_slope)
        if isinstance(module, nn.GELU):
            attrs["approximate"] = module.approximate
        if isinstance(module, nn.Hardtanh):
            attrs["min_val"], attrs["max_val"] = float(module.min_val), float(module.max_val)
        return OpKind.ACTIVATION, attrs
    if cls in _SOFTMAX_MODULES:
        return OpKind.ACTIVATION, {"activation": _SOFTMAX_MODULES[cls], "elementwise": False}
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        return OpKind.POOL, {"pool": "max"}
    if isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        return OpKind.POOL, {"pool": "avg"}
    if isinstance(module, nn.modules.pooling._LPPoolNd):
        return OpKind.POOL, {"pool": "lp"}
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.Identity)):
        return OpKind.IDENTITY, {}
    if isinstance(module, (nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle)) or cls.endswith("Pad1d") or cls.endswith("Pad2d") or cls.endswith("Pad3d"):
        return OpKind.RESHAPE, {}
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return OpKind.EMBEDDING, {"num_embeddings": module.num_embeddings}
    if isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder)):
        return OpKind.ATTENTION, {}
    if isinstance(module, nn.RNNBase):
        return OpKind.UNKNOWN, {"recurrent": True}
    return OpKind.UNKNOWN, {}


def _norm_attrs(module: nn.Module, norm_type: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"norm_type": norm_type, "eps": float(getattr(module, "eps", 0.0) or 0.0)}
    attrs["affine"] = bool(getattr(module, "affine", getattr(module, "elementwise_affine", False)))
    if norm_type == "batch":
        attrs["momentum"] = module.momentum
        attrs["track_running_stats"] = module.track_running_stats
        attrs["training"] = module.training
    return attrs


def func_name(target: Any) -> str:
    """A stable name for a function or method target (fx call_function / call_method)."""
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or type(target).__name__
    return name


def classify_function(name: str, tensor_args: int, args: tuple = (), kwargs: dict | None = None) -> tuple[OpKind, dict[str, Any]]:
    """Kind and attributes of a functional op, from its name and how many tensors it takes."""
    kwargs = kwargs or {}
    base = name.rstrip("_") if not name.startswith("__") else name
    if name in _ACTIVATION_FUNCS or base in _ACTIVATION_FUNCS:
        attrs: dict[str, Any] = {"activation": base.rstrip("_"), "elementwise": True}
        slope = kwargs.get("negative_slope", args[1] if base == "leaky_relu" and len(args) > 1 else None)
        if base == "leaky_relu":
            attrs["negative_slope"] = float(slope) if isinstance(slope, (int, float)) else 0.01
        return OpKind.ACTIVATION, attrs
    if name in _SOFTMAX_FUNCS:
        return OpKind.ACTIVATION, {"activation": name, "elementwise": False}
    if name in _ADD_FUNCS:
        # x + 1 shifts; x + y merges two signals (a residual add when one is the skip).
        return (OpKind.ADD if tensor_args >= 2 else OpKind.IDENTITY), {"op": name, "tensor_inputs": tensor_args}
    if name in _MUL_FUNCS:
        attrs = {"op": name, "elementwise_product": tensor_args >= 2}
        scalars = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if tensor_args == 1 and scalars:
            attrs["scalar"] = float(scalars[0]) if "div" not in name else 1.0 / float(scalars[0]) if scalars[0] else None
        return OpKind.MUL, attrs
    if name in _MATMUL_FUNCS:
        return (OpKind.MUL if tensor_args >= 2 else OpKind.LINEAR), {"op": name, "elementwise_product": False, "product": tensor_args >= 2}
    if name == "scaled_dot_product_attention":
        return OpKind.ATTENTION, {}
    if name in _LINEAR_FUNCS:
        return _LINEAR_FUNCS[name], {}
    if name in _NORM_FUNCS:
        return OpKind.NORM, {"norm_type": _NORM_FUNCS[name]}
    if name in _POOL_FUNCS:
        return OpKind.POOL, {"pool": _POOL_FUNCS[name]}
    if name in _RESHAPE_FUNCS:
        return OpKind.RESHAPE, {}
    if name in _IDENTITY_FUNCS:
        return OpKind.IDENTITY, {}
    if name == "embedding":
        return OpKind.EMBEDDING, {}
    return OpKind.UNKNOWN, {}


def param_infos(module: nn.Module) -> dict[str, ParamInfo]:
    """Shapes and initial statistics of a module's own parameters and buffers."""
    infos: dict[str, ParamInfo] = {}
    named: list[tuple[str, torch.Tensor, bool]] = [(n, p, True) for n, p in module.named_parameters()]
    named += [(n, b, False) for n, b in module.named_buffers()]
    for name, t, is_param in named:
        if t.is_meta:
            # A model built on the meta device: the statistics its init asked for, if known.
            stats = metainit.stats(t) or (float("nan"), float("nan"))
        elif t.numel() == 0:
            stats = (float("nan"), float("nan"))
        else:
            data = t.detach()
            if data.is_floating_point():
                # float32 is plenty for init statistics and 3x faster than float64 on
                # ResNet-sized weights (this runs on every lint).
                std, mean = torch.std_mean(data.float(), unbiased=False)
                stats = (float(mean), float(std))
            else:
                stats = (float(data.double().mean()), 0.0)
        fan_in = None
        if t.dim() >= 2:
            # torch.nn.init's definition: in-channels times receptive field.
            fan_in = int(t.shape[1] * (t[0][0].numel() if t.dim() > 2 else 1))
        infos[name] = ParamInfo(
            shape=tuple(t.shape),
            dtype=str(t.dtype).replace("torch.", ""),
            mean=stats[0],
            std=stats[1],
            fan_in=fan_in,
            requires_grad=is_param and t.requires_grad,
        )
    return infos


def is_leaf_module(module: nn.Module) -> bool:
    """fx's notion of a leaf: torch's own modules (not containers) are not traced through."""
    mod = type(module).__module__
    return (mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")) and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )

