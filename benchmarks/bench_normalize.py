"""Nonlinearity normalisation on 8 models: does the normalised model have the target NLC?

For each model and target (1.5, 2, 4), ``archlint.normalize`` returns a modified copy; its NLC
is then checked with the exact float64 Jacobian reference (``exact.exact_nlc``) on the same
256-sample batch, BatchNorm statistics populated from it (as the population NLC that
normalisation aims at). Pass: within 10% of the target.

    nice -n 10 python benchmarks/bench_normalize.py [--quick]

--quick: targets 2 only (a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import common  # noqa: F401  (repository on sys.path, one thread)
import torch
from torch import nn

from exact import exact_nlc, populate_bn
from models import mlp, small_resnet

import archlint
from archlint.trace import trace

SAMPLES = 256
TARGETS = (1.5, 2.0, 4.0)


class Swish17(nn.Module):
    """A custom elementwise activation (no torch module of its own): x * sigmoid(1.7 x)."""

    def forward(self, x):
        return x * torch.sigmoid(1.7 * x)


def bn_relu_cnn(depth: int = 6, width: int = 16, classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def models() -> list[tuple[str, object, str]]:
    """(name, builder, input kind)."""
    return [
        ("ReLU MLP (He, depth 10)", lambda: mlp(10, 128, nn.ReLU, sigma_w2=2.0), "vector"),
        ("tanh MLP hot (sigma_w^2 4)", lambda: mlp(10, 128, nn.Tanh, sigma_w2=4.0), "vector"),
        ("tanh MLP cold (sigma_w^2 1)", lambda: mlp(10, 128, nn.Tanh, sigma_w2=1.0), "vector"),
        ("GELU MLP (depth 10)", lambda: mlp(10, 128, nn.GELU, sigma_w2=2.0), "vector"),
        ("SELU MLP (depth 10)", lambda: mlp(10, 128, nn.SELU, sigma_w2=1.0), "vector"),
        ("custom x*sigmoid(1.7x) MLP", lambda: mlp(10, 128, Swish17, sigma_w2=2.0), "vector"),
        ("BN-ReLU MLP (depth 20)", lambda: mlp(20, 128, nn.ReLU, sigma_w2=2.0, batchnorm=True), "vector"),
        ("BN-ReLU CNN (6 conv)", bn_relu_cnn, "image"),
        ("residual CNN (3 BasicBlocks)", small_resnet, "image"),
    ]


def batch(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "image":
        from archlint.inputs import pink_noise

        return pink_noise(SAMPLES, 3, (16, 16), g).float()
    return torch.randn(SAMPLES, 32, generator=g)


def reference(model: nn.Module, x: torch.Tensor) -> float:
    """Exact float64 NLC of the model's output, BatchNorm populated from the batch."""
    model = copy.deepcopy(model)
    populate_bn(model, (x,), SAMPLES)
    graph = trace(model, (x[:2],), name="ref")
    return exact_nlc(model, (x,), graph.inputs[0].name, [graph.output])[graph.output]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    targets = (2.0,) if parser.parse_args().quick else TARGETS
    rows = []
    failures = 0
    for name, build, kind in models():
        torch.manual_seed(0)
        model = build()
        x = batch(kind)
        before = reference(model, x)
        for target in targets:
            started = time.perf_counter()
            result = archlint.normalize(model, x, target=target)
            seconds = time.perf_counter() - started
            exact = reference(result.model, x)
            err = exact / target - 1
            ok = abs(err) <= 0.10
            failures += not ok
            forms = sorted({c.form for c in result.changes})
            rows.append((name, before, target, result.nlc_after, exact, err, len(result.steps), "/".join(forms), seconds, ok))
            print(f"{name}: target {target}: archlint {result.nlc_after:.3f}, exact {exact:.3f} ({err:+.1%}), "
                  f"{len(result.steps)} measurements, {seconds:.1f}s", file=sys.stderr, flush=True)
    print("| model | NLC before (exact) | target | after, archlint.measure | after, exact float64 | error | measurements | change | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, before, target, measured, exact, err, steps, forms, seconds, ok in rows:
        print(f"| {name} | {before:.2f} | {target:g} | {measured:.3f} | {exact:.3f} | {err:+.1%}{'' if ok else ' FAIL'} | {steps} | {forms} | {seconds:.1f} |")
    print(f"\n{len(rows) - failures} of {len(rows)} within 10% of the target (exact float64 reference, {SAMPLES} samples)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
