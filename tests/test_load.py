"""archlint.load: importing a model file in isolation, discovering and building its models."""

import os
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from archlint import load  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "load"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if needle in text:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def names_under(root: Path) -> list[str]:
    """Modules in sys.modules loaded from ``root``."""
    prefix = os.path.join(os.path.realpath(root), "")
    found = []
    for name, mod in list(sys.modules.items()):
        locs = [getattr(mod, "__file__", None)]
        try:
            locs += list(getattr(mod, "__path__", None) or ())
        except TypeError:  # torch's _classes namespace has an __path__ that cannot iterate
            pass
        if any(isinstance(loc, str) and os.path.realpath(loc).startswith(prefix) for loc in locs):
            found.append(name)
    return found


def build(path: Path):
    with load.isolated_import(path) as module:
        discovery = load.discover(module, str(path))
        built, not_built = load.build_all(discovery)
        return module, discovery, built, not_built


# --------------------------------------------------------------------------------------
# Importing


def test_relative_star_import_inside_a_package():
    path = DATA / "pkg" / "model.py"
    with load.isolated_import(path) as module:
        assert module.__name__ == "pkg.model"
        assert module.ConvBlock.__module__ == "pkg.parts"
        out = module.Net()(torch.randn(2, 3, 8, 8))
        assert out.shape == (2, 10)
    assert not {"pkg", "pkg.model", "pkg.parts"} & set(sys.modules)


BLOCKS = """
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear({dim}, {dim})

        def forward(self, x):
            return self.fc(x)

    class {only}(nn.Module):
        def forward(self, x):
            return x
"""

RESNET = """
    from torch import nn
    from models.blocks import Block, {only}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.extra = {only}()

        def forward(self, x):
            return self.extra(self.block(x))
"""


def make_repo(root: Path, dim: int, only: str, package: bool) -> Path:
    files = {
        "pyproject.toml": "[project]\nname = 'x'\n",
        "models/blocks.py": BLOCKS.format(dim=dim, only=only),
        "models/resnet.py": RESNET.format(only=only),
    }
    if package:
        files["models/__init__.py"] = ""
    write(root, files)
    return root / "models" / "resnet.py"


@pytest.mark.parametrize("package", [True, False], ids=["package", "namespace"])
def test_sibling_import_from_the_repo_root(tmp_path, package):
    path = make_repo(tmp_path, 4, "OnlyInA", package)
    with load.isolated_import(path) as module:
        assert module.__name__ == ("models.resnet" if package else "resnet")
        assert module.Net()(torch.randn(3, 4)).shape == (3, 4)
    assert names_under(tmp_path) == []


@pytest.mark.parametrize("package", [True, False], ids=["package", "namespace"])
def test_same_named_files_in_two_roots_see_their_own_siblings(tmp_path, package):
    path_a = make_repo(tmp_path / "a", 4, "OnlyInA", package)
    path_b = make_repo(tmp_path / "b", 6, "OnlyInB", package)
    with load.isolated_import(path_a) as a:
        assert a.Net().block.fc.in_features == 4
        assert Path(sys.modules["models.blocks"].__file__).is_relative_to(tmp_path / "a")
    # Without cleanup, b's `from models.blocks import Block, OnlyInB` would hit a's module.
    with load.isolated_import(path_b) as b:
        assert b.Net().block.fc.in_features == 6
        assert Path(sys.modules["models.blocks"].__file__).is_relative_to(tmp_path / "b")
    assert names_under(tmp_path) == []


def test_foreign_module_of_the_same_name_is_moved_aside_and_restored(tmp_path):
    path = make_repo(tmp_path / "repo", 4, "OnlyInA", package=True)
    foreign = types.ModuleType("models")
    foreign.__file__ = str(tmp_path / "elsewhere" / "models" / "__init__.py")
    foreign.__path__ = [str(tmp_path / "elsewhere" / "models")]
    foreign_blocks = types.ModuleType("models.blocks")
    sys.modules["models"], sys.modules["models.blocks"] = foreign, foreign_blocks
    try:
        with load.isolated_import(path) as module:
            assert sys.modules["models"] is not foreign
            assert module.Net().block.fc.in_features == 4
        assert sys.modules["models"] is foreign
        assert sys.modules["models.blocks"] is foreign_blocks
    finally:
        del sys.modules["models"], sys.modules["models.blocks"]


def test_main_block_does_not_run():
    with load.isolated_import(DATA / "classes.py") as module:
        assert module.__name__ == "classes"
        assert module.MAIN_RAN is False


def test_sys_path_and_sys_modules_are_restored(tmp_path):
    # colorsys stands for a stdlib module imported lazily meanwhile: it must survive.
    saved_colorsys = sys.modules.pop("colorsys", None)
    path = make_repo(tmp_path, 4, "OnlyInA", package=False)
    (tmp_path / "models" / "blocks.py").write_text("import colorsys\n" + (tmp_path / "models" / "blocks.py").read_text())
    sys_path = list(sys.path)
    before = set(sys.modules)
    try:
        with load.isolated_import(path):
            assert sys.path[:2] == [str(tmp_path / "models"), str(tmp_path)]
            assert {"resnet", "models", "models.blocks"} <= set(sys.modules)
        assert sys.path == sys_path
        assert set(sys.modules) - before == {"colorsys"}
        assert not list(tmp_path.rglob("__pycache__"))
    finally:
        if saved_colorsys is not None:
            sys.modules["colorsys"] = saved_colorsys


# --------------------------------------------------------------------------------------
# Import errors


def load_error(path: Path) -> load.LoadError:
    sys_path = list(sys.path)
    with pytest.raises(load.LoadError) as info:
        with load.isolated_import(path):
            pass
    assert sys.path == sys_path
    assert names_under(path.parent.parent) == []
    return info.value


def test_syntax_error_in_the_file(tmp_path):
    bad = "class Net(torch.nn.Module:"
    write(tmp_path, {"net.py": f"import torch\n\n{bad}\n    pass\n"})
    err = load_error(tmp_path / "net.py")
    assert err.span.line == 3
    assert err.span.col == bad.index(":")  # where Python saw the error, not column 0
    assert err.message.startswith("SyntaxError")


def test_syntax_error_in_a_sibling_points_at_the_import(tmp_path):
    write(tmp_path, {
        "pyproject.toml": "",
        "models/__init__.py": "",
        "models/blocks.py": "x = 1\ndef broken(:\n    pass\n",
        "models/net.py": "import torch\n\nif True:\n    from models.blocks import broken\n",
    })
    err = load_error(tmp_path / "models" / "net.py")
    assert (err.span.line, err.span.col) == (4, 4)
    assert "SyntaxError" in err.message and "blocks.py:2" in err.message


def test_exception_at_import_points_at_the_innermost_line_of_the_file(tmp_path):
    write(tmp_path, {"net.py": """\
        import torch

        def setup():
            raise ValueError("no GPU configured")

        setup()
    """})
    err = load_error(tmp_path / "net.py")
    assert (err.span.line, err.span.col) == (4, 4)
    assert "ValueError: no GPU configured" in err.message


def test_exception_in_a_sibling_names_its_file_and_line(tmp_path):
    write(tmp_path, {
        "helpers.py": "X = 1\nY = 1 / 0\n",
        "net.py": "import torch\nfrom helpers import X\n",
    })
    err = load_error(tmp_path / "net.py")
    assert err.span.line == 2
    assert "ZeroDivisionError" in err.message and "helpers.py:2" in err.message


def test_missing_dependency(tmp_path):
    write(tmp_path, {"net.py": "import torch\nimport archlint_no_such_package_xyz\n"})
    err = load_error(tmp_path / "net.py")
    assert err.span.line == 2
    assert "ModuleNotFoundError" in err.message and "archlint_no_such_package_xyz" in err.message


def test_sys_exit_at_import_becomes_a_load_error(tmp_path):
    write(tmp_path, {"net.py": "import sys\nimport torch\n\nsys.exit(3)\n"})
    err = load_error(tmp_path / "net.py")
    assert err.span.line == 4
    assert "SystemExit" in err.message and "3" in err.message


# --------------------------------------------------------------------------------------
# Discovery and building


def test_discovers_no_argument_classes_with_name_spans():
    path = DATA / "classes.py"
    with load.isolated_import(path) as module:
        d = load.discover(module, str(path))
    # Block is a component of MLP: checked as part of it, never built on its own.
    assert [(e.name, e.kind) for e in d.entries] == [("MLP", "class"), ("Broken", "class")]
    mlp = d.entries[0]
    line = line_of(path, "class MLP(")
    assert (mlp.span.line, mlp.span.col, mlp.span.end_line, mlp.span.end_col) == (line, 6, line, 9)
    # ConvNet needs arguments; Mixin has no forward and is not a model.
    assert [(c.cls.__name__, c.missing) for c in d.needs_args] == [("ConvNet", ["channels", "depth"])]


def test_a_block_whose_model_needs_arguments_is_not_checked_on_its_own(tmp_path):
    # kuangliu's ShuffleNetV2: ShuffleBlock() builds, but alone it is a channel permutation
    # whose input cannot be inferred (a false ARC904); the model gets ARC903 instead.
    path = tmp_path / "shuffle.py"
    path.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class ShuffleBlock(nn.Module):
            def __init__(self, groups=2):
                super().__init__()
                self.groups = groups

            def forward(self, x):
                n, c, h, w = x.shape
                return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

        class Unit(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.conv = nn.Conv2d(channels, channels, 3, padding=1)
                self.shuffle = ShuffleBlock()

            def forward(self, x):
                return self.shuffle(torch.relu(self.conv(x)))

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.stem = nn.Conv2d(3, width, 3, padding=1)
                self.units = nn.Sequential(Unit(width), Unit(width))

            def forward(self, x):
                return self.units(self.stem(x)).mean((2, 3))
    """))
    with load.isolated_import(path) as module:
        d = load.discover(module, str(path))
    assert d.entries == []
    assert [c.cls.__name__ for c in d.needs_args] == ["Net"]


def test_classes_that_refer_to_each_other_are_still_checked(tmp_path):
    path = tmp_path / "mutual.py"
    path.write_text(textwrap.dedent("""
        from torch import nn

        class A(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x) if not isinstance(x, B) else x

        class B(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x) if not isinstance(x, A) else x
    """))
    with load.isolated_import(path) as module:
        d = load.discover(module, str(path))
    assert [e.name for e in d.entries] == ["A", "B"]


def test_build_all_reports_only_top_level_models_and_what_needs_arguments():
    path = DATA / "classes.py"
    _, _, built, not_built = build(path)
    # Block builds too, but it is a submodule of MLP.
    assert [b.name for b in built] == ["MLP"]
    assert isinstance(built[0].model, nn.Module) and built[0].model.inp.in_features == 8
    by_name = {nb.name: nb for nb in not_built}
    assert set(by_name) == {"ConvNet", "Broken"}

    convnet = by_name["ConvNet"]
    assert convnet.missing == ["channels", "depth"]
    assert convnet.span.line == line_of(path, "class ConvNet(")
    assert '--model "ConvNet(channels=..., depth=...)"' in convnet.message
    assert "[[tool.archlint.models]]" in convnet.message and "classes.py" in convnet.message

    broken = by_name["Broken"]
    assert broken.missing == [] and broken.error.startswith("RuntimeError")
    assert broken.error_line == line_of(path, "self.fc = nn.Linear(4, width)")
    assert f"line {broken.error_line}" in broken.message


def test_factories_are_found_statically_and_side_effects_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("ARCHLINT_TEST_MARKER", str(marker))
    path = DATA / "factories.py"
    module, d, built, not_built = build(path)
    assert [(e.name, e.kind) for e in d.entries] == [
        ("resnet4", "factory"), ("resnet6", "factory"), ("classifier", "factory"), ("default_config", "factory"),
    ]
    assert d.entries[0].span.line == line_of(path, "def resnet4(")
    assert (d.entries[0].span.col, d.entries[0].span.end_col) == (4, 11)
    # main(), sneaky() and opens_file() take no arguments but do more than build a model.
    assert module.TRAINED is False and not marker.exists()
    # resnet4 is a part of classifier; default_config returns no nn.Module.
    assert [b.name for b in built] == ["resnet6", "classifier"]
    assert type(built[0].model).__name__ == "ResNet" and built[0].model.fc.out_features == 5
    # BasicBlock and ResNet need arguments, but the factories build them: no ARC903.
    assert not_built == []


def test_factory_detection_rules(tmp_path):
    write(tmp_path, {"net.py": """\
        import torch
        from torch import nn

        STATE = []

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x)

        def with_args(width):
            return Net(width)

        def defaults(width=4, *args, **kwargs):
            return Net(width)

        def calls_a_function():
            STATE.append(1)
            return Net(4)

        def calls_torch():
            torch.manual_seed(0)
            return Net(4)

        def has_a_loop():
            for _ in range(2):
                pass
            return Net(4)

        def local_shadow():
            Net = STATE.append
            return Net(4)

        def to_module():
            return Net(4).double()
    """})
    module, d, built, not_built = build(tmp_path / "net.py")
    assert [e.name for e in d.entries] == ["defaults"]
    assert module.STATE == []
    assert [b.name for b in built] == ["defaults"] and not_built == []


def test_a_factory_that_only_builds_a_class_with_its_defaults_is_that_class(tmp_path):
    # The same model twice would report each finding twice; a factory that passes arguments
    # or does more than build is a model of its own.
    write(tmp_path, {"net.py": """\
        from torch import nn

        class Net(nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.fc = nn.Linear(width, width)

            def forward(self, x):
                return self.fc(x)

        def make():
            return Net()

        def make_named():
            \"\"\"The default net.\"\"\"
            model = Net()
            return model

        def wider():
            return Net(8)

        def changed():
            model = Net()
            model.fc = nn.Linear(4, 2)
            return model
    """})
    _, d, built, not_built = build(tmp_path / "net.py")
    assert [(e.name, e.kind) for e in d.entries] == [("Net", "class"), ("wider", "factory"), ("changed", "factory")]
    assert [b.name for b in built] == ["Net", "wider", "changed"] and not_built == []


def test_no_buildable_class_gives_only_the_top_level_arc903():
    _, _, built, not_built = build(DATA / "gpt.py")
    assert built == []
    # Block needs a config too, but GPT uses it: only GPT is the model to configure.
    assert [(nb.name, nb.missing) for nb in not_built] == [("GPT", ["config"])]


def test_explicit_expression():
    path = DATA / "gpt.py"
    with load.isolated_import(path) as module:
        entry = load.explicit_entry(module, str(path), "GPT(GPTConfig(n_layer=1))", "torch.zeros(2, 8, dtype=torch.long)")
        assert (entry.kind, entry.span.line, entry.inputs) == ("explicit", 1, "torch.zeros(2, 8, dtype=torch.long)")
        built, not_built = load.build_all(load.Discovery(entries=[entry]))
    assert not_built == [] and len(built) == 1
    assert len(built[0].model.h) == 1
    assert built[0].name == "GPT"
    assert built[0].span.line == line_of(path, "class GPT(") and built[0].span.col == 6


def test_explicit_statements_assigning_model():
    path = DATA / "gpt.py"
    with load.isolated_import(path) as module:
        entry = load.explicit_entry(module, str(path), "cfg = GPTConfig()\ncfg.n_layer = 2\nmodel = GPT(cfg)", None)
        model = entry.build()
        assert len(model.h) == 2
        assert not hasattr(module, "cfg") and not hasattr(module, "model")


def test_explicit_errors():
    path = DATA / "gpt.py"
    with load.isolated_import(path) as module:
        with pytest.raises(load.BuildError, match="never assigns `model`"):
            load.explicit_entry(module, str(path), "cfg = GPTConfig()\nnet = GPT(cfg)", None)
        with pytest.raises(load.BuildError, match="not valid Python"):
            load.explicit_entry(module, str(path), "GPT(", None)
        with pytest.raises(load.BuildError, match="GPTConfig, not an nn.Module"):
            load.explicit_entry(module, str(path), "GPTConfig()", None).build()
        # Not defined in this file: the span stays at line 1.
        entry = load.explicit_entry(module, str(path), "nn.Linear(2, 3)", None)
        assert isinstance(entry.build(), nn.Linear) and entry.span.line == 1
        # A build that raises is reported, not raised.
        bad = load.explicit_entry(module, str(path), "GPT(GPTConfig(n_embd=-1))", None)
        built, not_built = load.build_all(load.Discovery(entries=[bad]))
    assert built == [] and len(not_built) == 1 and "RuntimeError" in not_built[0].message


def test_explicit_build_of_a_factory_function_is_named_and_located_at_it(tmp_path):
    # MLP-Mixer's reference code: a function of the file that returns an nn.Sequential.
    path = tmp_path / "mixer.py"
    path.write_text(
        "from torch import nn\n"
        "\n"
        "def MLPMixer(*, dim, depth):\n"
        "    return nn.Sequential(*[nn.Linear(dim, dim) for _ in range(depth)])\n"
    )
    for build in ("MLPMixer(dim=4, depth=2)", "d = 4\nmodel = MLPMixer(dim=d, depth=2)"):
        with load.isolated_import(path) as module:
            entry = load.explicit_entry(module, str(path), build, None)
            built, not_built = load.build_all(load.Discovery(entries=[entry]))
        assert not_built == [] and isinstance(built[0].model, nn.Sequential)
        assert (built[0].name, built[0].span.line, built[0].span.col) == ("MLPMixer", 3, 4)


def test_a_function_that_needs_arguments_to_return_a_model_is_the_model_to_configure(tmp_path):
    path = tmp_path / "mixer.py"
    path.write_text(textwrap.dedent('''\
        from torch import nn

        class PreNormResidual(nn.Module):
            def __init__(self, dim, fn):
                super().__init__()
                self.fn, self.norm = fn, nn.LayerNorm(dim)

            def forward(self, x):
                return self.fn(self.norm(x)) + x

        def conv3x3(c_in, c_out):  # a helper the model calls: not a model of its own
            return nn.Conv2d(c_in, c_out, 3, padding=1)

        def MLPMixer(*, dim, depth):
            assert depth > 0
            return nn.Sequential(conv3x3(3, dim), *[PreNormResidual(dim, nn.Linear(dim, dim)) for _ in range(depth)])

        def make_optimizer(params, lr):  # returns no model
            return None
    '''))
    with load.isolated_import(path) as module:
        discovery = load.discover(module, str(path))
        built, not_built = load.build_all(discovery)
    assert built == []
    # Was "PreNormResidual was not built: its constructor needs arguments dim, fn".
    assert [(nb.name, nb.missing, nb.span.line) for nb in not_built] == [("MLPMixer", ["dim", "depth"], 14)]
    assert 'it needs arguments dim, depth; configure it with --model "MLPMixer(dim=..., depth=...)"' in not_built[0].message
