"""Accuracy of archlint.measure against exact NLCs on the same sample.

For each model: measure() at its default settings, then the exact float64 NLC of the same
sample (benchmarks/exact.py: per-sample Jacobians with vmap(jacrev), or vmap(jvp) along all
centred sample directions for wide nodes) at the output and at 4 intermediate nodes (the
sub-network from the input, or from the embedding for token inputs, to that node).
Models without batch dependence: BatchNorm models are in eval mode with populated statistics.

    python benchmarks/bench_accuracy.py [--device cuda]
    python benchmarks/bench_accuracy.py --seeds 16   # the thin CNN's output alone, three ways
    python benchmarks/bench_accuracy.py --population-seeds 8   # a riding population value

``--seeds N``: the thin residual CNN's output NLC alone over N seeds, against the exact value:
by reverse-mode probes (archlint's default for the output alone, measure.cotangents), by
forward-mode probes deflated along the shared output direction (measure.deflate: the default
where other nodes are measured too), and by forward-mode probes alone.

With ``--device cuda`` models, samples and the exact references all live on the GPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (first: the repository importable, one thread)
import torch
from common import N, images
from exact import exact_nlc, populate_bn
from models import SmallCNN, ThinResidualCNN, TinyTransformer, mlp, small_resnet
from torch import nn

from archlint.measure import measure

TOLERANCE = 0.05


def samples():
    """Gaussian vectors, 1/f noise images and token ids, N of each."""
    g = torch.Generator().manual_seed(1234)
    vectors = (torch.randn(N, 32, generator=g),)
    pictures = (images(N, g),)
    tokens = (torch.randint(0, 100, (N, 16), generator=g),)
    return vectors, pictures, tokens


RESNET = "residual CNN (3 BasicBlocks, eval)"


def models():
    """(name, model, inputs); each model seeded on its own."""
    vectors, pictures, tokens = samples()

    def seeded(seed, build):
        torch.manual_seed(seed)
        return build()

    yield "ReLU MLP, depth 2 (He)", seeded(1, lambda: mlp(2, 256, nn.ReLU, 2.0)), vectors
    yield "ReLU MLP, depth 20 (He)", seeded(2, lambda: mlp(20, 256, nn.ReLU, 2.0)), vectors
    yield "tanh MLP, depth 10, σw²=4 (hot)", seeded(3, lambda: mlp(10, 256, nn.Tanh, 4.0)), vectors
    yield "tanh MLP, depth 10, σw²=1 (cold)", seeded(4, lambda: mlp(10, 256, nn.Tanh, 1.0)), vectors
    yield "GELU MLP, depth 10, σw²=2", seeded(5, lambda: mlp(10, 256, nn.GELU, 2.0)), vectors
    yield "SELU MLP, depth 20, σw²=1", seeded(6, lambda: mlp(20, 256, nn.SELU, 1.0)), vectors
    bn = seeded(7, lambda: mlp(10, 256, nn.ReLU, 1.0, batchnorm=True))
    populate_bn(bn, vectors, N)
    yield "BN-ReLU MLP, depth 10, eval (populated)", bn, vectors
    yield "CNN (3 conv-ReLU-maxpool)", seeded(8, SmallCNN), pictures
    resnet = seeded(9, small_resnet)
    populate_bn(resnet, pictures, N)
    yield RESNET, resnet, pictures
    yield "pre-LN transformer block (token ids)", seeded(10, TinyTransformer), tokens
    # 16 positions x 100 logits per row: a wide output, measured with one probe to start with.
    yield "pre-LN transformer LM (token ids, 16 x 100 logits)", seeded(12, lambda: TinyTransformer(language_model=True)), tokens
    # Its 10 pooled outputs move mostly together: the measurement deflates them (measure.deflate).
    thin = seeded(11, ThinResidualCNN)
    populate_bn(thin, pictures, N)
    yield "thin residual CNN (6 blocks, 32 channels at 32x32, eval)", thin, pictures


def intermediate(report, count=4):
    """``count`` nodes spread over the depth: nonlinear ones (activations, attention
    outputs, residual adds, pools), neither the source nor the output."""
    kinds = {"activation", "add", "pool", "reshape", "norm"}
    candidates = [s.name for s in report.nodes.values()
                  if s.status == "ok" and s.kind in kinds and s.name != report.output and s.name not in report.sources
                  and s.nlc is not None and abs(s.nlc - 1) > 1e-3]
    if len(candidates) <= count:
        return candidates
    return [candidates[round(i * (len(candidates) - 1) / (count - 1))] for i in range(count)]


def on(device, model, inputs):
    return model.to(device), tuple(t.to(device) for t in inputs)


def deflation_over_seeds(seeds: int) -> None:
    """The thin residual CNN's output NLC alone over many seeds: by reverse-mode probes
    (archlint's default for the output alone, measure.cotangents), by forward-mode probes
    deflated (the default where other nodes are measured too) and by forward-mode probes
    alone, against the exact value of the same sample."""
    import statistics

    from archlint.measure import cotangents, deflate

    model = next(m for name, m, _ in models() if name.startswith("thin residual CNN"))
    pictures = samples()[1]
    exact = exact_nlc(model, pictures, "x", ["fc"])["fc"]
    print(f"thin residual CNN (eval, populated): exact output NLC {exact:.4f}; {seeds} seeds each")
    print("| measurement | probes | mean signed error | standard deviation | largest \\|error\\| | seconds each |")
    print("|---|---|---|---|---|---|")
    saved = deflate.MIN_SAVED_PROBES
    for label, reverse, min_saved in (("reverse-mode probes (default)", True, saved),
                                      ("forward-mode probes, deflated", False, saved),
                                      ("forward-mode probes alone", False, 10**6)):
        cotangents.ENABLED, deflate.MIN_SAVED_PROBES = reverse, min_saved
        errors, probes, started = [], set(), time.perf_counter()
        for seed in range(seeds):
            report = measure(model, pictures, seed=seed, nodes=(), population=False)
            errors.append(report.output_nlc / exact - 1)
            probes.add(report.probes)
        seconds = (time.perf_counter() - started) / seeds
        print(f"| {label} | {min(probes)}-{max(probes)} | {100 * statistics.mean(errors):+.2f}% | "
              f"{100 * statistics.stdev(errors):.2f}% | {100 * max(map(abs, errors)):.2f}% | {seconds:.2f} |")
    cotangents.ENABLED, deflate.MIN_SAVED_PROBES = True, saved


def population_over_seeds(seeds: int) -> None:
    """The population value of the train-mode residual CNN (its population probes ride in the
    main pass, paired with the batch probes) over many seeds, at the output and four inner
    nodes, against the exact NLC of the same model in eval mode populated from the sample."""
    import statistics

    pictures = samples()[1]
    torch.manual_seed(9)
    populated = small_resnet()
    populate_bn(populated, pictures, N)
    reference = measure(populated, pictures)
    targets = intermediate(reference) + [reference.output]
    exact = exact_nlc(populated, pictures, reference.sources[0], targets)
    torch.manual_seed(9)
    trained = small_resnet()
    errors: dict[str, list[float]] = {t: [] for t in targets}
    within: dict[str, int] = {t: 0 for t in targets}
    for seed in range(seeds):
        report = measure(trained, pictures, seed=seed)
        for t in targets:
            s = report.nodes[t]
            errors[t].append(s.nlc_population / exact[t] - 1)
            within[t] += abs(s.nlc_population - exact[t]) <= 2 * s.nlc_population_se
    print(f"residual CNN, train mode, population value; {seeds} seeds")
    print("| node | exact NLC | mean signed error | standard deviation | largest \\|error\\| | within 2 se |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        e = errors[t]
        label = "output" if t == reference.output else t
        print(f"| {label} | {exact[t]:.4f} | {100 * statistics.mean(e):+.2f}% | {100 * statistics.stdev(e):.2f}% | "
              f"{100 * max(map(abs, e)):.2f}% | {within[t]} of {seeds} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, help="only the thin CNN's output alone, three ways, over this many seeds")
    parser.add_argument("--population-seeds", type=int,
                        help="only the train-mode residual CNN's population value, over this many seeds")
    args = parser.parse_args()
    if args.seeds:
        deflation_over_seeds(args.seeds)
        return 0
    if args.population_seeds:
        population_over_seeds(args.population_seeds)
        return 0
    device = args.device
    rows = []
    worst = 0.0
    references = {}
    for name, model, inputs in models():
        model, inputs = on(device, model, inputs)
        started = time.perf_counter()
        report = measure(model, inputs, device=device)
        seconds = time.perf_counter() - started
        targets = intermediate(report) + [report.output]
        exact = exact_nlc(model, inputs, report.sources[0], targets)
        references[name] = (report, targets, exact)
        for target in targets:
            s = report.nodes[target]
            error = s.nlc / exact[target] - 1
            worst = max(worst, abs(error))
            label = "output" if target == report.output else target
            rows.append((name, label, exact[target], s.nlc, s.nlc_se, report.probes, error, seconds if target == report.output else None))
        print(f"{name}: output exact {exact[report.output]:.4f}, measured {report.output_nlc:.4f}"
              f" ± {report.output_nlc_se:.4f} ({report.probes} probes, {seconds:.2f}s)", file=sys.stderr)

    # The population value of a train-mode BatchNorm model: the same residual CNN as built
    # (train mode, fresh statistics), whose population probes ride in the main pass, against
    # the exact NLC of that model in eval mode populated from the same batch (above).
    eval_report, targets, exact = references[RESNET]
    torch.manual_seed(9)
    trained, pictures = on(device, small_resnet(), samples()[1])
    started = time.perf_counter()
    report = measure(trained, pictures, device=device)
    seconds = time.perf_counter() - started
    name = "residual CNN, train mode: population value"
    for target in targets:
        s = report.nodes[target]
        error = s.nlc_population / exact[target] - 1
        worst = max(worst, abs(error))
        label = "output" if target == report.output else target
        rows.append((name, label, exact[target], s.nlc_population, s.nlc_population_se,
                     f"{report.probes} + {report.population_probes} eval", error, seconds if target == report.output else None))
    print(f"{name}: output exact (eval, populated) {exact[report.output]:.4f}, population {report.output_nlc_population:.4f}"
          f" ± {report.output_nlc_population_se:.4f}, batch {report.output_nlc:.4f} ({seconds:.2f}s)", file=sys.stderr)

    print("| model | node | exact NLC | measured ± se | probes | rel. error |")
    print("|---|---|---|---|---|---|")
    for name, label, ex, nlc, se, probes, error, seconds in rows:
        flag = "" if abs(error) <= TOLERANCE else " **over 5%**"
        print(f"| {name} | {label} | {ex:.4f} | {nlc:.4f} ± {se:.4f} | {probes} | {100 * error:+.2f}%{flag} |")
    outputs = [r for r in rows if r[1] == "output"]
    inner = [r for r in rows if r[1] != "output"]
    print()
    print(f"{len(outputs)} models, {len(inner)} intermediate nodes; largest |rel. error|: "
          f"outputs {100 * max(abs(r[6]) for r in outputs):.2f}%, intermediate {100 * max(abs(r[6]) for r in inner):.2f}% "
          f"(tolerance {100 * TOLERANCE:.0f}%)")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
