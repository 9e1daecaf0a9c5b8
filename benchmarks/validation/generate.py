"""A seeded random generator of architectures for the validation study.

Each architecture is a JSON-able spec with a stable id, and ``source(spec)`` writes it as a
self-contained, plain-PyTorch model file (``class Net(nn.Module)`` with a no-argument
constructor): nothing in it knows about archlint. The families are the ones the rules talk
about:

- MLPs and CNNs (1-D convolutions for MNIST-1D, 2-D for digits), depth 2-50 (the number of
  Linear/Conv layers before the output layer), width;
- activations ReLU, LeakyReLU, tanh, sigmoid, GELU, SELU and the custom elementwise Snake
  (x + sin(x)^2, Ziyin et al. 2020);
- weights N(0, (g * gain)^2 / fan_in) with the activation's standard gain and g = 0.5
  (cold), 1 (standard) or 2 (hot), zero biases; from index config.DEFAULT_INIT_FROM on,
  PyTorch's default init instead ("default": the layers as nn.Linear / nn.ConvNd construct
  them, weight variance 1/(3 fan_in) and uniform biases);
- no normalisation, BatchNorm, or LayerNorm (GroupNorm with one group for CNNs: the layer
  norm of a feature map);
- plain chains (Linear/Conv, norm, activation) or pre-activation residual blocks
  x + scale * branch(x) of 1 or 2 layers, with branch scales 1, 0.5, 0.25, 0.1;
- CNNs: no pooling or 1-2 max/avg pooling steps, global-average-pooling or flatten head;
- output layer scale 0.1, 1 or 10 (times the standard 1/sqrt(fan_in) std).

Architecture i is drawn from its own RNG (seeded with the generator seed and i), so the
first n architectures are the same whatever the total. Every tenth is forced to be a deep
residual BatchNorm CNN (the ResNet question of the study).

    python benchmarks/validation/generate.py --n 640 --summary    # counts per family
    python benchmarks/validation/generate.py --show 9             # one model's source
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config  # noqa: E402

ACTIVATIONS = {
    # name: (constructor source, standard gain)
    "relu": ("nn.ReLU()", math.sqrt(2.0)),
    "leaky_relu": ("nn.LeakyReLU(0.01)", math.sqrt(2.0 / (1 + 0.01 ** 2))),
    "tanh": ("nn.Tanh()", 5.0 / 3.0),
    "sigmoid": ("nn.Sigmoid()", 1.0),
    "gelu": ("nn.GELU()", math.sqrt(2.0)),
    # LeCun normal, as the SELU paper prescribes (torch's calculate_gain gives 3/4 for a
    # different purpose).
    "selu": ("nn.SELU()", 1.0),
    "snake": ("Snake()", 1.0),
}
ACT_WEIGHTS = {"relu": 0.24, "leaky_relu": 0.1, "tanh": 0.16, "sigmoid": 0.1, "gelu": 0.14, "selu": 0.1, "snake": 0.16}
GAINS = {"cold": 0.5, "standard": 1.0, "hot": 2.0}
DEPTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 50)
DEPTH_WEIGHTS = (0.08, 0.08, 0.1, 0.12, 0.12, 0.12, 0.11, 0.1, 0.09, 0.08)
# The widest layers only in shallow nets (up to WIDE_DEPTH layers), so that the deepest
# nets stay a few seconds to train on a CPU core: the cost is about depth x width^2.
MLP_WIDTHS = (32, 64, 128, 256)
CNN_WIDTHS = (8, 16, 32)
WIDE_DEPTH = 8
BRANCH_SCALES = (1.0, 0.5, 0.25, 0.1)
OUT_SCALES = (0.1, 1.0, 10.0)
DEEP_RESNET_EVERY = 10


def _choice(rng: np.random.Generator, options, weights=None):
    if weights is not None:
        weights = np.asarray(weights, dtype=float)
        weights = weights / weights.sum()
    return options[int(rng.choice(len(options), p=weights))]


def architecture(index: int, seed: int = config.GENERATOR_SEED) -> dict:
    """The spec of architecture ``index``."""
    rng = np.random.default_rng([seed, index])
    deep_resnet = index % DEEP_RESNET_EVERY == DEEP_RESNET_EVERY - 1
    dataset = _choice(rng, ("digits", "mnist1d"))
    family = "cnn" if deep_resnet else _choice(rng, ("mlp", "cnn"), (0.55, 0.45))
    if deep_resnet:
        depth = _choice(rng, (16, 24, 32, 50))
        norm, skip = "batch", True
        activation = _choice(rng, ("relu", "relu", "gelu", "leaky_relu"))
    else:
        depth = _choice(rng, DEPTHS, DEPTH_WEIGHTS)
        norm = _choice(rng, ("none", "batch", "layer"), (0.45, 0.35, 0.2))
        skip = bool(rng.random() < 0.35) and depth >= 3
        activation = _choice(rng, tuple(ACT_WEIGHTS), tuple(ACT_WEIGHTS.values()))
    gain = _choice(rng, tuple(GAINS), (0.25, 0.5, 0.25))
    if index >= config.DEFAULT_INIT_FROM:
        # Drawn all the same, so that every other choice is distributed as before.
        gain = "default"
    widths = MLP_WIDTHS if family == "mlp" else CNN_WIDTHS
    widths = widths if depth <= WIDE_DEPTH else widths[:-1]
    if family == "cnn" and dataset == "digits":
        # 2-D maps cost 3x the taps of 1-D ones (9 vs 3, at 64 positions vs 40): one width
        # step narrower, and 8 channels (512 units a layer) beyond 16 layers.
        widths = widths[:-1] if depth <= 16 else widths[:1]
    width = _choice(rng, widths)
    spec = {
        "dataset": dataset,
        "family": family,
        "depth": depth,
        "width": width,
        "activation": activation,
        "gain": gain,
        "norm": norm,
        "skip": skip,
        "block_len": _choice(rng, (1, 2)) if skip else None,
        "branch_scale": _choice(rng, BRANCH_SCALES) if skip else None,
        "out_scale": _choice(rng, OUT_SCALES, (0.2, 0.6, 0.2)),
    }
    if family == "cnn":
        pools = _choice(rng, (0, 1, 2), (0.3, 0.35, 0.35))
        spec["pool"] = "none" if pools == 0 else _choice(rng, ("max", "avg"))
        # The number of pooling steps asked for: a net with fewer places between its layers
        # or blocks than that gets one per place (12 of the 213 pooled CNNs of the 640).
        # The model file is what was built and measured.
        spec["pools"] = pools
        spec["head"] = _choice(rng, ("gap", "flatten"), (0.7, 0.3))
    spec["index"] = index
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    spec["id"] = f"a{index:04d}-{dataset}-{family}-{digest}"
    return spec


def architectures(n: int, seed: int = config.GENERATOR_SEED) -> list[dict]:
    return [architecture(i, seed) for i in range(n)]


def input_shape(spec: dict) -> tuple[int, ...]:
    ds = config.DATASETS[spec["dataset"]]
    return tuple(ds["mlp_shape"] if spec["family"] == "mlp" else ds["cnn_shape"])


def n_blocks(spec: dict) -> int:
    """Residual nets: a stem layer, then blocks of ``block_len`` layers."""
    return max(1, (spec["depth"] - 1) // spec["block_len"])


def layer_count(spec: dict) -> int:
    """Linear/Conv layers before the output layer, as built."""
    return 1 + n_blocks(spec) * spec["block_len"] if spec["skip"] else spec["depth"]


_HEADER = '''\
"""Generated by benchmarks/validation/generate.py: architecture {id}.

{summary}
"""

import math

import torch
from torch import nn


class Snake(nn.Module):
    """x + sin(x)^2 (Ziyin et al., 2020): a custom elementwise activation."""

    def forward(self, x):
        return x + torch.sin(x) ** 2


class Residual(nn.Module):
    """x + scale * branch(x)."""

    def __init__(self, branch, scale):
        super().__init__()
        self.branch = branch
        self.scale = scale

    def forward(self, x):
        return x + self.scale * self.branch(x)


def init_(layer, gain):
    """Weights N(0, gain^2 / fan_in), zero bias."""
    fan_in = layer.weight[0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    nn.init.zeros_(layer.bias)
    return layer

'''


def source(spec: dict) -> str:
    """The model file of ``spec``: ``Net()`` builds it."""
    family, width = spec["family"], spec["width"]
    act_src, std_gain = ACTIVATIONS[spec["activation"]]
    g = None if spec["gain"] == "default" else GAINS[spec["gain"]] * std_gain
    shape = input_shape(spec)
    nd = len(shape) - 1  # 0 for MLPs, 1 or 2 for CNNs
    conv = {1: "nn.Conv1d", 2: "nn.Conv2d"}.get(nd)
    pool_cls = {("max", 1): "nn.MaxPool1d", ("avg", 1): "nn.AvgPool1d",
                ("max", 2): "nn.MaxPool2d", ("avg", 2): "nn.AvgPool2d"}

    def layer(c_in: int, c_out: int) -> str:
        built = f"nn.Linear({c_in}, {c_out})" if family == "mlp" else f"{conv}({c_in}, {c_out}, 3, padding=1)"
        return built if g is None else f"init_({built}, {g!r})"

    def norm() -> list[str]:
        if spec["norm"] == "batch":
            return [f"nn.BatchNorm{max(nd, 1)}d({width})"]
        if spec["norm"] == "layer":
            return [f"nn.LayerNorm({width})" if family == "mlp" else f"nn.GroupNorm(1, {width})"]
        return []

    # The body as a list of units (one Python expression each), and where pooling goes.
    c_in = shape[0]
    units: list[str] = []
    if spec["skip"]:
        units.append(layer(c_in, width))
        for _ in range(n_blocks(spec)):
            branch = []
            for _ in range(spec["block_len"]):
                branch += norm() + [act_src, layer(width, width)]
            units.append(f"Residual(nn.Sequential({', '.join(branch)}), {spec['branch_scale']!r})")
        units += norm() + [act_src]
    else:
        for i in range(spec["depth"]):
            units.append(layer(c_in if i == 0 else width, width))
            units += norm() + [act_src]
    body_units = len(units)
    positions = spatial = None
    if family == "cnn":
        positions = int(np.prod(shape[1:]))
        spatial = shape[1:]
        # Pooling between layers or blocks, at evenly spaced places of the body (never
        # inside a residual block, whose skip must keep its shape).
        pools = spec["pools"]
        if pools:
            # Indices of unit boundaries after an activation (plain) or a block (residual).
            if spec["skip"]:
                cuts = [i + 1 for i, u in enumerate(units) if u.startswith("Residual(")]
            else:
                cuts = [i + 1 for i, u in enumerate(units) if u == act_src]
            chosen = sorted({cuts[min(len(cuts) - 1, round((k + 1) * len(cuts) / (pools + 1)) - 1)] for k in range(pools)})
            for at in reversed(chosen):
                units.insert(at, f"{pool_cls[(spec['pool'], nd)]}(2)")
            for _ in chosen:
                spatial = tuple(s // 2 for s in spatial)
            positions = int(np.prod(spatial))
    out_g = spec["out_scale"]
    if family == "mlp":
        head = [f"init_(nn.Linear({width}, 10), {out_g!r})"]
    elif spec["head"] == "gap":
        pool = "nn.AdaptiveAvgPool1d(1)" if nd == 1 else "nn.AdaptiveAvgPool2d(1)"
        head = [pool, "nn.Flatten()", f"init_(nn.Linear({width}, 10), {out_g!r})"]
    else:
        head = ["nn.Flatten()", f"init_(nn.Linear({width * positions}, 10), {out_g!r})"]
    lines = [_HEADER.format(id=spec["id"], summary=json.dumps({k: v for k, v in spec.items() if k not in ("id",)}, sort_keys=True))]
    lines.append("class Net(nn.Module):")
    lines.append(f'    """{describe(spec)}"""')
    lines.append("")
    lines.append("    def __init__(self):")
    lines.append("        super().__init__()")
    lines.append("        self.body = nn.Sequential(")
    lines += [f"            {u}," for u in units]
    lines.append("        )")
    lines.append("        self.head = nn.Sequential(")
    lines += [f"            {u}," for u in head]
    lines.append("        )")
    lines.append("")
    lines.append("    def forward(self, x):")
    lines.append("        return self.head(self.body(x))")
    assert body_units >= 2
    return "\n".join(lines) + "\n"


def describe(spec: dict) -> str:
    what = f"{spec['dataset']} {spec['family'].upper()}, {layer_count(spec)} layers of width {spec['width']}, {spec['activation']} ({spec['gain']} init)"
    what += {"none": "", "batch": ", BatchNorm", "layer": ", LayerNorm"}[spec["norm"]]
    if spec["skip"]:
        what += f", residual blocks of {spec['block_len']} (branch scale {spec['branch_scale']})"
    if spec["family"] == "cnn":
        what += f", {spec['pools']} {spec['pool']} pooling, {spec['head']} head"
    return what + f", output scale {spec['out_scale']}."


def build(spec: dict, seed: int):
    """``Net()`` of the spec's source, built right after ``torch.manual_seed(seed)`` (what
    archlint does with ``Settings.seed``, so both see the same initialisation)."""
    import torch

    namespace: dict = {"__name__": f"arch_{spec['index']}"}
    exec(compile(source(spec), f"<{spec['id']}>", "exec"), namespace)
    torch.manual_seed(seed)
    return namespace["Net"]()


def summary(specs: list[dict]) -> dict:
    count = collections.Counter()
    for s in specs:
        count["total"] += 1
        count[s["family"]] += 1
        count[s["dataset"]] += 1
        count["residual"] += s["skip"]
        count["batchnorm"] += s["norm"] == "batch"
        count["layernorm"] += s["norm"] == "layer"
        count["deep residual BN CNN (>= 16 layers)"] += s["family"] == "cnn" and s["skip"] and s["norm"] == "batch" and s["depth"] >= 16
        count[f"act {s['activation']}"] += 1
        count[f"gain {s['gain']}"] += 1
    return dict(count)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=config.N_ARCHITECTURES)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--show", type=int, help="print the source of architecture INDEX")
    args = ap.parse_args(argv)
    if args.show is not None:
        print(source(architecture(args.show)))
        return
    specs = architectures(args.n)
    if args.summary:
        print(json.dumps(summary(specs), indent=1))
    else:
        for s in specs:
            print(json.dumps(s))


if __name__ == "__main__":
    main()
