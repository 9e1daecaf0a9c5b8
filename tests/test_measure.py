"""archlint.measure: the measured NLC against exact references, batch-dependent BatchNorm,
statuses, state preservation and determinism."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from archlint.measure import NodeStats, Report, load_data, measure
from archlint.trace import trace

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------
# Helpers


def mlp(depth, width, act=nn.ReLU, sigma_w2=2.0, batchnorm=False, d_in=16, d_out=10, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    fan_in = d_in
    for _ in range(depth):
        lin = nn.Linear(fan_in, width, bias=bias)
        nn.init.normal_(lin.weight, 0.0, (sigma_w2 / fan_in) ** 0.5)
        if bias:
            nn.init.zeros_(lin.bias)
        layers += [lin] + ([nn.BatchNorm1d(width)] if batchnorm else []) + [act()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, d_out, bias=bias))


def gaussian(n, *shape, seed=1):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed))


def exact_nlc(f, x, batched=True, jacobian=jacrev):
    """sqrt(mean_n tr(J_n Ĉ J_n^T) / tr Cov f): per-sample Jacobians in float64, Ĉ the
    (biased) sample covariance of x. f maps one sample to its output. batched=False: one
    sample at a time, for models that vmap cannot run (control flow on values, mutation).
    ``jacobian``: torch.func.jacfwd for outputs much wider than their inputs."""
    x = x.double()
    n = x.shape[0]
    with torch.no_grad():
        if batched:
            J = vmap(jacobian(f))(x)
            out = vmap(f)(x)
        else:
            J = torch.stack([torch.autograd.functional.jacobian(f, xi) for xi in x])
            out = torch.stack([f(xi) for xi in x])
        J = J.reshape(n, -1, x[0].numel())
        U = (x - x.mean(0)).reshape(n, -1)
        numerator = (J @ U.T).square().sum() / n**2
    return math.sqrt(float(numerator / out.reshape(n, -1).var(0, correction=0).sum()))


def per_sample(model):
    """One sample through a float64 copy of ``model`` in eval mode."""
    model = copy.deepcopy(model).double().eval()
    return lambda xi: model(xi.unsqueeze(0)).squeeze(0)


def populate(model, x, batch_size):
    """Running statistics as momentum=None leaves them after one train pass per batch."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for lo in range(0, x.shape[0] - batch_size + 1, batch_size):
            model(x[lo:lo + batch_size])
    return model.eval()


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [(getattr(m, "momentum", None), getattr(m, "track_running_stats", None)) for m in model.modules()],
        [(p.device, p.dtype) for p in model.parameters()],
    )


def assert_unchanged(model, before):
    state, training, grads, attrs, placement = snapshot(model)
    assert state.keys() == before[0].keys()
    for k in state:
        assert state[k].dtype == before[0][k].dtype and torch.equal(state[k], before[0][k]), k
    assert training == before[1]
    assert grads == before[2]
    assert attrs == before[3]
    assert placement == before[4]


# --------------------------------------------------------------------------------------
# Accuracy against exact references


@pytest.mark.parametrize(
    "name, model",
    [
        ("tanh-hot", mlp(6, 64, nn.Tanh, sigma_w2=4.0)),
        ("relu", mlp(8, 64, nn.ReLU)),
        ("gelu", mlp(4, 64, nn.GELU)),
    ],
)
def test_output_nlc_matches_exact_reference(name, model):
    x = gaussian(128, 16)
    report = measure(model, x)
    exact = exact_nlc(per_sample(model), x)
    assert report.mode == "eval" and report.status == "ok"
    assert report.output_nlc == pytest.approx(exact, rel=0.05), name


class CausalSoftmax(nn.Module):
    """Attention's masked softmax: -inf above the diagonal, Tensor.softmax over the last dim."""

    def forward(self, scores):
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1)


@pytest.mark.parametrize(
    "name, layer, shape",
    [
        ("linear", nn.Linear(12, 7), (6, 12)),
        ("conv2d", nn.Conv2d(3, 5, 3, padding=1), (6, 3, 8, 8)),
        ("batch norm, batch statistics", nn.BatchNorm2d(3), (6, 3, 5, 5)),
        ("batch norm, running statistics", nn.BatchNorm2d(3).eval(), (6, 3, 5, 5)),
        ("layer norm", nn.LayerNorm(9), (6, 4, 9)),
        ("layer norm over two dims, no affine", nn.LayerNorm((4, 9), elementwise_affine=False), (6, 4, 9)),
        ("softmax", nn.Softmax(dim=-1), (6, 4, 9)),
        ("softmax over dim 1", nn.Softmax(dim=1), (6, 4, 9)),
        ("causal softmax (Tensor.softmax, -inf)", CausalSoftmax(), (6, 4, 9, 9)),
    ],
)
def test_lean_tangent_rules_give_pytorchs_own_tangents(name, layer, shape):
    """The measurement's own tangent rules (measure.overrides) against PyTorch's forward-mode
    rules, for several probes at once as the measurement runs them."""
    from torch.func import jvp

    from archlint.measure.overrides import _MeasureMode

    torch.manual_seed(0)
    for p in layer.parameters():
        nn.init.normal_(p)  # weights and biases away from 1 and 0, so a dropped factor shows
    if isinstance(layer, nn.BatchNorm2d) and not layer.training:
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    if isinstance(layer, nn.BatchNorm2d) and layer.training:
        layer.track_running_stats = False  # as the measurement configures it: no buffer updates
    x, directions = torch.randn(shape), torch.randn((3,) + shape)

    def tangents():
        return vmap(lambda d: jvp(layer, (x,), (d,))[1])(directions)

    with torch.no_grad():
        reference = tangents()
        with _MeasureMode():
            lean = tangents()
    assert torch.allclose(lean, reference, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("options", [
    {"num_layers": 2, "batch_first": True},
    {"num_layers": 1, "bidirectional": True},
    {"num_layers": 2, "bias": False, "bidirectional": True, "batch_first": True},
])
def test_lean_lstm_rule_gives_pytorchs_own_tangents(options):
    """The LSTM's own rule (values and tangents step by step) against PyTorch's forward-mode
    rule on its step-by-step kernel: outputs and final states, with a given initial state, for
    several probes at once."""
    from torch.func import jvp

    from archlint.measure.overrides import _MeasureMode

    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, **options).eval()
    layers = options["num_layers"] * (2 if options.get("bidirectional") else 1)
    x = torch.randn((5, 7, 8) if options.get("batch_first") else (7, 5, 8))
    state = (torch.randn(layers, 5, 16), torch.randn(layers, 5, 16))
    directions = torch.randn((3,) + x.shape)

    def run(inputs):
        out, (h, c) = lstm(inputs, state)
        return out, h, c

    def values_and_tangents():
        return vmap(lambda d: jvp(run, (x,), (d,)))(directions)

    with torch.no_grad():
        with torch.backends.mkldnn.flags(enabled=False):
            (ref_values, ref_tangents) = values_and_tangents()
        with _MeasureMode():
            (values, tangents) = values_and_tangents()
    for got, want in zip(values + tangents, ref_values + ref_tangents):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cnn_output_and_intermediate_nlc_match_exact_reference():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.Tanh(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = gaussian(128, 3, 8, 8)
    report = measure(net, x)
    assert report.output_nlc == pytest.approx(exact_nlc(per_sample(net), x), rel=0.05)
    # The NLC from the input to the tanh (an intermediate node) is that of the prefix net[:5].
    assert report.nodes["_4"].nlc == pytest.approx(exact_nlc(per_sample(net[:5]), x), rel=0.05)


@pytest.mark.parametrize("rows", [64, 300])
def test_affine_prefix_has_nlc_exactly_one(rows):
    # Each probe's directions (the batch's centred samples, rotated among themselves, in
    # blocks of at most ROTATION_ROWS for a large batch) have exactly the sample covariance,
    # so an affine map comes out at 1 up to rounding, not just on average.
    from archlint.measure.runner import ROTATION_ROWS

    assert rows < ROTATION_ROWS or rows > 2 * ROTATION_ROWS  # one block, and several
    report = measure(mlp(2, 32, nn.Tanh), gaussian(rows, 16), batch_size=rows)
    assert report.nodes["_0"].nlc == pytest.approx(1.0, abs=1e-5)
    assert report.nodes["_1"].nlc > 1.0


def test_rotated_directions_keep_the_sample_covariance_and_tame_heavy_tails():
    """A probe's directions are the batch's centred samples rotated among themselves: their
    covariance is exactly the sample's, and a few outlying samples no longer make one
    probe's numerator heavy-tailed."""
    from archlint.measure.runner import _mixed, _random_rotation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 20, generator=g)
    x[:3, 0] *= 40  # three samples far out along the direction the Jacobians see
    centred = x - x.mean(0)
    rotated = _mixed(centred, _random_rotation(128, g))
    assert torch.allclose(rotated.T @ rotated, centred.T @ centred, rtol=1e-4, atol=1e-3)

    # Half the rows' Jacobians see the first input coordinate, half see nothing: one
    # probe's numerator is mean_i (J_i . u_i)^2, with u_i the direction of row i.
    sees = (torch.arange(128) % 2 == 0).float()

    def one_probe_numerators(rotate: bool) -> torch.Tensor:
        values = []
        for _ in range(200):
            directions = centred[torch.randperm(128, generator=g)]
            if rotate:
                directions = _mixed(directions, _random_rotation(128, g))
            values.append((sees * directions[:, 0].square()).mean())
        return torch.stack(values)

    single, mixed = one_probe_numerators(False), one_probe_numerators(True)
    exact = 0.5 * centred[:, 0].square().mean()
    for values in (single, mixed):  # the same expectation: tr(J C J^T)
        assert float(values.mean()) == pytest.approx(float(exact), rel=0.25)
    relative_spread = [float(v.std() / v.mean()) for v in (single, mixed)]
    assert relative_spread[1] < relative_spread[0] / 3, relative_spread


def test_standard_error_matches_spread_over_independent_samples():
    model = mlp(4, 64, nn.Tanh, sigma_w2=3.0)
    values, ses = [], []
    for seed in range(12):
        report = measure(model, gaussian(128, 16, seed=100 + seed), seed=seed)
        values.append(report.output_nlc)
        ses.append(report.output_nlc_se)
    spread = torch.tensor(values).std().item()
    mean_se = sum(ses) / len(ses)
    # 12 repeats estimate the spread within about ±25%; the delta-method SE is an
    # approximation, so allow a factor 2 either way.
    assert 0.5 < spread / mean_se < 2.0, (spread, mean_se)


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 3 * 50 * 4])
def test_node_statistics_taken_a_chunk_of_rows_at_a_time_are_those_of_the_whole_node(monkeypatch, chunk_bytes):
    """The per-row distances from the mean and the per-unit counts of positive values, taken
    in one chunk and in chunks of 3 rows (the last one partial), against float64 sums."""
    from archlint.measure import runner

    monkeypatch.setattr(runner, "ROW_CHUNK_BYTES", chunk_bytes)
    p = torch.randn(5, 10, 10, generator=torch.Generator().manual_seed(0)) * 2 + 0.5  # 10 rows on dim 1
    tangent = torch.randn(5, 10, 10)  # one probe's, as each call under vmap sees it
    stats = runner._node_stats(p, tangent, 1, 10, signs=True, bn_input=False)
    rows = p.movedim(1, 0).reshape(10, -1).double()
    assert torch.allclose(stats["m"].double(), rows.mean(0), rtol=0, atol=1e-6)
    assert torch.allclose(stats["b"].double(), (rows - rows.mean(0)).square().sum(1), rtol=1e-5, atol=0)
    assert torch.equal(stats["pos"], (rows > 0).sum(0, dtype=torch.int32))
    assert torch.allclose(stats["a"].double(), tangent.movedim(1, 0).reshape(10, -1).double().square().sum(1), rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_row_distances_keep_float32_precision_when_the_mean_dwarfs_the_spread(offset):
    """Each row's squared distance from the mean comes from ||x||^2 - 2 x.m + ||m||^2 where
    that cannot cancel; with a mean a thousand times the spread (neuron bias near 1) it would
    lose every digit, so those rows are centred first. Both against float64."""
    from archlint.measure import runner

    g = torch.Generator().manual_seed(1)
    p = torch.randn(64, 300, generator=g) + offset * torch.rand(300, generator=g)
    stats = runner._node_stats(p, None, 0, 64, signs=False, bn_input=False)
    rows = p.double()
    assert torch.allclose(stats["b"].double(), (rows - rows.mean(0)).square().sum(1), rtol=1e-4, atol=0)


def test_segment_nlc_matches_exact_reference_of_the_sub_network():
    model = mlp(6, 64, nn.Tanh, sigma_w2=4.0)
    x = gaussian(128, 16)
    report = measure(model, x, segments=[("_3", "_9")])
    seg = report.segments[("_3", "_9")]
    # The sub-network model[4:10] on the values the model produces at node _3 (= model[:4]).
    with torch.no_grad():
        h = model[:4](x)
    assert seg.status == "ok"
    assert seg.nlc == pytest.approx(exact_nlc(per_sample(model[4:10]), h), rel=0.05)
    # A block's own NLC is smaller than the NLC from the input through it.
    assert seg.nlc < report.nodes["_9"].nlc


def test_only_the_nodes_asked_for_are_measured_with_the_same_numbers():
    model = mlp(4, 32, nn.Tanh, sigma_w2=3.0, batchnorm=True)
    x = gaussian(128, 16)
    full = measure(model, x)
    inner = [name for name, s in full.nodes.items() if s.kind == "activation"][1]
    some = measure(model, x, nodes=[inner])
    assert set(some.nodes) == {inner, full.output}
    for name in some.nodes:
        assert some.nodes[name] == full.nodes[name]
    assert set(measure(model, x, nodes=()).nodes) == {full.output}
    with pytest.raises(ValueError, match="not nodes of the graph: nope"):
        measure(model, x, nodes=["nope"])


def test_segment_validation():
    model = mlp(2, 8)
    with pytest.raises(ValueError, match="not in the graph"):
        measure(model, gaussian(16, 16), segments=[("_0", "nope")])
    with pytest.raises(ValueError, match="does not depend"):
        measure(model, gaussian(16, 16), segments=[("_3", "_0")])


# --------------------------------------------------------------------------------------
# BatchNorm


def test_train_mode_batchnorm_nlc_rises_as_the_batch_shrinks_and_population_is_exact():
    model = mlp(10, 128, nn.ReLU, sigma_w2=1.0, batchnorm=True)
    x = gaussian(256, 16)
    small = measure(model, x, batch_size=8)
    large = measure(model, x, batch_size=128, population_probes=4)
    assert small.mode == large.mode == "train-bn"
    assert small.samples == 256 and small.batch_size == 8
    # Digest §1.5 (width 256): 18.6 at B=8 against 7.3 at B=128.
    assert small.output_nlc > 2 * large.output_nlc
    assert large.output_nlc > large.output_nlc_population
    # The population value is the NLC of the eval-mode model whose statistics were
    # populated from the same two batches of 128 (momentum=None).
    exact = exact_nlc(per_sample(populate(model, x, 128)), x)
    pop, se = large.output_nlc_population, large.output_nlc_population_se
    # se covers sampling and probes; against an exact value on the same sample only the
    # probe noise remains (about 1% with four probes), so both bounds are generous.
    assert abs(pop - exact) < min(3 * se, 0.05 * exact), (pop, se, exact)


class ConvBN(nn.Module):
    """Conv-BN-ReLU x3 on 8x8 images: every BatchNorm sees batch x 64 values per channel."""

    def __init__(self):
        super().__init__()
        chans = [3, 16, 16, 16]
        self.body = nn.Sequential(*[
            layer for i in range(3)
            for layer in (nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]), nn.ReLU())
        ])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def test_population_of_one_large_batch_rides_along_in_the_main_pass(monkeypatch):
    """One batch with many values per channel: the population probes are computed in the
    main pass (no second full pass), and still match the eval-mode exact reference."""
    import archlint.measure as measure_mod
    from archlint.measure import plan, runner

    torch.manual_seed(0)
    model = ConvBN()
    x = gaussian(64, 3, 8, 8)
    passes = []
    run_pass = runner._Runner.run_pass
    monkeypatch.setattr(runner._Runner, "run_pass", lambda self, *a, **k: passes.append(k.get("eval_from")) or run_pass(self, *a, **k))
    report = measure(model, x, batch_size=64, population_probes=4)
    assert report.mode == "train-bn" and report.population_probes >= 4
    assert passes[0] == measure_mod.PROBES  # the population probes follow the batch ones
    assert len(passes) <= 2  # the main pass, and at most one adding probes
    exact = exact_nlc(per_sample(populate(model, x, 64)), x)
    pop, se = report.output_nlc_population, report.output_nlc_population_se
    assert abs(pop - exact) < min(3 * se, 0.05 * exact), (pop, se, exact)
    # The batch value is a different function's: measured beside it, not copied.
    assert report.output_nlc != pop
    # Every node got its population value.
    assert all(s.nlc_population is not None for s in report.nodes.values() if s.status == "ok")

    # Segments too; and the separate eval-mode pass (populated, unbiased variance) agrees.
    seg = ("body_2", "body_8")
    fused = measure(model, x, batch_size=64, population_probes=4, segments=[seg])
    monkeypatch.setattr(plan, "_fusable", lambda *args: False)
    separate = measure(model, x, batch_size=64, population_probes=4, segments=[seg])
    for a, b in [(fused.output_stats, separate.output_stats), (fused.segments[seg], separate.segments[seg])]:
        assert a.status_population == b.status_population == "ok"
        assert abs(a.nlc_population - b.nlc_population) < 3 * math.hypot(a.nlc_population_se, b.nlc_population_se)
        assert a.nlc == pytest.approx(b.nlc, rel=1e-4)  # the batch values do not depend on it


def test_eval_mode_batchnorm_with_fresh_statistics_is_populated_first():
    model = mlp(6, 64, nn.ReLU, sigma_w2=1.0, batchnorm=True).eval()
    x = gaussian(128, 16)
    report = measure(model, x)
    assert report.mode == "eval"
    assert any("fresh running statistics" in n for n in report.notes)
    exact_populated = exact_nlc(per_sample(populate(model, x, 128)), x)
    exact_fresh = exact_nlc(per_sample(model), x)
    assert report.output_nlc == pytest.approx(exact_populated, rel=0.05)
    assert abs(exact_fresh / exact_populated - 1) > 0.1  # the check would notice the difference


def test_population_is_absent_without_train_mode_batchnorm():
    report = measure(mlp(3, 32), gaussian(64, 16))
    assert report.output_stats.nlc_population is None
    assert report.population_probes is None


# --------------------------------------------------------------------------------------
# Outputs whose rows share a direction: the part along it exact (measure.deflate)


def common_mode(model, units):
    """The model's head made to read the mean of its inputs into every output, so that the
    outputs move mostly together (as the pooled head of a thin residual CNN does)."""
    with torch.no_grad():
        model[-1].weight.mul_(0.1).add_(torch.ones_like(model[-1].weight) / units)
    return model


def _deflated(report):
    return any("reverse-mode pass" in n for n in report.notes)


def test_an_output_whose_rows_share_a_direction_needs_two_probes_and_matches_the_exact_nlc(monkeypatch):
    from archlint.measure import deflate

    model = common_mode(mlp(3, 64, d_out=8), 64)
    x = gaussian(128, 16)
    exact = exact_nlc(per_sample(model), x)
    for seed in range(3):
        report = measure(model, x, seed=seed)
        assert _deflated(report) and report.probes == 2
        assert report.output_nlc == pytest.approx(exact, rel=0.005)
    # What it saves: the probes alone need many more for the same noise target.
    monkeypatch.setattr(deflate, "MIN_SAVED_PROBES", 10**6)
    report = measure(model, x)
    assert not _deflated(report) and report.probes >= 8


def test_a_deflated_affine_map_still_measures_exactly_one():
    model = common_mode(mlp(2, 16, nn.Identity, d_out=8), 16)
    report = measure(model, gaussian(128, 16))
    assert _deflated(report)
    assert report.output_nlc == pytest.approx(1.0, abs=1e-5)


def test_deflated_batch_and_population_values_agree_with_many_probes(monkeypatch):
    """Batch statistics couple the rows (strongly at batch 16) and the population value takes
    the eval rule: the fused one (a CNN, one batch) and the separate pass (a BatchNorm1d MLP).
    The deflated values against the mean of 12 measurements with 16 probes each."""
    from archlint.measure import deflate

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
    cases = [(common_mode(cnn, 16), gaussian(128, 3, 8, 8), 128),
             (common_mode(mlp(3, 64, batchnorm=True, d_out=8), 64), gaussian(128, 16), 16)]
    for model, x, batch in cases:
        deflated = [measure(model, x, seed=s, batch_size=batch) for s in range(4)]
        assert all(_deflated(r) and r.probes == 2 and r.output_nlc_population is not None for r in deflated)
        with monkeypatch.context() as m:
            m.setattr(deflate, "MIN_SAVED_PROBES", 10**6)
            probed = [measure(model, x, seed=s, batch_size=batch, probes=16, population_probes=16) for s in range(12)]
        for value in ("output_nlc", "output_nlc_population"):
            ours = sum(getattr(r, value) for r in deflated) / len(deflated)
            reference = sum(getattr(r, value) for r in probed) / len(probed)
            assert ours == pytest.approx(reference, rel=0.02), (value, batch)


def test_a_riding_population_value_takes_the_batchs_exact_part_and_no_backward_pass_of_its_own(monkeypatch):
    """One batch of a BatchNorm CNN: the population probes share the batch probes'
    directions, so the population's part along the shared output direction comes from the
    batch's exact part (deflate.project_paired): one backward pass instead of two. Asking
    for more population probes than there are batch probes to pair them with takes the
    population's own pass, as before."""
    from archlint.measure import deflate
    from archlint.measure.runner import _Recorded

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
    model, x = common_mode(cnn, 16), gaussian(128, 3, 8, 8)
    backward, paired = [], []
    numerator, project_paired = _Recorded.numerator, deflate.project_paired
    monkeypatch.setattr(_Recorded, "numerator", lambda self, *a, **k: backward.append(a[1]) or numerator(self, *a, **k))
    monkeypatch.setattr(deflate, "project_paired", lambda *a: paired.append(1) or project_paired(*a))
    report = measure(model, x)
    assert _deflated(report) and report.population_probes == 1
    assert backward == [False] and paired == [1]  # the batch rule's backward pass alone
    backward.clear(), paired.clear()
    report = measure(model, x, population_probes=3)
    assert _deflated(report) and backward == [False, True] and paired == []


def test_batch_norm_in_a_reverse_pass_has_the_batch_or_the_population_rule():
    # One forward, two backward passes: the batch rule (PyTorch's train-mode gradient), then
    # the population rule (the batch's statistics as constants: eval-mode batch norm's).
    from archlint.measure.overrides import _BatchNormEitherRule, _MeasureMode

    x = gaussian(32, 4, 5, 5).double().requires_grad_(True)
    weight, bias = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    var, mean = torch.var_mean(x.detach(), (0, 2, 3), correction=0)
    cot = gaussian(32, 4, 5, 5, seed=2).double()
    mode = _MeasureMode()
    out = _BatchNormEitherRule.apply(x, weight, bias, 1e-5, mode)
    batch_rule = torch.autograd.grad(out, x, cot, retain_graph=True)[0]
    mode.population_backward = True
    population_rule = torch.autograd.grad(out, x, cot)[0]
    trained = torch.autograd.grad(F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5), x, cot)[0]
    population = torch.autograd.grad(F.batch_norm(x, mean, var, weight, bias, False, 0.0, 1e-5), x, cot)[0]
    assert torch.allclose(batch_rule, trained) and torch.allclose(population_rule, population)
    assert not torch.allclose(trained, population)  # the two rules differ: the checks would notice
    assert torch.allclose(out, F.batch_norm(x, None, None, weight, bias, True, 0.0, 1e-5))


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e3])
def test_batch_statistics_are_the_batch_s_whatever_its_mean(offset):
    # Row reductions give train-mode batch norm's mean and biased variance. With a mean of 3
    # and spreads down to 0.1 (a squared mean up to 900 times the variance), E[x^2] - E[x]^2
    # would lose about 3e-4 of the variance in float32, and with a mean of 1e3 all of it: there
    # PyTorch's kernel computes them (overrides.CANCELLATION).
    from archlint.measure.overrides import batch_norm_train, batch_statistics

    x = gaussian(64, 8, 6, 6) * (torch.rand(8) + 0.1).view(1, -1, 1, 1) + offset
    mean, var = batch_statistics(x)
    reference = x.double()
    assert torch.allclose(mean.double(), reference.mean((0, 2, 3)), rtol=1e-6, atol=1e-6)
    assert torch.allclose(var.double(), reference.var((0, 2, 3), unbiased=False), rtol=1e-4)
    weight, bias = torch.rand(8) + 0.5, torch.randn(8)
    out, _, invstd = batch_norm_train(x, weight, bias, 1e-5)
    theirs, _, their_invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, 1e-5)
    assert torch.allclose(out, theirs, atol=1e-4) and torch.allclose(invstd, their_invstd, rtol=1e-4)
    # A layout the row reductions do not read (channels last), and half precision: PyTorch's.
    for other in (x.to(memory_format=torch.channels_last), x.half()):
        _, their_mean, their_invstd = torch.native_batch_norm(other, None, None, None, None, True, 0.0, 0.0)
        assert [t.tolist() for t in batch_statistics(other)] == [their_mean.tolist(), their_invstd.pow(-2).tolist()]
    # In half precision PyTorch's train-mode kernel normalises too: a variance of 1.6e5 written
    # in float16 would overflow.
    loud = (gaussian(64, 8, 6, 6) * 400).half()
    ours, theirs = batch_norm_train(loud, None, None, 1e-5), torch.native_batch_norm(loud, None, None, None, None, True, 0.0, 1e-5)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_batch_norm_computes_the_same_values_with_and_without_tangents():
    # A pass without probes (a segment's pass before its start, the population pass of fresh
    # eval-mode layers) computes train-mode batch norm as the passes with tangents do, bit for
    # bit: the values of one node do not depend on which pass computed them.
    import torch.autograd.forward_ad as fwAD

    from archlint.measure.overrides import _MeasureMode

    x, weight = gaussian(32, 4, 5, 5), torch.rand(4) + 0.5
    with _MeasureMode():
        plain = F.batch_norm(x, None, None, weight, None, True, 0.0, 1e-5)
        with fwAD.dual_level():
            dual = F.batch_norm(fwAD.make_dual(x, torch.randn_like(x)), None, None, weight, None, True, 0.0, 1e-5)
            with_tangent = fwAD.unpack_dual(dual).primal
    assert torch.equal(plain, with_tangent)


class TracksActivations(nn.Module):
    """A common-mode MLP that updates a buffer from its hidden activations in forward."""

    def __init__(self):
        super().__init__()
        self.net = common_mode(mlp(3, 64, d_out=8), 64)
        self.register_buffer("seen", torch.zeros(64))

    def forward(self, x):
        h = self.net[:-1](x)
        self.seen.add_(h.mean(0))
        return self.net[-1](h)


def test_a_buffer_updated_during_the_reverse_pass_is_left_as_it_was():
    model = TracksActivations()
    before = snapshot(model)
    report = measure(model, gaussian(128, 16))
    assert _deflated(report)
    assert_unchanged(model, before)
    assert model.seen.grad_fn is None and not model.seen.requires_grad
    copy.deepcopy(model)  # a tensor in an autograd graph could not be copied


# --------------------------------------------------------------------------------------
# The output alone: reverse-mode probes (measure.cotangents)


def _by_cotangents(report):
    return any("reverse-mode probes" in n for n in report.notes)


def test_the_output_alone_by_reverse_mode_probes_matches_the_exact_nlc(monkeypatch):
    from archlint.measure import cotangents

    model = mlp(3, 64, act=nn.Tanh, sigma_w2=3.0)
    x = gaussian(128, 16)
    exact = exact_nlc(per_sample(model), x)
    reports = [measure(model, x, nodes=(), seed=seed) for seed in range(6)]
    assert all(_by_cotangents(r) for r in reports)
    errors = [r.output_nlc / exact - 1 for r in reports]
    assert max(map(abs, errors)) < 0.05 and abs(sum(errors) / len(errors)) < 0.015
    # The same measurement by forward-mode probes: the route was taken, not the default one.
    monkeypatch.setattr(cotangents, "ENABLED", False)
    forward = measure(model, x, nodes=())
    assert not _by_cotangents(forward) and forward.output_nlc != reports[0].output_nlc
    assert forward.output_nlc == pytest.approx(exact, rel=0.05)


def test_an_affine_map_by_reverse_mode_probes_measures_exactly_one_with_one_probe():
    # The cotangents' basis diagonalises the output's covariance, which is each row's M_i
    # here: no probe noise at all (random signs in the output's own units would have some).
    report = measure(mlp(2, 16, nn.Identity, d_out=8), gaussian(128, 16), nodes=())
    assert _by_cotangents(report) and report.probes == 1
    assert report.output_nlc == pytest.approx(1.0, abs=1e-6)


def test_batch_and_population_values_by_reverse_mode_probes_agree_with_many_forward_probes(monkeypatch):
    """Train-mode batch norm couples the rows, and the population value rides along (one
    batch): each row's signs are its own. Against the mean of 8 measurements with 16
    forward-mode probes each."""
    from archlint.measure import cotangents

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
    x = gaussian(128, 3, 8, 8)
    before = snapshot(cnn)
    ours = [measure(cnn, x, nodes=(), seed=s) for s in range(8)]
    assert all(_by_cotangents(r) and r.output_nlc_population is not None for r in ours)
    assert_unchanged(cnn, before)
    monkeypatch.setattr(cotangents, "ENABLED", False)
    probed = [measure(cnn, x, nodes=(), seed=s, probes=16, population_probes=16) for s in range(8)]
    for value in ("output_nlc", "output_nlc_population"):
        mean = sum(getattr(r, value) for r in ours) / len(ours)
        reference = sum(getattr(r, value) for r in probed) / len(probed)
        assert mean == pytest.approx(reference, rel=0.02), value


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(8, 32), nn.Linear(6, 32), nn.Linear(32, 5)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


def test_reverse_mode_probes_count_the_covariance_between_two_inputs():
    # The two inputs' directions are one joint direction: the numerator of a backward pass
    # sums each sample's projections over the inputs before squaring them (their covariance
    # across inputs counts, as it does for forward-mode probes). Summed after squaring, the
    # value was 4% below the exact one here.
    model = TwoInputs()
    x = gaussian(128, 8)
    y = x[:, :6] + 0.3 * gaussian(128, 6, seed=3)
    double = copy.deepcopy(model).double()
    exact = exact_nlc(lambda z: double(z[None, :8], z[None, 8:])[0], torch.cat([x, y], 1))
    values = [measure(model, (x, y), nodes=(), seed=s) for s in range(8)]
    assert all(_by_cotangents(r) for r in values)
    assert sum(r.output_nlc for r in values) / len(values) == pytest.approx(exact, rel=0.015)


def test_more_reverse_mode_probes_come_from_the_first_batchs_recorded_graph(monkeypatch):
    """Where the first batch's noise asks for more probes, they are backward passes over the
    graph that batch recorded, and the next batch takes as many at once: one forward pass
    per batch. Asked-for probes are honoured."""
    from archlint.measure import plan

    model = mlp(2, 32, act=nn.Tanh)
    x = gaussian(256, 16)
    graph = trace(model, (x[:4],), name="mlp")
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(plan, "PROBE_SE", 0.002)  # asks for every probe the plan allows
    report = measure(model, x, graph=graph, nodes=(), batch_size=128)
    assert _by_cotangents(report) and report.probes == plan.MAX_PROBES
    assert len(calls) == 2
    monkeypatch.undo()
    assert measure(model, x, graph=graph, nodes=(), probes=3).probes >= 3


def test_nodes_whose_nlc_is_not_asked_for_get_the_same_signal_statistics_from_the_reverse_pass(monkeypatch):
    """The screening measurement's shape: several nodes, the output's NLC alone. The others'
    signal statistics come from the forward pass that the reverse-mode probes record, and are
    those of a forward-mode measurement; no NLC for them (none asked for)."""
    from archlint import patterns
    from archlint.measure import cotangents

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
    x = gaussian(128, 3, 8, 8)
    graph = trace(cnn, (x[:4],), name="cnn")
    nodes = patterns.screened_nodes(graph)
    assert len(nodes) > 3
    ours = measure(cnn, x, graph=graph, nodes=nodes, nlc_nodes=[graph.output], population=False)
    assert _by_cotangents(ours) and set(ours.nodes) == set(nodes)
    monkeypatch.setattr(cotangents, "ENABLED", False)
    forward = measure(cnn, x, graph=graph, nodes=nodes, population=False)
    for name in nodes:
        a, b = ours.nodes[name], forward.nodes[name]
        assert a.status == b.status == "ok"
        for field in ("mean", "std", "rms", "neuron_bias", "spread", "sign_diversity", "dead_fraction"):
            if getattr(b, field) is None:
                assert getattr(a, field) is None, (name, field)
            else:
                assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-9, abs=1e-12), (name, field)
        if name != graph.output:
            assert a.nlc is None and b.nlc is not None
    assert ours.output_nlc == pytest.approx(forward.output_nlc, rel=0.05)


class _NoBackward(torch.autograd.Function):
    """Doubles its input; forward mode only (its backward fails)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward here")

    @staticmethod
    def jvp(ctx, tangent):
        return tangent * 2


def no_backward(x):
    return _NoBackward.apply(x)


torch.fx.wrap("no_backward")  # a call in the traced graph, run as it is (fx would trace into apply)


class ForwardModeOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(2, 16, act=nn.Tanh)

    def forward(self, x):
        return self.net(no_backward(x))


def test_an_output_whose_reverse_mode_pass_fails_is_measured_by_forward_mode_probes():
    model = ForwardModeOnly()
    x = gaussian(128, 16)
    report = measure(model, x, nodes=())
    assert not _by_cotangents(report)
    assert any("reverse-mode pass failed" in n and "no backward here" in n for n in report.notes)
    assert report.output_nlc == pytest.approx(exact_nlc(per_sample(model.net), 2 * x), rel=0.05)


# --------------------------------------------------------------------------------------
# Wide outputs: one probe to start with (plan.WIDE_OUTPUT_UNITS)


def per_position(layers, d_in=8, width=64, d_out=80, sigma_w2=3.0):
    """A tanh network applied at each of a sequence's positions: with 16 positions its
    output has 16 x 80 = 1280 units per row, and its Jacobian has many directions."""
    torch.manual_seed(0)
    stack, fan_in = [], d_in
    for _ in range(layers):
        lin = nn.Linear(fan_in, width)
        nn.init.normal_(lin.weight, 0.0, (sigma_w2 / fan_in) ** 0.5)
        stack += [lin, nn.Tanh()]
        fan_in = width
    return nn.Sequential(*stack, nn.Linear(fan_in, d_out))


def test_a_wide_output_is_measured_with_one_probe_and_matches_the_exact_nlc():
    from archlint.measure import plan

    model = per_position(2)
    x = gaussian(128, 16, 8)
    assert math.prod(model(x[:1]).shape) > plan.WIDE_OUTPUT_UNITS
    exact = exact_nlc(per_sample(model), x, jacobian=jacfwd)
    for seed in range(3):
        report = measure(model, x, seed=seed)
        assert report.probes == 1
        # Against the same sample only the probes' noise remains; se covers the sample too.
        assert abs(report.output_nlc - exact) < min(2 * report.output_nlc_se, 0.02 * exact), (report.output_nlc, exact)
    # Asked for, two probes are still two.
    assert measure(model, x, probes=2).probes == 2


def test_a_wide_output_of_few_directions_gets_the_probes_its_noise_asks_for():
    """2048 output units that move along two directions: one probe per row sees about two
    degrees of freedom, and the spread between the rows shows it."""
    model = nn.Sequential(mlp(3, 64, nn.Tanh, sigma_w2=3.0, d_out=2), nn.Linear(2, 2048))
    x = gaussian(128, 16)
    exact = exact_nlc(per_sample(model), x, jacobian=jacfwd)
    report = measure(model, x)
    assert report.probes >= 4
    assert report.output_nlc == pytest.approx(exact, rel=0.03)


# --------------------------------------------------------------------------------------
# The user's model is left exactly as it was


class WithDropout(nn.Module):
    """Train-mode BatchNorm, dropout as a module and as a function, a frozen layer."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(32, 4)
        self.out.weight.requires_grad_(False)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.inp(x))))
        return self.out(F.dropout(h, 0.5, self.training))


def test_model_state_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = WithDropout()
    model.bn.momentum = 0.3
    x = gaussian(64, 16)
    with torch.no_grad():
        model(x)  # non-trivial running statistics and num_batches_tracked = 1
    before = snapshot(model)
    rng = torch.get_rng_state()
    report = measure(model, x, batch_size=32, segments=[("inp", "out")])
    assert report.mode == "train-bn" and report.output_nlc_population is not None
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_model_state_is_unchanged_after_a_float64_recheck():
    model = mlp(3, 16, bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-30)
    before = snapshot(model)
    report = measure(model, gaussian(64, 16))
    assert report.dtype == "float64"
    assert_unchanged(model, before)


def test_dropout_is_off():
    torch.manual_seed(0)
    model = WithDropout()
    plain = nn.Sequential(model.inp, model.bn, nn.ReLU(), model.out)
    x = gaussian(64, 16)
    a = measure(model, x, batch_size=64)
    b = measure(plain, x, batch_size=64)
    assert a.output_nlc == pytest.approx(b.output_nlc, rel=1e-6)


# --------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_numbers_and_different_seed_different_probes():
    model = mlp(4, 32, nn.Tanh, sigma_w2=3.0, batchnorm=True)
    x = gaussian(64, 16)
    a, b = measure(model, x, seed=3, batch_size=32), measure(model, x, seed=3, batch_size=32)
    c = measure(model, x, seed=4, batch_size=32)
    for name in a.nodes:
        assert a.nodes[name] == b.nodes[name]
    assert a.output_nlc != c.output_nlc


def test_synthetic_inputs_are_deterministic():
    model = mlp(3, 32, nn.Tanh)
    a, b = measure(model, seed=5), measure(model, seed=5)
    assert a.samples == 128
    assert a.output_nlc == b.output_nlc


# --------------------------------------------------------------------------------------
# Statuses


def test_all_zero_last_layer_is_reported_as_vanished_not_zero():
    model = mlp(3, 32)
    nn.init.zeros_(model[-1].weight)
    nn.init.constant_(model[-1].bias, 0.3)
    report = measure(model, gaussian(64, 16))
    assert report.status == "vanished" and report.output_nlc is None
    # Zero weights are an exact zero, not a rounding artefact: no float64 re-check.
    assert report.dtype == "float32"
    assert report.nodes["_4"].status == "ok"


def test_signal_drowned_by_biases_is_vanished_in_float64_too():
    model = mlp(3, 32)
    with torch.no_grad():
        for lin in model[::2]:
            lin.weight.mul_(1e-30)
            nn.init.constant_(lin.bias, 0.1)
    report = measure(model, gaussian(64, 16))
    assert report.dtype == "float64"
    assert report.status == "vanished" and report.output_nlc is None
    assert report.nodes["_0"].status == "vanished"


def test_tiny_weights_without_bias_are_measured_in_float64():
    # A bias-free ReLU net scaled by 1e-30 per layer underflows in float32 but is the same
    # function up to a factor, so its NLC is that of the unscaled net.
    model = mlp(3, 32, bias=False)
    x = gaussian(64, 16)
    reference = measure(model, x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-30)
    report = measure(model, x)
    assert report.dtype == "float64" and report.status == "ok"
    assert report.output_nlc == pytest.approx(reference.output_nlc, rel=1e-4)
    assert report.output_nlc_float32 is None  # float32 had no NLC to give


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(1000 * x)


def test_exploded_signal_is_reported_also_after_the_float64_recheck():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), Exp())
    report = measure(model, gaussian(64, 16))
    assert report.dtype == "float64"
    assert report.status == "exploded" and report.output_nlc is None
    assert report.nodes["_0"].status == "ok"


class CausalAttention(nn.Module):
    """Self-attention with a causal mask written as -inf, as nanoGPT writes it."""

    def __init__(self, d=16, seq=8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.register_buffer("mask", torch.tril(torch.ones(seq, seq)))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1)) / 4.0
        att = att.masked_fill(self.mask == 0, float("-inf"))
        return F.softmax(att, dim=-1) @ v


def test_a_causal_mask_written_as_minus_inf_needs_no_float64_recheck():
    # The mask's infinity is the model's own (float64 writes the same one): the node is
    # reported as exploded, but nothing is measured twice.
    torch.manual_seed(0)
    report = measure(CausalAttention(), gaussian(64, 8, 16))
    assert report.dtype == "float32"
    assert not any("float64" in note for note in report.notes)
    assert report.nodes["masked_fill"].status == "exploded"
    assert report.status == "ok" and report.output_nlc > 1


class AddsItsOwnReLU(nn.Module):
    """h + relu_(h): the in-place ReLU changes h, which the sum then reads (2 relu(h))."""

    def __init__(self, inplace):
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.inplace = inplace

    def forward(self, x):
        h = self.lin(x)
        if self.inplace:
            return h + F.relu(h, inplace=True)
        r = F.relu(h)
        return r + r


def test_in_place_activations_keep_their_semantics_and_numbers():
    # Run out of place where nothing else reads the input, in place where something does:
    # the numbers of the in-place model are those of the same model written without it.
    x = gaussian(128, 16)
    for inplace_model, plain_model in [(AddsItsOwnReLU(True), AddsItsOwnReLU(False)),
                                       (mlp(3, 32, lambda: nn.ReLU(inplace=True)), mlp(3, 32, nn.ReLU)),
                                       (mlp(3, 32, lambda: nn.ReLU6(inplace=True)), mlp(3, 32, nn.ReLU6))]:
        plain_model.load_state_dict(inplace_model.state_dict())
        a, b = measure(inplace_model, x), measure(plain_model, x)
        assert a.output_nlc == pytest.approx(b.output_nlc, rel=1e-6)
        assert [s.nlc for s in a.nodes.values()] == pytest.approx([s.nlc for s in b.nodes.values()], rel=1e-6)


class Rearranges(nn.Module):
    """Views, transposes and dropout after a layer, and (write=True) a write in place to the
    layer's value (through a view of it) between it and its view. eager=True: a branch on the batch size that fx
    cannot trace, so the graph is captured eagerly."""

    def __init__(self, write: bool, eager: bool):
        super().__init__()
        self.write, self.eager = write, eager
        self.a = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        if self.eager and x.shape[0] < 1:
            raise ValueError("an empty batch")
        h = torch.tanh(2 * self.a(x))
        if self.write and self.eager:
            h[:, :8] = 3.0  # not a node of an eager graph
        elif self.write:
            h.narrow(1, 0, 8).fill_(3.0)  # fx cannot trace item assignment
        h = self.drop(h.view(x.shape[0], 4, 8).transpose(1, 2).contiguous().flatten(1))
        return self.b(h)


@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_nodes_that_keep_their_inputs_rows_take_its_statistics(monkeypatch, write, eager):
    # The views, transpose, contiguous copy, flatten and dropout measure what they would
    # measure themselves; after a write in place to their input, they measure themselves.
    import archlint.measure.runner as runner

    torch.manual_seed(0)
    model, x = Rearranges(write, eager), gaussian(128, 16)
    traced = trace(model, (x[:4],), name="Rearranges")
    assert traced.traced_with == ("eager" if eager else "fx")
    aliased = measure(model, x, graph=traced)
    kept = [name for name, s in aliased.nodes.items() if s.op in ("view", "transpose", "contiguous", "flatten", "Dropout")]
    assert len(kept) == 5
    with monkeypatch.context() as m:
        m.setattr(runner, "_row_aliases", lambda graph: {})
        computed = measure(model, x, graph=traced)
    assert aliased.nodes.keys() == computed.nodes.keys()
    for name in aliased.nodes:
        a, c = aliased.nodes[name], computed.nodes[name]
        assert (a.status, a.nlc is None, a.rms is None) == (c.status, c.nlc is None, c.rms is None)
        if a.nlc is not None:
            assert (a.nlc, a.rms) == pytest.approx((c.nlc, c.rms), rel=1e-6)
    tanh = next(name for name, s in aliased.nodes.items() if s.op == "tanh")
    # The view holds the tanh's values, or (after the write of 3.0) larger ones.
    assert (aliased.nodes[kept[0]].rms == aliased.nodes[tanh].rms) == (not write)


class Replays(nn.Module):
    """Layers whose values the passes after the main one take from it (measure.replay): a
    convolution, a train-mode batch norm, a transposed convolution (recomputed in reverse
    mode), a linear layer called twice (its calls numbered), and (write=True) the
    convolution's value written in place after it is taken. A 2-way head: the output is
    deflated (a reverse-mode pass, for the batch and the population value). eager=True: a
    branch that fx cannot trace, so the graph is captured eagerly."""

    def __init__(self, write: bool, eager: bool):
        super().__init__()
        self.write, self.eager = write, eager
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.up = nn.ConvTranspose1d(4, 4, 3, padding=1)
        self.shared = nn.Linear(64, 64)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        if self.eager and x.shape[0] < 1:
            raise ValueError("an empty batch")
        h = self.conv(x.unsqueeze(1))
        if self.write:
            h.mul_(2.0)
        h = self.up(torch.tanh(self.norm(h))).flatten(1)
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


@pytest.fixture
def replays(monkeypatch) -> list:
    """The measure.replay.Replay objects the measurements create from here on."""
    import archlint.measure.plan as plan

    created = []

    class Counted(plan.Replay):
        def __init__(self):
            super().__init__()
            created.append(self)

    monkeypatch.setattr(plan, "Replay", Counted)
    return created


@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("eager", [False, True])
def test_layer_values_replayed_in_later_passes_measure_what_computing_them_does(monkeypatch, replays, write, eager):
    # The reverse-mode pass, the segment's pass and any pass that adds probes take the
    # layers' values from the main pass, and measure exactly what computing them measures;
    # the value written in place after it was taken is computed again.
    import archlint.measure.plan as plan

    torch.manual_seed(0)
    model, x = Replays(write, eager), gaussian(128, 16)
    traced = trace(model, (x[:4],), name="Replays")
    assert traced.traced_with == ("eager" if eager else "fx")
    names = [node.name for node in traced]
    segment = (names[names.index(next(n.name for n in traced if n.op == "tanh"))], traced.output)
    replayed = measure(model, x, graph=traced, segments=[segment])
    assert any("reverse-mode pass" in note for note in replayed.notes)
    assert len(replays) == 1 and replays[0].replayed >= 5
    with monkeypatch.context() as m:
        m.setattr(plan, "_replayable", lambda *args: False)
        computed = measure(model, x, graph=traced, segments=[segment])
    assert len(replays) == 1
    assert (replayed.output_nlc, replayed.probes) == (computed.output_nlc, computed.probes)
    assert replayed.output_nlc_population == computed.output_nlc_population is not None
    assert replayed.segments[segment].nlc == computed.segments[segment].nlc
    assert [(s.nlc, s.rms) for s in replayed.nodes.values()] == [(s.nlc, s.rms) for s in computed.nodes.values()]


def test_layer_values_are_kept_only_within_the_memory_budget(monkeypatch, replays):
    import archlint.memory as memory

    torch.manual_seed(0)
    model, x = Replays(False, False), gaussian(128, 16)
    traced = trace(model, (x[:4],), name="Replays")
    # Per row the kept values are 4 x 16 (conv) + 4 x 16 (batch norm) + 64 (transposed conv)
    # + 2 x 64 (the linear layer twice) + 2 floats: 322, so 165 kB for 128 rows.
    monkeypatch.setattr(memory, "available_memory", lambda: int(2 * 160_000 / memory.MEMORY_FRACTION))
    assert measure(model, x, graph=traced).status == "ok"
    assert replays == []
    monkeypatch.setattr(memory, "available_memory", lambda: int(2 * 170_000 / memory.MEMORY_FRACTION))
    measure(model, x, graph=traced)
    assert len(replays) == 1 and replays[0].replayed > 0
    # A worker's own cap (RLIMIT_DATA) counts too.
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 40)
    monkeypatch.setattr(memory, "data_room", lambda: 2 * 160_000)
    measure(model, x, graph=traced)
    assert len(replays) == 1


def test_the_reverse_pass_is_wanted_only_within_half_of_the_workers_cap(monkeypatch):
    import archlint.memory as memory
    from archlint.measure import deflate

    model, x = mlp(3, 16, d_out=2), gaussian(128, 16)
    graph = trace(model, (x[:4],), name="mlp")
    held = memory.values_size((node.shape for node in graph if node.shape), 4, 128, 4)  # what it holds
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 40)
    monkeypatch.setattr(memory, "data_room", lambda: None)
    assert deflate.wanted(graph, 4, 128, torch.float32, cpu)
    monkeypatch.setattr(memory, "data_room", lambda: int(2 * held) + 2)
    assert deflate.wanted(graph, 4, 128, torch.float32, cpu)
    monkeypatch.setattr(memory, "data_room", lambda: int(2 * held) - 2)
    assert not deflate.wanted(graph, 4, 128, torch.float32, cpu)


def test_signal_that_overflows_only_in_float32_is_measured_in_float64():
    model = mlp(4, 16, nn.Identity)
    with torch.no_grad():
        for lin in model[::2]:
            lin.weight.mul_(1e12)
    report = measure(model, gaussian(64, 16))
    assert report.dtype == "float64" and report.status == "ok"
    assert report.output_nlc == pytest.approx(1.0, abs=1e-6)  # a linear network


class Gate(nn.Module):
    """An output made of a parameter alone, and a piecewise-constant one."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.bias = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = self.lin(x)
        return h, torch.sign(h) + 0.0, self.bias * torch.ones_like(h)


def test_independent_and_gradient_free_nodes_get_a_status():
    report = measure(Gate(), gaussian(64, 16))
    assert report.output == "lin"
    by_op = {s.op: s for s in report.nodes.values()}
    assert by_op["sign"].status == "no-gradient" and by_op["sign"].nlc == 0.0
    assert by_op["ones_like"].status == "constant" and by_op["ones_like"].nlc is None


# --------------------------------------------------------------------------------------
# Inputs and outputs


class TinyLM(nn.Module):
    def __init__(self, vocab=50, seq=64, d=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, 5)

    def body(self, e):
        x = e + self.pos(torch.arange(e.shape[1]))
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.head(torch.tanh(x).mean(1))

    def forward(self, ids):
        return self.body(self.tok(ids))


def test_token_inputs_are_measured_from_the_embedding():
    torch.manual_seed(0)
    model = TinyLM(seq=8)
    ids = torch.randint(0, 50, (128, 8), generator=torch.Generator().manual_seed(1))
    report = measure(model, ids)
    assert report.sources == ["tok"]
    assert report.nodes["ids"].status == "not-float"
    assert report.nodes["pos"].status == "not-per-sample"
    with torch.no_grad():
        e = model.tok(ids)
    body = copy.deepcopy(model).double().eval()
    exact = exact_nlc(lambda ei: body.body(ei.unsqueeze(0)).squeeze(0), e)
    assert report.output_nlc == pytest.approx(exact, rel=0.05)


def test_synthetic_token_inputs():
    torch.manual_seed(0)
    report = measure(TinyLM(seq=64))
    assert report.sources == ["tok"] and report.status == "ok"


class TupleOut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits, "loss": logits.square().mean(), "ids": logits.argmax(1)}


def test_tuple_or_dict_output_uses_the_first_floating_output():
    net = mlp(3, 32, nn.Tanh)
    x = gaussian(64, 16)
    wrapped = measure(TupleOut(net), x)
    plain = measure(net, x)
    assert wrapped.output == "net_6"
    assert wrapped.output_nlc == pytest.approx(plain.output_nlc, rel=1e-6)


class Encoder(nn.Module):
    """Returns its LSTM's tuple as it is: (output, (h, c))."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)


def test_a_layers_tuple_returned_as_it_is_is_measured_at_its_first_floating_output():
    torch.manual_seed(0)
    model = Encoder()
    x = gaussian(64, 5, 8)
    graph = trace(model, (x[:4],), name="Encoder")
    assert graph.traced_with == "fx" and graph.output != "rnn"
    report = measure(model, x, graph=graph)
    assert report.status == "ok"
    # The model itself computes and returns what it did: the whole tuple.
    out, (h, c) = graph.graph_module(x)
    assert torch.equal(out, model(x)[0]) and h.shape == (2, 64, 16)
    body = copy.deepcopy(model).double().eval()
    exact = exact_nlc(lambda xi: body(xi.unsqueeze(0))[0].squeeze(0), x, batched=False)
    assert report.output_nlc == pytest.approx(exact, rel=0.05)


class UntraceableEncoder(Encoder):
    """The same, with a branch on a value, which fx cannot trace: captured eagerly."""

    def forward(self, x):
        if float(x.abs().max()) > 1e9:
            x = x / 2
        return self.rnn(x)


def test_an_eager_graphs_layer_tuple_returned_as_it_is_is_measured_like_fxs():
    torch.manual_seed(0)
    model = Encoder()
    eager_model = UntraceableEncoder()
    eager_model.load_state_dict(model.state_dict())
    x = gaussian(64, 5, 8)
    eager = trace(eager_model, (x[:4],), name="UntraceableEncoder")
    assert eager.traced_with == "eager" and eager[eager.output].shape == (4, 5, 16)
    report = measure(eager_model, x, graph=eager)
    assert report.status == "ok" and report.output_nlc is not None
    # The same first floating-point tensor as the fx graph's getitem nodes take out.
    assert report.output_nlc == pytest.approx(measure(model, x, graph=trace(model, (x[:4],), name="Encoder")).output_nlc,
                                              rel=1e-6)


def test_data_string_loads_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_batches.py").write_text("import torch\n\ndef batch():\n    return torch.randn(32, 16)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_data("my_batches:batch").shape == (32, 16)
    report = measure(mlp(2, 8), "my_batches:batch")
    assert report.samples == 32


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 16)  # time-major: (time, batch, features)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def test_time_major_recurrent_model():
    torch.manual_seed(0)
    model = Recurrent()
    x = gaussian(64, 12, 4).transpose(0, 1)  # (time 12, batch 64, 4)
    report = measure(model, x)
    assert report.samples == 64
    body = copy.deepcopy(model).double().eval()
    exact = exact_nlc(lambda xi: body(xi.unsqueeze(1)).squeeze(0), x.transpose(0, 1), batched=False)
    assert report.output_nlc == pytest.approx(exact, rel=0.05)


class Branchy(nn.Module):
    """Data-dependent control flow: fx cannot trace it, the eager capture can."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.tanh(3 * self.a(x))
        if h.mean() > -10:
            h = h * 2
        return self.b(h)


def test_eager_traced_model():
    torch.manual_seed(0)
    model = Branchy()
    x = gaussian(128, 16)
    report = measure(model, x)
    assert model.__class__.__name__ == report.model and report.status == "ok"
    assert report.output_nlc == pytest.approx(exact_nlc(per_sample(model), x, batched=False), rel=0.05)


class RunningMean(nn.Module):
    """Updates a buffer in forward: functorch cannot batch that, plain forward AD can."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 4)
        self.register_buffer("seen", torch.zeros(32))

    def forward(self, x):
        h = torch.tanh(3 * self.a(x))
        self.seen.mul_(0.9).add_(0.1 * h.mean(0))
        return self.b(h)


def test_model_vmap_cannot_batch_falls_back_to_one_probe_at_a_time():
    torch.manual_seed(0)
    model = RunningMean()
    x = gaussian(128, 16)
    before = snapshot(model)
    report = measure(model, x)
    assert any("one by one" in n for n in report.notes)
    assert report.output_nlc == pytest.approx(exact_nlc(per_sample(model), x, batched=False), rel=0.05)
    assert_unchanged(model, before)


def test_given_graph_and_report_rendering():
    model = mlp(2, 16, batchnorm=True)
    x = gaussian(32, 16)
    graph = trace(model, (x[:4],), name="mlp")
    report = measure(model, x, graph=graph, device="cpu", batch_size=16)
    assert graph.measured is report
    assert isinstance(report, Report) and isinstance(report.nodes["_2"], NodeStats)
    text = str(report)
    assert "output NLC" in text and "train-bn" in text and "NLC eval" in text
    assert len(report.table().splitlines()) == len(graph.nodes) + 1
    # Pre-activations get sign statistics, other nodes do not.
    assert report.nodes["_1"].sign_diversity is not None and report.nodes["_1"].dead_fraction is not None
    assert report.nodes["_2"].sign_diversity is None


# --------------------------------------------------------------------------------------
# Public API


def test_archlint_measure_is_callable_and_builds_the_graph_itself():
    import archlint
    import archlint.measure as measure_mod

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    before = snapshot(model)
    report = archlint.measure(model, seed=3)  # synthetic images, traced here
    assert isinstance(report, Report) and report.samples >= 128
    assert report.output == "_3" and report.output_nlc > 1 and report.output_nlc_se > 0
    # The per-node table: one row per node, in forward order.
    assert list(report.nodes) == ["input_1", "_0", "_1", "_2", "_3"]
    assert report.nodes["_0"].sign_diversity is not None  # feeds the ReLU
    text = str(report)
    assert text.splitlines()[0].startswith("Sequential: output NLC")
    assert all(name in text for name in report.nodes)
    # The same call as the function in the module, and the same numbers for the same seed.
    again = measure_mod.measure(model, seed=3)
    assert again.output_nlc == report.output_nlc
    assert archlint.measure is measure_mod and measure_mod.Report is Report
    assert_unchanged(model, before)


def test_importing_archlint_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, archlint; assert 'torch' not in sys.modules; assert callable(archlint.measure)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reading_reports_does_not_import_torch():
    """The result types are plain data: code that only reads or formats reports imports them
    without torch; the measurement itself imports it on first use."""
    import subprocess
    import sys

    code = (
        "import sys, inspect\n"
        "import archlint.measure.report\n"
        "from archlint.measure import MeasureError, NodeStats, Report, SegmentStats\n"
        "import archlint\n"
        "assert callable(archlint.measure)\n"
        "r = Report(model='m', output='y', mode='eval', device='cpu', dtype='float32', batch_size=2, samples=2,\n"
        "           probes=2, sources=['x'], nodes={'y': NodeStats(name='y', kind='linear', op='linear', status='ok', nlc=1.5)})\n"
        "assert r.output_nlc == 1.5 and str(r).startswith('m: output NLC 1.5')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'graph' in inspect.signature(archlint.measure).parameters\n"
        "from archlint.measure import measure, MIN_SAMPLES\n"
        "assert 'torch' in sys.modules and archlint.measure.measure is measure and MIN_SAMPLES == 128\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
