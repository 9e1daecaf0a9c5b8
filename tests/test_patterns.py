"""Structural queries the rules share: main path, skip regions, plain runs, signal reachability."""

from __future__ import annotations

import torch
from torch import nn

from archlint import patterns
from archlint.graph import Span
from archlint.trace import trace


def graph_of(model: nn.Module, *inputs: torch.Tensor):
    return trace(model, inputs, name=type(model).__name__, span=Span("model.py", 1))


def plain(depth: int) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(16, 4))


class Residual(nn.Module):
    def __init__(self, blocks: int, scale: float = 1.0):
        super().__init__()
        self.fs = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)) for _ in range(blocks))
        self.scale = scale

    def forward(self, x):
        for f in self.fs:
            x = x + self.scale * f(x)
        return x


class Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.a(x) * self.b(x)


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(16, 16)

    def forward(self, x):
        return self.f(x).detach() + 1.0


def test_plain_stack_is_one_run_along_the_whole_main_path():
    g = graph_of(plain(7), torch.randn(4, 16))
    # In a chain every node is on every path.
    assert set(patterns.main_path(g)) == {n.name for n in g.nodes if n.kind.value != "output"}
    runs = patterns.plain_runs(g)
    assert len(runs) == 1
    assert len(runs[0].layers) == 7
    assert patterns.describe_layers(runs[0].layers) == "7 Linear-BatchNorm1d-ReLU layers"
    assert not patterns.has_skip_connections(g)


def test_residual_blocks_break_runs_and_are_skips():
    g = graph_of(Residual(5), torch.randn(4, 16))
    regions = patterns.regions(g)
    assert len(regions) == 5 and all(r.skip for r in regions)
    # Branch internals are not on the main path: every source-to-output path need not pass them.
    main = set(patterns.main_path(g))
    assert not any(n.kind.value == "activation" for n in g.nodes if n.name in main)
    assert patterns.plain_runs(g) == []
    assert patterns.has_skip_connections(g)


def test_a_product_of_two_linear_paths_is_a_nonlinear_layer_not_a_skip():
    g = graph_of(nn.Sequential(Bilinear(), Bilinear()), torch.randn(4, 16))
    regions = patterns.regions(g)
    assert regions and not any(r.skip for r in regions)
    assert [len(r.layers) for r in patterns.plain_runs(g)] == [2]


def test_detach_cuts_the_signal():
    g = graph_of(Detached(), torch.randn(4, 16))
    assert g.output not in patterns.signal_nodes(g)
    g2 = graph_of(plain(1), torch.randn(4, 16))
    assert g2.output in patterns.signal_nodes(g2)


def test_token_models_start_at_the_embedding():
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.ReLU())
    g = graph_of(model, torch.randint(0, 50, (4, 8)))
    sources = patterns.sources(g)
    assert len(sources) == 1 and g[sources[0]].kind.value == "embedding"
    assert patterns.main_path(g)[0] == sources[0]


class OneHot(nn.Module):
    """Token ids turned into floats without an embedding."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 32), nn.Linear(32, 4)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(nn.functional.one_hot(ids, 10).float())))


def test_integer_inputs_without_an_embedding_enter_at_their_first_float_node():
    # The rules and the measurement used to disagree here: the rules saw no source at all
    # (so nothing downstream carried a signal), the measurement started at the first float.
    import archlint

    model = OneHot()
    ids = torch.randint(0, 10, (64,))
    g = graph_of(model, ids)
    sources = patterns.sources(g)
    assert len(sources) == 1 and g[sources[0]].dtype == "float32" and g[sources[0]].kind.value != "input"
    assert g.output in patterns.signal_nodes(g)
    report = archlint.measure(model, ids, graph=g)
    assert report.sources == sources


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = self.body(x)
        return self.a(h), torch.tanh(self.b(h))


class CheckedTwice(nn.Module):
    """A condition on the signal, which fx cannot trace: captured eagerly."""

    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.f(x)
        if float(torch.sigmoid(h).mean()) > 2.0:
            h = h * 0
        return self.g(torch.relu(h)), h


def test_every_returned_value_keeps_what_it_depends_on_live():
    # The second head is judged too, though the measured output is the first.
    g = graph_of(TwoHeads(), torch.randn(4, 16))
    assert g.returned == [g.output, "tanh"] and g.output == "a"
    assert "tanh" in patterns.live_signal_nodes(g)
    # What only a branch's condition reads is a signal node, but not a live one.
    e = graph_of(CheckedTwice(), torch.randn(4, 16))
    assert e.traced_with == "eager" and len(e.returned) == 2 and e.returned[0] == e.output
    sigmoid = next(n.name for n in e.nodes if n.op == "sigmoid")
    relu = next(n.name for n in e.nodes if n.op == "relu")
    assert sigmoid in patterns.signal_nodes(e) and sigmoid not in patterns.live_signal_nodes(e)
    assert relu in patterns.live_signal_nodes(e)
