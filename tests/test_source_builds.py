"""Models built from the calls their own file shows: test(), __main__, defaults, factories."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from archlint import load
from archlint.config import Settings
from archlint.engine import check_file
from archlint.output import Context, render

torch.set_num_threads(1)

HEADER = """
import os
from dataclasses import dataclass

import torch
from torch import nn

MARKER = os.environ["ARCHLINT_TEST_MARKER"]


def train(model):
    # What a real test()/main() does besides building: it must never run.
    open(MARKER, "w").write("ran")
    print("training", model)
"""

CNN = """
class Net(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(depth)])
        # The classifier's size fixes the spatial size: only 28x28 inputs work.
        self.head = nn.Linear(width * 28 * 28, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).flatten(1))
"""


def write(tmp_path, body: str, name: str = "model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(HEADER) + textwrap.dedent(body))
    return path


@pytest.fixture
def marker(tmp_path, monkeypatch):
    path = tmp_path / "marker.txt"
    monkeypatch.setenv("ARCHLINT_TEST_MARKER", str(path))
    return path


def discover(path):
    with load.isolated_import(path) as module:
        d = load.discover(module, str(path))
        built, not_built = load.build_all(d)
    return d, built, not_built


def line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_test_function_build_with_its_input_shape(tmp_path, marker):
    path = write(tmp_path, CNN + """
def test():
    net = Net(8, depth=1)
    x = torch.randn(2, 3, 28, 28)
    train(net)
    print(net(x).shape)
""")
    d, built, not_built = discover(path)
    (entry,) = d.entries
    assert entry.name == "Net" and entry.kind == "class"
    assert entry.built_as == f"Net(8, depth=1) (from test() at line {line_of(path, 'net = Net(8')})"
    assert entry.input_shape == "3,28,28"
    assert not_built == [] and [b.name for b in built] == ["Net"]
    assert built[0].model.stem.out_channels == 8 and len(built[0].model.body) == 1
    assert not marker.exists()  # test() itself never ran


def test_the_found_input_shape_is_the_example_input(tmp_path, marker):
    # Net's first layer says 3 channels, and the inferred 32x32 image would not fit its
    # classifier: the shape from the file is what makes it analysable.
    path = write(tmp_path, CNN + """
def test():
    net = Net(4)
    y = net(torch.randn(1, 3, 28, 28))
""")
    result = check_file(path, Settings(verify=False))
    assert [m.name for m in result.models] == ["Net"] and result.models[0].graph is not None
    assert not [f for f in result.findings if f.code in ("ARC903", "ARC904")]
    assert not marker.exists()


def test_only_an_input_that_reaches_the_model_gives_the_shape(tmp_path, marker):
    path = write(tmp_path, CNN + """
def test():
    mask = torch.zeros(5, 7)
    net = Net(4)
    target = torch.randn(2, 10)
    x = torch.randn(2, 3, 28, 28)
    loss = (net(x) - target).pow(2).mean()


if __name__ == "__main__":
    model = Net(2)
    print(torch.ones(4, 3, 16, 16).shape)
""")
    d, _, _ = discover(path)
    assert [e.input_shape for e in d.entries] == ["3,28,28"]

    path.write_text(path.read_text().replace("net = Net(4)", "net = None"))
    d, _, _ = discover(path)
    # The __main__ block's build: its tensor never reaches the model, the first layer decides.
    assert d.entries[0].built_as.startswith("Net(2) (from the __main__ block") and d.entries[0].input_shape is None


def test_a_main_block_build_and_how_many_others(tmp_path, marker):
    path = write(tmp_path, """
class MLP(nn.Module):
    def __init__(self, sizes, act=nn.ReLU):
        super().__init__()
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


if __name__ == "__main__":
    model = MLP([16, 32, 32, 4], act=nn.Tanh)
    train(model)
    other = MLP((16, 8))
    same = MLP([16, 32, 32, 4], act=nn.Tanh)
""")
    d, built, not_built = discover(path)
    (entry,) = d.entries
    line = line_of(path, "model = MLP(")
    assert entry.built_as == f"MLP([16, 32, 32, 4], act=nn.Tanh) (from the __main__ block at line {line}; 1 other build in the file)"
    assert [type(m).__name__ for m in built[0].model.net] == ["Linear", "Tanh"] * 3
    assert not_built == [] and not marker.exists()


def test_a_config_dataclass_default(tmp_path, marker):
    path = write(tmp_path, """
@dataclass
class Config:
    vocab: int = 50
    width: int = 16


class TinyLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config.vocab, config.width)
        self.out = nn.Linear(config.width, config.vocab)

    def forward(self, ids):
        return self.out(self.emb(ids))


def main(model=TinyLM(Config())):
    train(model)
""")
    d, built, not_built = discover(path)
    (entry,) = d.entries
    assert entry.built_as == f"TinyLM(Config()) (from the defaults of main() at line {line_of(path, 'def main(')})"
    assert built[0].model.emb.num_embeddings == 50 and not_built == []
    assert not marker.exists()


def test_a_factory_called_with_a_dict_literal(tmp_path, marker):
    path = write(tmp_path, """
class Net(nn.Module):
    def __init__(self, widths, groups):
        super().__init__()
        self.fc1 = nn.Linear(widths[0], widths[1])
        self.fc2 = nn.Linear(widths[1], groups)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make_net(cfg):
    return Net(cfg["widths"], groups=cfg["groups"])


def test():
    net = make_net({"widths": [12, 24], "groups": 3})
    train(net)
""")
    d, built, not_built = discover(path)
    (entry,) = d.entries
    assert (entry.name, entry.kind) == ("make_net", "factory")
    assert entry.built_as.startswith("make_net({'widths': [12, 24], 'groups': 3}) (from test() at line ")
    # The factory's model covers Net's own ARC903.
    assert not_built == [] and built[0].model.fc2.out_features == 3
    assert not marker.exists()


def test_a_function_that_does_more_than_build_is_never_called(tmp_path, marker):
    path = write(tmp_path, """
class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


def make_and_train(width):
    model = Net(width)
    train(model)
    return model


make_and_train(4) if os.environ.get("NEVER") else None
""")
    d, built, not_built = discover(path)
    assert d.entries == [] and [nb.name for nb in not_built] == ["Net"]
    assert not marker.exists()


def test_unused_blocks_are_not_reported_but_an_unbuilt_model_is(tmp_path, marker):
    path = write(tmp_path, """
class BasicBlock(nn.Module):
    # Needs arguments and no model of the file uses it (senet.py's leftover block).
    def __init__(self, planes):
        super().__init__()
        self.fc = nn.Linear(planes, planes)

    def forward(self, x):
        return self.fc(x)


class Squeeze(nn.Module):
    # Never built nor used anywhere, while the file's model is built: a helper.
    def __init__(self, planes):
        super().__init__()
        self.fc = nn.Linear(planes, planes)

    def forward(self, x):
        return self.fc(x)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


class WideNet(nn.Module):
    # Looks like a model: still reported.
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
""")
    d, built, not_built = discover(path)
    assert [b.name for b in built] == ["Tiny"]
    assert [nb.name for nb in not_built] == ["WideNet"]


def test_a_class_used_by_another_file_of_the_folder_is_a_block(tmp_path, marker):
    write(tmp_path, """
class Mixer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)
""", name="layers.py")
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        from layers import Mixer

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.mix = Mixer(4)

            def forward(self, x):
                return self.mix(x)
    """))
    _, built, not_built = discover(tmp_path / "layers.py")
    assert built == [] and not_built == []


def test_a_found_build_that_raises_is_arc903_at_its_line(tmp_path, marker):
    path = write(tmp_path, """
class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        if width < 0:
            raise ValueError("width must be positive")
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


def test():
    bad = Net(-1)
    good = Net(4)
    train(good)
""")
    d, built, not_built = discover(path)
    assert built == []  # the next candidate, Net(4), is not tried silently
    (nb,) = not_built
    raise_line = line_of(path, "raise ValueError")
    call_line = line_of(path, "bad = Net(-1)")
    assert nb.error_line == raise_line and nb.span.line == line_of(path, "class Net(")
    assert nb.message == (
        f"Net was not built: Net(-1) (from test() at line {call_line}; 1 other build in the file) "
        f"raised at line {raise_line}: ValueError: width must be positive"
    )
    assert not marker.exists()


def test_a_bad_call_points_at_the_call_itself(tmp_path, marker):
    path = write(tmp_path, """
class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


if __name__ == "__main__":
    Net(4, 5)
""")
    _, built, (nb,) = discover(path)
    assert nb.error_line == line_of(path, "Net(4, 5)") and "TypeError" in nb.error


@pytest.mark.parametrize("call", [
    "Net(WIDTH)",            # a module constant: not a definition of the file
    "Net(width)",            # a local variable: the module namespace would resolve it wrongly
    "Net(len('abcd'))",      # a call of something that is not a config or model class
    "Net(Obj().size)",       # an attribute of a call
    "Net(Obj() * 2)",        # an operator of a user object
])
def test_calls_with_other_arguments_are_not_builds(tmp_path, marker, call):
    path = write(tmp_path, f"""
WIDTH = 4


class Obj:
    size = 4

    def __mul__(self, other):
        open(MARKER, "w").write("ran")


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


def test(width=4):
    net = {call}
""")
    d, built, not_built = discover(path)
    assert d.entries == [] and [nb.name for nb in not_built] == ["Net"]
    assert not marker.exists()


def test_configuration_still_wins(tmp_path, marker):
    path = write(tmp_path, CNN + """
def test():
    net = Net(8)
    x = torch.randn(2, 3, 28, 28)
""")
    result = check_file(path, Settings(verify=False, model="Net(2, depth=3)", input_shape="3,28,28"))
    (model,) = result.models
    assert len(model.graph.model.body) == 3 and all(f.built_as is None for f in result.findings)


def test_the_output_names_the_build(tmp_path, marker):
    # Plain deep tanh stack: findings to carry the build in the full and JSON output.
    path = write(tmp_path, """
class Deep(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.layers = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.Tanh())])

    def forward(self, x):
        return self.layers(x)


def test():
    model = Deep(64, 40)
""")
    result = check_file(path, Settings(verify=False))
    assert result.findings, "the deep plain stack yields findings"
    expected = f"Deep(64, 40) (from test() at line {line_of(path, 'model = Deep(')})"
    assert all(f.built_as == expected for f in result.findings)
    ctx = Context(root=str(tmp_path), sources={str(path): path.read_text()})
    assert f"  = built as: {expected}\n" in render("full", result.findings, ctx)
    assert {d["built_as"] for d in json.loads(render("json", result.findings, ctx))} == {expected}
