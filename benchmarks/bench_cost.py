"""Cost of archlint.measure against a plain forward pass, CPU, 1 thread.

The default run is the suite: seven model shapes side by side in one process (a CIFAR
ResNet-18; a thin full-resolution residual CNN; a VGG-style BatchNorm CNN; a depth-20 MLP; a
GPT-style pre-LN transformer; an LSTM language model; MobileNetV2-style inverted residual
blocks), each built fresh (train mode), batch 128. For each: one plain forward pass
(``torch.no_grad()``, eval mode), ``measure(model, x, graph=g)`` (every node's statistics, the
population value of BatchNorm models included) and the output NLC alone (``nodes=()``,
``population=False``) as multiples of it, in wall-clock and in process CPU time (the steadier
of the two on a shared machine). The graph is traced beforehand, as archlint's engine does.
Medians of REPEATS runs, interleaved within each shape so that machine noise hits all alike.

``--part 1`` and ``--part 2`` are the detailed ResNet-18 studies:

1. All per-node statistics of the freshly built model (train mode: the train-mode BatchNorm
   NLC of every node, plus the eval value with populated statistics) against one plain
   forward pass of the same batch: ``torch.no_grad()``, eval mode. With the graph traced
   beforehand (archlint's engine traces every model once, for its static rules) and with the
   trace included. Times are medians of REPEATS runs, interleaved so that machine noise hits
   all of them alike.
2. The output NLC of the eval-mode model (populated statistics, no batch dependence), as
   measure() gives it (with all per-node statistics, and with the output's only), against
   the exact method: per-sample
   Jacobians with vmap(jacrev), then mean_n tr(J_n Ĉ J_n^T) / tr Cov(out), for 10 and 1000
   outputs. The 10-output exact run is timed on all 128 samples; the 1000-output one (about
   an hour) on SUBSET samples and scaled by 128 / SUBSET (its cost is linear in the number of
   samples: independent per-sample Jacobians), which the 10-output case checks.

The process's allocator is tuned as archlint's own processes tune theirs
(archlint.worker.keep_freed_memory: large freed blocks are reused instead of mapped afresh);
``--allocator default`` leaves glibc's defaults, as in a user's process calling
archlint.measure.

``--part rules``: archlint's own tangent rules for layer norm, softmax and LSTMs against
PyTorch's, on the GPT and the LSTM language model, in one process (see own_rules). ``--part rows``: nodes
that only rearrange their input's rows taking its statistics against computing their own, on
the suite's shapes that have such nodes (see kept_rows). ``--part replay``: the passes after the
main one taking its convolution and linear values against computing them (see replayed).
``--part state``: the user's parameters copied before the first call that could write them
against all copied before the measurement and back after it (see parameter_copies).
``--part chunks``: each node's row distances and sign counts a cache-sized chunk of rows at a
time against the whole node at once (see row_chunks). ``--part heap``: the heap's top kept
by archlint's processes against given back once 256 MiB of it are free (see heap_top).
``--part cotangents``: the output alone by reverse-mode probes (archlint.measure.cotangents)
against forward-mode probes, with the probes each took (see cotangent_probes). ``--part
screening``: archlint check's screening measurement the same two ways (see screening).
``--part budget``: how long a measurement of all statistics takes against its time budget,
at budgets below the full measurement's cost, and what it gave up (see within_budget).
``--part statistics``: each node's statistics by matrix-vector products against reductions
alone (see node_statistics). ``--part paired``: a deflated output's population value from the
batch's exact part against its own backward pass (see paired_population).

    python benchmarks/bench_cost.py [--part suite|1|2|profile|rules|rows|replay|state|chunks|heap|cotangents|screening|batchnorm|budget|statistics|paired] [--shapes a,b,...] [--repeats 3] [--allocator archlint|default]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
from contextlib import contextmanager

import common  # noqa: F401  (first: the repository importable, one thread)
import torch
from common import N, REPO, images, timed_both
from exact import jacrev_output_nlc, populate_bn
from models import LSTMLanguageModel, MobileNetV2Small, ThinResidualCNN, mlp, resnet18, vgg_bn
from torch import nn
from torch.func import jacrev, vmap

import archlint.measure.plan as measure_plan
from archlint.measure import MeasureError, measure
from archlint.trace import trace
from archlint.worker import keep_freed_memory

REPEATS = 7
SUITE_REPEATS = 3
SUBSET = 4


def plain_forward(model, x):
    """The reference: one no-grad eval-mode forward pass of the batch."""
    model = copy.deepcopy(model).eval()

    def run():
        with torch.no_grad():
            model(x)

    return run


def part1(x, repeats: int) -> None:
    torch.manual_seed(0)
    model = resnet18(10)  # as built: train mode, fresh BatchNorm statistics
    graph = trace(model, (x[:4],), name="ResNet18")  # as archlint's engine does, once
    forward = plain_forward(model, x)

    def separate_population_pass():
        # The population value from a second full pass in eval mode, as measure() computes
        # it when the sample is more than one batch (or a BatchNorm sees few values per
        # channel): for comparison with the one-pass default on this model.
        fusable = measure_plan._fusable
        measure_plan._fusable = lambda *args: False
        try:
            return measure(model, x, graph=graph)
        finally:
            measure_plan._fusable = fusable

    runs = {
        "with_trace": lambda: measure(model, x),
        "all": lambda: measure(model, x, graph=graph),
        "separate_population": separate_population_pass,
        "no_population": lambda: measure(model, x, graph=graph, population=False),
    }
    forward()
    runs["all"]()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"forward": []} | {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    reports = {}
    for _ in range(repeats):
        wall, c, _ = timed_both(forward)
        times["forward"].append(wall)
        cpu["forward"].append(c)
        for key, run in runs.items():
            wall, c, reports[key] = timed_both(run)
            times[key].append(wall)
            cpu[key].append(c)
    f = statistics.median(times["forward"])
    fc = statistics.median(cpu["forward"])
    r, r2, r3 = reports["all"], reports["no_population"], reports["separate_population"]
    print("## Part 1: all per-node statistics, ResNet-18 (10 classes), train mode, batch 128 x 3x32x32\n")
    print(f"plain forward (torch.no_grad(), eval mode): median {f:.3f}s wall-clock, {fc:.3f}s CPU, of {repeats} "
          f"(wall-clock {', '.join(f'{v:.2f}' for v in times['forward'])})\n")
    print(f"Every row computes, for all {len(r.nodes)} nodes: NLC ± se from the input (train-mode BatchNorm: "
          "batch statistics, the batch as one input), mean, std, RMS, neuron bias, spread, and sign diversity "
          "and dead units of pre-activations.\n")
    print("| call | also | probes | median wall-clock | x forward | median CPU time | x forward |")
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("`measure(model, x, graph=graph)`", "eval-mode NLC with populated statistics (population probes in the main pass)",
         f"{r.probes} + {r.population_probes} eval", "all"),
        ("the same, population from a second pass", "eval-mode NLC with populated statistics (separate eval pass)",
         f"{r3.probes} + {r3.population_probes} eval", "separate_population"),
        ("`measure(model, x, graph=graph, population=False)`", "-", f"{r2.probes}", "no_population"),
        ("`measure(model, x)`", "population probes, and tracing the model (4 samples)", f"{r.probes} + {r.population_probes} eval", "with_trace"),
    ]
    for call, also, probes, key in rows:
        median, median_cpu = statistics.median(times[key]), statistics.median(cpu[key])
        print(f"| {call} | {also} | {probes} | {median:.2f}s | **{median / f:.2f}x** | {median_cpu:.2f}s | **{median_cpu / fc:.2f}x** |")
    print("\nper-run wall-clock (s): " + "; ".join(f"{k} {[round(v, 2) for v in times[k]]}" for k in times))
    print("per-run CPU (s): " + "; ".join(f"{k} {[round(v, 2) for v in cpu[k]]}" for k in cpu))
    print(f"output NLC: train-mode BN {r.output_nlc:.3f} ± {r.output_nlc_se:.3f}, "
          f"eval (populated) {r.output_nlc_population:.3f} ± {r.output_nlc_population_se:.3f}; "
          f"with the separate eval pass {r3.output_nlc_population:.3f} ± {r3.output_nlc_population_se:.3f}\n")


def gpt(layers: int = 6, seq: int = 64):
    """nanoGPT as fixtures/architectures/good_gpt_preln.py writes it, 6 layers of width 128."""
    spec = importlib.util.spec_from_file_location("good_gpt_preln", REPO / "fixtures" / "architectures" / "good_gpt_preln.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT(module.GPTConfig(block_size=seq, vocab_size=512, n_layer=layers, n_head=4, n_embd=128, dropout=0.1))


def shapes():
    """name -> (description, build() -> (model, input batch)); each seeded on its own."""
    g = torch.Generator().manual_seed(0)
    pictures = images(N, g)
    vectors = torch.randn(N, 784, generator=g)
    gpt_ids = torch.randint(0, 512, (N, 64), generator=g)
    lstm_ids = torch.randint(0, 1000, (N, 32), generator=g)

    def seeded(seed, build, x):
        def make():
            torch.manual_seed(seed)
            return build(), x
        return make

    return {
        "resnet18": ("CIFAR ResNet-18, 128 x 3x32x32", seeded(0, lambda: resnet18(10), pictures)),
        "thin-resnet": ("thin residual CNN: 6 blocks of 32 channels at 32x32, no downsampling, 128 x 3x32x32",
                        seeded(1, ThinResidualCNN, pictures)),
        "vgg-bn": ("VGG-style BN CNN (64,64,M,128,128,M,256,256,M), 128 x 3x32x32", seeded(2, vgg_bn, pictures)),
        "mlp20": ("ReLU MLP, depth 20, width 512, 128 x 784", seeded(3, lambda: mlp(20, 512, nn.ReLU, d_in=784), vectors)),
        "gpt": ("GPT (pre-LN), 6 layers, width 128, 128 x 64 token ids", seeded(4, gpt, gpt_ids)),
        "lstm-lm": ("LSTM LM, 2 layers of 256, vocabulary 1000, 128 x 32 token ids", seeded(5, LSTMLanguageModel, lstm_ids)),
        "mobilenetv2": ("MobileNetV2-style inverted residual blocks, 128 x 3x32x32", seeded(6, MobileNetV2Small, pictures)),
    }


def built(name: str):
    """The suite's shape ``name`` built fresh and traced beforehand, as archlint's engine
    does: (description, model, input batch, graph)."""
    description, build = shapes()[name]
    model, x = build()
    return description, model, x, trace(model, (x[:4],), name=name)


def suite(names: list[str], repeats: int) -> None:
    print("## Suite: measure() against a plain forward pass (no grad, eval mode), CPU, 1 thread, batch 128\n")
    rows = []
    for name in names:
        description, model, x, graph = built(name)
        forward = plain_forward(model, x)
        runs = {
            "all": lambda: measure(model, x, graph=graph),
            "output": lambda: measure(model, x, graph=graph, nodes=(), population=False),
        }
        forward()
        runs["all"]()  # warm-up (allocator, kernels)
        wall: dict[str, list[float]] = {"forward": [], **{k: [] for k in runs}}
        cpu: dict[str, list[float]] = {k: [] for k in wall}
        reports = {}
        for _ in range(repeats):
            for key, run in [("forward", forward)] + list(runs.items()):
                w, c, reports[key] = timed_both(run)
                wall[key].append(w)
                cpu[key].append(c)
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
        r = reports["all"]
        probes = f"{r.probes}" + (f" + {r.population_probes} eval" if r.population_probes is not None else "")
        row = (name, description, med, probes, reports["output"].probes, r)
        rows.append(row)
        f, fc = med["forward"]
        print(f"{name}: forward {f:.3f}s wall / {fc:.3f}s CPU; all {med['all'][0] / f:.2f}x / {med['all'][1] / fc:.2f}x; "
              f"output only {med['output'][0] / f:.2f}x / {med['output'][1] / fc:.2f}x "
              f"(per-run CPU s: " + "; ".join(f"{k} {[round(v, 2) for v in cpu[k]]}" for k in cpu) + ")", flush=True)
    print("\n| shape | nodes | forward: wall / CPU | all per-node statistics (probes) | x forward: wall / CPU "
          "| output NLC only (probes) | x forward: wall / CPU |")
    print("|---|---|---|---|---|---|---|")
    for name, description, med, probes, out_probes, r in rows:
        f, fc = med["forward"]
        print(f"| {description} | {len(r.nodes)} | {f:.3f}s / {fc:.3f}s | {med['all'][0]:.2f}s / {med['all'][1]:.2f}s ({probes}) "
              f"| **{med['all'][0] / f:.2f}x / {med['all'][1] / fc:.2f}x** | {med['output'][0]:.2f}s / {med['output'][1]:.2f}s "
              f"({out_probes}) | **{med['output'][0] / f:.2f}x / {med['output'][1] / fc:.2f}x** |")
    print()
    for name, description, med, probes, out_probes, r in rows:
        pop = (f", population {r.output_nlc_population:.3f} ± {r.output_nlc_population_se:.3f}"
               if r.output_nlc_population is not None else "")
        print(f"- {name}: output NLC {r.output_nlc:.3f} ± {r.output_nlc_se:.3f}{pop}; mode {r.mode}, dtype {r.dtype}"
              + (f"; notes: {'; '.join(r.notes)}" if r.notes else ""))


def exact_time_on_subset(model, x, chunk):
    """vmap(jacrev) per-sample Jacobians of SUBSET samples (jacrev over output chunks to
    bound memory), scaled to N samples: (wall-clock, CPU) seconds."""
    xs = x[:SUBSET]

    def run():
        with torch.no_grad():
            vmap(jacrev(lambda xi: model(xi.unsqueeze(0)).squeeze(0), chunk_size=chunk))(xs)

    run()  # warm-up
    wall, cpu, _ = timed_both(run)
    return wall * N / SUBSET, cpu * N / SUBSET


def part2(x) -> None:
    print("## Part 2: output NLC against the exact vmap(jacrev) method, ResNet-18 eval (populated statistics)\n")
    print("measure() with all per-node statistics, and with the output's only (`nodes=()`).\n")
    print("| outputs | exact NLC | measured NLC ± se | probes | exact: wall / CPU | measure(): wall / CPU | speed-up wall / CPU "
          "| measure(nodes=()): wall / CPU | speed-up wall / CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for classes in (10, 1000):
        torch.manual_seed(0)
        model = resnet18(classes)
        populate_bn(model, (x,), N)
        measure(model, x)  # warm-up
        ours = [timed_both(lambda: measure(model, x)) for _ in range(3)]
        ours_wall = statistics.median(t[0] for t in ours)
        ours_cpu = statistics.median(t[1] for t in ours)
        report = ours[-1][2]
        only = [timed_both(lambda: measure(model, x, nodes=())) for _ in range(3)]
        only_wall = statistics.median(t[0] for t in only)
        only_cpu = statistics.median(t[1] for t in only)
        assert only[-1][2].output_nlc == report.output_nlc  # the same probes, the same number
        if classes == 10:
            exact_runs = [timed_both(lambda: jacrev_output_nlc(model, x)) for _ in range(2)]
            exact_wall = statistics.median(t[0] for t in exact_runs)
            exact_cpu = statistics.median(t[1] for t in exact_runs)
            exact_text = f"{exact_runs[0][2]:.4f}"
            scaled_wall, scaled_cpu = exact_time_on_subset(model, x, chunk=None)
            notes.append(f"10 outputs: exact on all {N} samples (median of 2) {exact_wall:.1f}s wall / {exact_cpu:.1f}s CPU; "
                         f"timed on {SUBSET} samples and scaled x{N // SUBSET}: {scaled_wall:.1f}s / {scaled_cpu:.1f}s "
                         "(the scaling used for 1000 outputs, which it underestimates)")
        else:
            exact_wall, exact_cpu = exact_time_on_subset(model, x, chunk=100)
            exact_text = "not run (about 1 h)"
            notes.append(f"1000 outputs: exact timed on {SUBSET} samples (jacrev in chunks of 100 outputs), scaled x{N // SUBSET}")
        print(f"| {classes} | {exact_text} | {report.output_nlc:.4f} ± {report.output_nlc_se:.4f} | {report.probes} | "
              f"{exact_wall:.1f}s / {exact_cpu:.1f}s | {ours_wall:.2f}s / {ours_cpu:.2f}s | "
              f"**{exact_wall / ours_wall:.1f}x / {exact_cpu / ours_cpu:.1f}x** | {only_wall:.2f}s / {only_cpu:.2f}s | "
              f"**{exact_wall / only_wall:.1f}x / {exact_cpu / only_cpu:.1f}x** |")
    print()
    for n in notes:
        print(f"- {n}")


def profile(names: list[str]) -> None:
    """Where one output-only measurement's CPU time goes, per shape: the matrix products
    (the arithmetic a forward pass also does) against everything else, with the probes and
    passes it took. The floor of a forward-mode measurement is its passes' primal products
    plus one tangent product per probe."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    products = {"aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::_conv_depthwise2d",
                "aten::_slow_conv2d_forward", "aten::_mkldnn_rnn", "aten::_thnn_fused_lstm_cell"}
    print("CPU times are medians of 3 without the profiler; the products' share comes from one profiled run.\n")
    print("| shape | forward CPU | output only: x forward | probes | matrix products: share, x forward | the rest: x forward |")
    print("|---|---|---|---|---|---|")
    for name in names:
        description, model, x, graph = built(name)
        forward = plain_forward(model, x)

        def output_only():
            return measure(model, x, graph=graph, nodes=(), population=False)

        forward(), output_only()  # warm-up
        f = statistics.median(timed_both(forward)[1] for _ in range(3))
        m = statistics.median(timed_both(output_only)[1] for _ in range(3))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            report = output_only()
        events = prof.key_averages()
        share = sum(e.self_cpu_time_total for e in events if e.key in products) / sum(e.self_cpu_time_total for e in events)
        print(f"| {description} | {f:.3f}s | {m / f:.1f}x | {report.probes} | {share:.0%}, {share * m / f:.1f}x | "
              f"{(1 - share) * m / f:.1f}x |")


def alternated(model, x, graph, variants: dict, repeats: int) -> dict[tuple[str, str], float]:
    """CPU seconds (medians) of the output NLC and of all statistics under each variant (a
    function that switches it on), in one process and in alternation, the order reversed
    every round (whichever runs first in a round tends to be the slower)."""
    kinds = {"output": dict(nodes=(), population=False), "all": {}}
    times = {(variant, kind): [] for variant in variants for kind in kinds}
    for options in kinds.values():  # warm-up
        for switch in variants.values():
            switch()
            measure(model, x, graph=graph, **options)
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for kind, options in kinds.items():
            for variant in order:
                variants[variant]()
                times[variant, kind].append(timed_both(lambda: measure(model, x, graph=graph, **options))[1])
    return {k: statistics.median(v) for k, v in times.items()}


def own_rules(repeats: int) -> None:
    """archlint's own tangent rules for layer norm and softmax (the GPT) and LSTMs (the LSTM
    language model) against PyTorch's forward-mode rules (see ``alternated``)."""
    import torch.nn.functional as F

    import archlint.measure.overrides as overrides

    own = [("gpt", "_layer_norm", overrides._layer_norm, lambda x, shape, w, b, eps: F.layer_norm(x, shape, w, b, eps)),
           ("gpt", "_softmax", overrides._softmax, lambda x, dim: torch.softmax(x, dim)),
           ("lstm-lm", "_lstm", overrides._lstm, lambda args, kwargs: None)]  # None: PyTorch's rule
    print("| shape | rule | output only: own / PyTorch's (CPU s) | all statistics: own / PyTorch's (CPU s) |")
    print("|---|---|---|---|")
    for name, attr, ours, theirs in own:
        _, model, x, graph = built(name)
        med = alternated(model, x, graph, {"own": lambda: setattr(overrides, attr, ours),
                                           "pytorch": lambda: setattr(overrides, attr, theirs)}, repeats)
        setattr(overrides, attr, ours)
        print(f"| {name} | {attr.strip('_')} | {med['own', 'output']:.2f} / {med['pytorch', 'output']:.2f} "
              f"| {med['own', 'all']:.2f} / {med['pytorch', 'all']:.2f} |", flush=True)


def kept_rows(names: list[str], repeats: int) -> None:
    """Nodes that only rearrange their input's rows (views, transposes, dropout) taking its
    statistics (archlint.measure.runner._row_aliases) against computing their own, per shape
    that has such nodes (see ``alternated``)."""
    import archlint.measure.runner as runner

    aliases = runner._row_aliases
    print("| shape | such nodes / all nodes | output only: taken / computed (CPU s) | all statistics: taken / computed (CPU s) |")
    print("|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        if not aliases(graph):
            continue
        med = alternated(model, x, graph, {"taken": lambda: setattr(runner, "_row_aliases", aliases),
                                           "computed": lambda: setattr(runner, "_row_aliases", lambda g: {})}, repeats)
        runner._row_aliases = aliases
        print(f"| {name} | {len(aliases(graph))} / {len(graph)} | {med['taken', 'output']:.2f} / {med['computed', 'output']:.2f} "
              f"| {med['taken', 'all']:.2f} / {med['computed', 'all']:.2f} |", flush=True)


def replayed(names: list[str], repeats: int) -> None:
    """The layers' values kept from the main pass and replayed in the passes that follow it
    (archlint.measure.replay) against computing them again, per shape (see ``alternated``)."""
    import archlint.measure.plan as plan

    replayable = plan._replayable
    print("| shape | output only: replayed / computed (CPU s) | all statistics: replayed / computed (CPU s) |")
    print("|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        med = alternated(model, x, graph, {"replayed": lambda: setattr(plan, "_replayable", replayable),
                                           "computed": lambda: setattr(plan, "_replayable", lambda *a: False)}, repeats)
        plan._replayable = replayable
        print(f"| {name} | {med['replayed', 'output']:.3f} / {med['computed', 'output']:.3f} "
              f"| {med['replayed', 'all']:.3f} / {med['computed', 'all']:.3f} |", flush=True)


def parameter_copies(names: list[str], repeats: int) -> None:
    """Each parameter copied before the first call that could write it (archlint.state's
    ParameterGuard: for these shapes, none) against every parameter copied before the
    measurement and back after it, per shape (see ``alternated``)."""
    import archlint.measure.model as measure_model
    from archlint.state import preserved_state

    @contextmanager
    def up_front(model, copy_parameters_on_write=False):
        with preserved_state(model) as guard:
            yield guard

    print("| shape | parameters (MB) | output only: on write / up front (CPU s) | all statistics: on write / up front (CPU s) |")
    print("|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        med = alternated(model, x, graph, {"on write": lambda: setattr(measure_model, "preserved_state", preserved_state),
                                           "up front": lambda: setattr(measure_model, "preserved_state", up_front)}, repeats)
        measure_model.preserved_state = preserved_state
        print(f"| {name} | {size:.1f} | {med['on write', 'output']:.3f} / {med['up front', 'output']:.3f} "
              f"| {med['on write', 'all']:.3f} / {med['up front', 'all']:.3f} |", flush=True)


def row_chunks(names: list[str], repeats: int) -> None:
    """Each node's row distances and sign counts taken a cache-sized chunk of rows at a time
    (archlint.measure.runner.ROW_CHUNK_BYTES, a CPU's way) against the whole node at once (a
    GPU's way), per shape (see ``alternated``)."""
    import archlint.measure.runner as runner

    chunk = runner.ROW_CHUNK_BYTES
    # One node first: a MobileNetV2 block's expanded map (128 x 96 x 32 x 32, 50 MB), four
    # of them in turn so that each is read from memory, as a node written a while ago is.
    nodes = [torch.randn(N, 96, 32, 32) for _ in range(4)]
    node_times = {}
    for label, size in (("chunks", chunk), ("whole", 1 << 62)):
        runner.ROW_CHUNK_BYTES = size
        node_times[label] = statistics.median(
            timed_both(lambda: runner._node_stats(nodes[i % 4], None, 0, N, signs=True, bn_input=False))[1]
            for i in range(12))
    runner.ROW_CHUNK_BYTES = chunk
    print(f"one pre-activation node of {N} x 96 x 32 x 32 (distances and sign counts; CPU ms, median of 12): "
          f"chunks {1e3 * node_times['chunks']:.1f} / whole node {1e3 * node_times['whole']:.1f}\n")
    print("| shape | output only: chunks / whole node (CPU s) | all statistics: chunks / whole node (CPU s) |")
    print("|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        med = alternated(model, x, graph, {"chunks": lambda: setattr(runner, "ROW_CHUNK_BYTES", chunk),
                                           "whole": lambda: setattr(runner, "ROW_CHUNK_BYTES", 1 << 62)}, repeats)
        runner.ROW_CHUNK_BYTES = chunk
        print(f"| {name} | {med['chunks', 'output']:.3f} / {med['whole', 'output']:.3f} "
              f"| {med['chunks', 'all']:.3f} / {med['whole', 'all']:.3f} |", flush=True)


def paired_population(names: list[str], repeats: int) -> None:
    """A deflated output's riding population value from the batch's exact part, its probes
    paired with the batch probes (archlint.measure.deflate.project_paired), against its own
    direction and backward pass (deflate.PAIRED off), per shape (see ``alternated``), with
    the output's population NLC of each."""
    import archlint.measure.deflate as deflate

    print("| shape | all statistics: paired / own pass (CPU s) | population NLC: paired / own pass |")
    print("|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        values = {}
        for flag in (True, False):
            deflate.PAIRED = flag
            report = measure(model, x, graph=graph)
            values[flag] = f"{report.output_nlc_population:.4f} ± {report.output_nlc_population_se:.4f}"
        med = alternated(model, x, graph, {"paired": lambda: setattr(deflate, "PAIRED", True),
                                           "own": lambda: setattr(deflate, "PAIRED", False)}, repeats)
        deflate.PAIRED = True
        print(f"| {name} | {med['paired', 'all']:.3f} / {med['own', 'all']:.3f} | {values[True]} / {values[False]} |",
              flush=True)


def node_statistics(names: list[str], repeats: int) -> None:
    """Each node's mean, row distances and sign counts by matrix-vector products
    (archlint.measure.runner._node_stats) against reductions alone, the way before them
    (``_node_stats_by_reductions``), per shape (see ``alternated``), with the largest
    relative difference between the two reports' node values."""
    import dataclasses

    import archlint.measure.runner as runner

    products = runner._node_stats

    def switch(stats):
        return lambda: setattr(runner, "_node_stats", stats)

    print("| shape | output only: products / reductions (CPU s) | all statistics: products / reductions (CPU s) "
          "| largest relative difference of a node value |")
    print("|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        reports = {}
        for label, stats in (("products", products), ("reductions", _node_stats_by_reductions)):
            runner._node_stats = stats
            reports[label] = measure(model, x, graph=graph)
        med = alternated(model, x, graph, {"products": switch(products), "reductions": switch(_node_stats_by_reductions)},
                         repeats)
        runner._node_stats = products
        worst = 0.0
        for node, ours in reports["products"].nodes.items():
            theirs = dataclasses.asdict(reports["reductions"].nodes[node])
            for key, value in dataclasses.asdict(ours).items():
                if not (isinstance(value, float) and isinstance(theirs[key], float)):
                    continue
                # Relative to the node's scale: a mean near zero differs in its last digits.
                scale = abs(theirs["rms"] or 0.0) if key == "mean" else abs(theirs[key])
                if scale > 0:
                    worst = max(worst, abs(value - theirs[key]) / scale)
        print(f"| {name} | {med['products', 'output']:.3f} / {med['reductions', 'output']:.3f} "
              f"| {med['products', 'all']:.3f} / {med['reductions', 'all']:.3f} | {worst:.1e} |", flush=True)


def _node_stats_by_reductions(p, tangent, bd, n, signs, bn_input):
    """archlint.measure.runner._node_stats as of 4afc491, before the matrix-vector products: the
    column mean by a reduction, every row centred, signs counted by summing a boolean mask."""
    import archlint.measure.runner as runner

    flat = p.movedim(bd, 0).reshape(n, -1)
    m = flat.mean(0)
    rows = n if flat.device.type != "cpu" else max(1, runner.ROW_CHUNK_BYTES // max(1, flat.shape[1] * flat.element_size()))
    distances, pos = [], None
    for lo in range(0, n, rows):
        part = flat[lo:lo + rows]
        distances.append(torch.linalg.vector_norm(part - m, dim=1))
        if signs:
            count = (part > 0).sum(0, dtype=torch.int32)
            pos = count if pos is None else pos + count
    stats = {"m": m, "b": torch.cat(distances).square()}
    stats.update(runner._tangent_term(tangent, bd))
    if signs:
        stats["pos"] = pos
    if bn_input and bd == 0 and p.dim() >= 2:
        mean, var = runner.batch_statistics(p)
        count = p.numel() // p.shape[1]
        stats["chan_mean"], stats["chan_var"] = mean, var * (count / max(count - 1, 1))
    return stats


def batch_norm_statistics(names: list[str], repeats: int) -> None:
    """Train-mode batch norm's statistics by row reductions (archlint.measure.overrides.
    _row_statistics) against PyTorch's kernel, native_batch_norm, which computes them (and
    the value) wherever the row reductions give None (see ``alternated``)."""
    import archlint.measure.overrides as overrides

    own = overrides._row_statistics

    def switch(rows):
        return lambda: setattr(overrides, "_row_statistics", rows)

    print("| shape | output only: own / PyTorch's (CPU s) | all statistics: own / PyTorch's (CPU s) |")
    print("|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        med = alternated(model, x, graph, {"own": switch(own), "pytorch": switch(lambda x: None)}, repeats)
        switch(own)()
        print(f"| {name} | {med['own', 'output']:.3f} / {med['pytorch', 'output']:.3f} "
              f"| {med['own', 'all']:.3f} / {med['pytorch', 'all']:.3f} |", flush=True)


def heap_top(names: list[str], repeats: int) -> None:
    """The heap's top kept by archlint's processes (archlint.worker.keep_freed_memory) against
    given back once 256 MiB of it are free (as before), per shape (see ``alternated``), with
    the page faults of one measurement of all statistics after one of its kind."""
    import ctypes
    import resource

    import archlint.worker as worker

    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    variants = {"kept": lambda: mallopt(worker._M_TRIM_THRESHOLD, worker._NEVER),
                "given back": lambda: mallopt(worker._M_TRIM_THRESHOLD, 256 << 20)}
    print("| shape | output only: kept / given back (CPU s) | all statistics: kept / given back (CPU s) "
          "| page faults of all statistics: kept / given back |")
    print("|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        med = alternated(model, x, graph, variants, repeats)
        faults = {}
        for variant, switch in variants.items():
            switch()
            measure(model, x, graph=graph)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            measure(model, x, graph=graph)
            faults[variant] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        keep_freed_memory()
        print(f"| {name} | {med['kept', 'output']:.3f} / {med['given back', 'output']:.3f} "
              f"| {med['kept', 'all']:.3f} / {med['given back', 'all']:.3f} "
              f"| {faults['kept']} / {faults['given back']} |", flush=True)


def reverse_against_forward(model, x, run, repeats: int) -> tuple[dict[str, float], dict]:
    """``run()`` (a measurement) with reverse-mode probes for the output
    (measure.cotangents.ENABLED) and with forward-mode ones, in one process and in
    alternation (the order reversed every round), beside a plain forward pass: CPU-time
    medians ("plain", "reverse", "forward") and each variant's last report."""
    from archlint.measure import cotangents

    variants = {"reverse": True, "forward": False}
    forward = plain_forward(model, x)
    times: dict[str, list[float]] = {k: [] for k in ("plain", *variants)}
    reports = {}
    for enabled in variants.values():  # warm-up
        cotangents.ENABLED = enabled
        run()
    forward()
    try:
        for r in range(repeats):
            for variant in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                cotangents.ENABLED = variants[variant]
                _, cpu, reports[variant] = timed_both(run)
                times[variant].append(cpu)
            times["plain"].append(timed_both(forward)[1])
    finally:
        cotangents.ENABLED = True
    return {k: statistics.median(v) for k, v in times.items()}, reports


def cotangent_probes(names: list[str], repeats: int) -> None:
    """The output NLC alone (no population value) by reverse-mode probes against forward-mode
    probes (see reverse_against_forward), CPU seconds and multiples of a plain forward pass
    (medians), with the probes and the value each took."""
    print("| shape | forward pass (CPU s) | reverse-mode: x forward (probes) | forward-mode: x forward (probes) "
          "| output NLC: reverse / forward mode |")
    print("|---|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        med, reports = reverse_against_forward(
            model, x, lambda: measure(model, x, graph=graph, nodes=(), population=False), repeats)
        f = med["plain"]
        print(f"| {name} | {f:.3f} | {med['reverse'] / f:.2f}x ({reports['reverse'].probes}) "
              f"| {med['forward'] / f:.2f}x ({reports['forward'].probes}) "
              f"| {reports['reverse'].output_nlc:.3f} / {reports['forward'].output_nlc:.3f} |", flush=True)


def screening(names: list[str], repeats: int) -> None:
    """archlint check's screening measurement of a model without static findings (one batch,
    no population value, the nodes the rules' find reads, the output's NLC alone: engine.
    measure_graph) by reverse-mode probes, against the same nodes by forward-mode probes (as
    before 2026-12-07's fifth session: every screened node's NLC too; see
    reverse_against_forward). CPU-time medians as multiples of a plain forward pass, with the
    probes each took."""
    from archlint import patterns

    print("| shape | screened nodes | forward pass (CPU s) | reverse mode: x forward (probes) "
          "| forward mode: x forward (probes) |")
    print("|---|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        nodes = patterns.screened_nodes(graph)
        med, reports = reverse_against_forward(
            model, x, lambda: measure(model, x, graph=graph, samples=N, population=False, nodes=nodes,
                                      nlc_nodes=[graph.output]), repeats)
        f = med["plain"]
        print(f"| {name} | {len(nodes)} of {len(graph.nodes)} | {f:.3f} | {med['reverse'] / f:.2f}x ({reports['reverse'].probes}) "
              f"| {med['forward'] / f:.2f}x ({reports['forward'].probes}) |", flush=True)


def within_budget(names: list[str]) -> None:
    """measure() with a time budget of 0.4, 0.6 and 0.8 times what the full measurement took
    in the same process: the wall time it took against the budget (the budget is met on an
    estimate: forward passes timed first, times what each route costs in forward passes,
    measure.budget), and what it gave up to fit."""
    import time

    print("| shape | full measurement (s) | budget (s) | took (s) | took / budget | probes | given up |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        _, model, x, graph = built(name)
        measure(model, x, graph=graph)  # warm-up
        start = time.perf_counter()
        measure(model, x, graph=graph)
        full = time.perf_counter() - start
        for share in (0.4, 0.6, 0.8):
            budget = round(full * share, 2)
            start = time.perf_counter()
            try:
                report = measure(model, x, graph=graph, budget=budget)
            except MeasureError as exc:
                print(f"| {name} | {full:.2f} | {budget:g} | - | - | - | not measured: {exc} |", flush=True)
                continue
            took = time.perf_counter() - start
            given_up = report.budget_note.split(" to fit ")[0] if report.budget_note else "nothing"
            pop = f" + {report.population_probes}" if report.population_probes is not None else ""
            print(f"| {name} | {full:.2f} | {budget:g} | {took:.2f} | {took / budget:.2f} | {report.probes}{pop} | {given_up} |",
                  flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("suite", "1", "2", "profile", "rules", "rows", "replay", "state", "chunks", "heap",
                                           "cotangents", "screening", "batchnorm", "budget", "statistics", "paired"),
                        default="suite",
                        help="suite (default): every shape; 1, 2: the ResNet-18 studies; profile: where the "
                             "output-only measurement's time goes, per shape; rules: archlint's layer-norm, "
                             "softmax and LSTM tangent rules against PyTorch's; rows: nodes that keep their input's rows "
                             "taking its statistics against computing their own; replay: the layers' values of the main "
                             "pass replayed in the passes that follow against computed again; state: parameters copied "
                             "on write against copied up front; chunks: node statistics a chunk of rows at a time "
                             "against the whole node at once; heap: the heap's top kept against given back; cotangents: the "
                             "output alone by reverse-mode probes against forward-mode ones; screening: archlint check's screening "
                             "measurement the same two ways; batchnorm: archlint's batch-norm statistics against PyTorch's kernel; "
                             "budget: the time a measurement takes against its budget; statistics: node statistics by "
                             "matrix-vector products against reductions alone; paired: a deflated output's population part from the "
                             "batch's against its own backward pass")
    parser.add_argument("--shapes", default=",".join(shapes()), help="the suite's shapes, comma-separated")
    parser.add_argument("--repeats", type=int, default=None, help=f"default: {SUITE_REPEATS} (suite), {REPEATS} (part 1)")
    parser.add_argument("--allocator", choices=("archlint", "default"), default="archlint")
    args = parser.parse_args()
    if args.allocator == "archlint":
        keep_freed_memory()
    print(f"allocator: {args.allocator}\n")
    if args.part in ("suite", "profile", "rows", "replay", "state", "chunks", "heap", "cotangents", "screening", "batchnorm",
                     "budget", "statistics", "paired"):
        names = args.shapes.split(",")
        unknown = sorted(set(names) - set(shapes()))
        if unknown:
            parser.error(f"unknown shapes: {', '.join(unknown)} (known: {', '.join(shapes())})")
        if args.part == "profile":
            profile(names)
        elif args.part == "rows":
            kept_rows(names, args.repeats or REPEATS)
        elif args.part == "replay":
            replayed(names, args.repeats or REPEATS)
        elif args.part == "state":
            parameter_copies(names, args.repeats or REPEATS)
        elif args.part == "chunks":
            row_chunks(names, args.repeats or REPEATS)
        elif args.part == "heap":
            heap_top(names, args.repeats or REPEATS)
        elif args.part == "cotangents":
            cotangent_probes(names, args.repeats or REPEATS)
        elif args.part == "screening":
            screening(names, args.repeats or REPEATS)
        elif args.part == "batchnorm":
            batch_norm_statistics(names, args.repeats or REPEATS)
        elif args.part == "budget":
            within_budget(names)
        elif args.part == "statistics":
            node_statistics(names, args.repeats or REPEATS)
        elif args.part == "paired":
            paired_population(names, args.repeats or REPEATS)
        else:
            suite(names, args.repeats or SUITE_REPEATS)
        return 0
    if args.part == "rules":
        own_rules(args.repeats or REPEATS)
        return 0
    x = images(N, torch.Generator().manual_seed(0))
    if args.part == "1":
        part1(x, args.repeats or REPEATS)
    else:
        part2(x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
