"""Probe noise of the NLC's numerator for three ways of choosing the tangent directions.

The numerator mean_i tr(J_i C J_i^T) is estimated per probe as mean_i ||J_i u_i||^2 over the
batch's rows i. What matters for the number of probes a measurement needs is the relative
variance of that one-probe estimate over the probes (the inputs held fixed). Directions:

- "single sample": u_i = x_p(i) - mean(x), one permuted sample per row (archlint until
  2026-12-06);
- "rotated": the batch's permuted centred samples rotated among themselves by a random
  orthogonal matrix (archlint's ``measure.runner._mixed``): each probe's directions have
  exactly the sample's covariance;
- "Gaussian": u_i = sum_k z_ik (x_k - mean(x)) / sqrt(n), z ~ N(0, 1): the sample covariance
  only in expectation (an affine map would not measure exactly 1).

The suite's shapes from bench_cost.py, built as there; models with BatchNorm in eval mode
with populated statistics (so that each row's Jacobian is its own), 128 samples, one
forward-mode jvp per probe. Prints the relative variance per probe and the mean of each.

    python benchmarks/bench_directions.py [--shapes thin-resnet,mlp20,resnet18] [--probes 24]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (first: the repository importable, one thread)
import torch
from bench_cost import shapes
from exact import populate_bn
from torch.func import jvp

from archlint.measure.runner import _mixed, _random_rotation


def directions(scheme: str, centred: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = centred.shape[0]
    permuted = centred[torch.randperm(n, generator=g)]
    if scheme == "single sample":
        return permuted
    if scheme == "rotated":
        return _mixed(permuted, _random_rotation(n, g))
    z = torch.randn(n, n, generator=g) / n**0.5
    return (z @ centred.reshape(n, -1)).reshape(centred.shape)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="thin-resnet,mlp20,resnet18")
    parser.add_argument("--probes", type=int, default=24)
    args = parser.parse_args()
    print(f"| shape | directions | numerator (mean of {args.probes} probes) | relative variance per probe |")
    print("|---|---|---|---|")
    for name in args.shapes.split(","):
        description, build = shapes()[name]
        model, x = build()
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            populate_bn(model, (x,), x.shape[0])
        model.eval()
        centred = x - x.mean(0)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for scheme in ("single sample", "rotated", "Gaussian"):
                estimates = []
                for _ in range(args.probes):
                    _, tangent = jvp(model, (x,), (directions(scheme, centred, g),))
                    estimates.append(tangent.reshape(x.shape[0], -1).square().sum(1).mean())
                e = torch.stack(estimates)
                print(f"| {name} | {scheme} | {float(e.mean()):.4g} | {float(e.var() / e.mean() ** 2):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
