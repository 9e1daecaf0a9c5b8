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

``--part shared``: why some outputs need many probes, and what would cut them. Per row i the
numerator is tr(M_i), M_i = J_i Ĉ J_i^T (outputs x outputs), and one Gaussian probe's
relative variance is 2 ||M_i||_F^2 / tr(M_i)^2: large when M_i has few large eigenvalues.
From exact per-row Jacobians (float64, ROWS rows): that variance, the share of the
numerator along the top eigenvectors of sum_i M_i (directions shared by all rows), and the
variance left to the probes if the part along the top k of them were computed exactly (one
reverse-mode pass per direction) and only the rest estimated.

``--part cotangents``: the same M_i, and the relative variance of one probe's estimate of the
numerator over all 128 rows (ROWS rows' variances, scaled to 128), for a forward-mode probe
with Gaussian input directions (2 ||M_i||_F^2 per row) and for reverse-mode probes whose
cotangents are random signs (2 x the squared off-diagonal entries of M_i): in the output's
own units, and in the basis of the eigenvectors of the output's covariance over the sample,
as measure.cotangents draws them.

    python benchmarks/bench_directions.py [--shapes thin-resnet,mlp20,resnet18] [--probes 24]
    python benchmarks/bench_directions.py --part shared [--shapes thin-resnet,mlp20]
    python benchmarks/bench_directions.py --part cotangents [--shapes mlp20,thin-resnet,mobilenetv2,resnet18,vgg-bn]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (first: the repository importable, one thread)
import torch
from bench_cost import shapes
from exact import populate_bn
from torch.func import jacrev, jvp, vmap

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


ROWS = 48


def row_matrices(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The shape's M_i = J_i Ĉ J_i^T of its first ROWS rows (float64; BatchNorm in eval mode
    with populated statistics), and its output over the sample (rows x units)."""
    _, build = shapes()[name]
    model, x = build()
    model, x = model.double().requires_grad_(False), x.double()
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        populate_bn(model, (x,), x.shape[0])
    model.eval()
    n = x.shape[0]
    centred = (x - x.mean(0)).reshape(n, -1)
    jac = vmap(jacrev(lambda xi: model(xi[None])[0]))(x[:ROWS])
    jac = jac.reshape(ROWS, jac.shape[1], -1)
    ju = jac @ centred.T / n**0.5
    with torch.no_grad():
        out = model(x).reshape(n, -1)
    return ju @ ju.transpose(1, 2), out


def cotangent_noise(names: list[str]) -> None:
    print("| shape | outputs | forward mode, Gaussian directions | reverse mode, signs in the output's units "
          "| reverse mode, signs in the output covariance's eigenvectors (archlint) |")
    print("|---|---|---|---|---|")
    for name in names:
        m, out = row_matrices(name)
        total = m.diagonal(dim1=1, dim2=2).sum()
        centred = out - out.mean(0)
        basis = torch.linalg.eigh(centred.T @ centred).eigenvectors

        def off_diagonal(a: torch.Tensor) -> torch.Tensor:
            return a - torch.diag_embed(a.diagonal(dim1=1, dim2=2))

        # Var of the one-probe estimate of the mean over 128 rows, relative to its square.
        scale = ROWS / 128 / total**2
        forward = 2 * m.square().sum() * scale
        own_units = 2 * off_diagonal(m).square().sum() * scale
        rotated = 2 * off_diagonal(basis.T @ m @ basis).square().sum() * scale
        print(f"| {name} | {m.shape[1]} | {float(forward):.2e} | {float(own_units):.2e} | {float(rotated):.2e} |", flush=True)


def shared_directions(names: list[str]) -> None:
    print(f"| shape | outputs | one probe's relative variance per row | numerator share of the top 1 / 2 / 3 "
          f"shared directions | relative variance left with 1 / 2 / 3 of them exact |")
    print("|---|---|---|---|---|")
    for name in names:
        m, _ = row_matrices(name)  # per row: J_i Ĉ J_i^T
        trace = m.diagonal(dim1=1, dim2=2).sum(-1)
        eigenvalues, vectors = torch.linalg.eigh(m.sum(0))
        eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
        shares = (eigenvalues / eigenvalues.sum())[:3].cumsum(0)
        left = []
        for k in (1, 2, 3):
            rest = torch.eye(m.shape[1], dtype=m.dtype) - vectors[:, :k] @ vectors[:, :k].T
            r = rest @ m @ rest
            left.append(float((2 * r.square().sum((1, 2)) / trace**2).mean()))
        full = float((2 * m.square().sum((1, 2)) / trace**2).mean())
        print(f"| {name} | {m.shape[1]} | {full:.3f} | " + " / ".join(f"{float(v):.2f}" for v in shares) + " | "
              + " / ".join(f"{v:.4f}" for v in left) + " |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("directions", "shared", "cotangents"), default="directions")
    parser.add_argument("--shapes", default="thin-resnet,mlp20,resnet18")
    parser.add_argument("--probes", type=int, default=24)
    args = parser.parse_args()
    if args.part == "shared":
        shared_directions(args.shapes.split(","))
        return 0
    if args.part == "cotangents":
        cotangent_noise(args.shapes.split(","))
        return 0
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
