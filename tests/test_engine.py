"""One file end to end through the engine: discovery, isolation, graphs and spans."""

from __future__ import annotations

import textwrap
from pathlib import Path

from archlint.config import Settings
from archlint.engine import check_file
from archlint.graph import OpKind


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


STATIC = Settings(verify=False)


def graphs(result):
    return {m.name: m.graph for m in result.models}


def test_classes_and_factories_discovered_and_main_never_called(tmp_path):
    marker = tmp_path / "main_ran"
    path = write(tmp_path, "net.py", f'''
        import torch.nn as nn

        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)
            def forward(self, x):
                return x + self.fc(x)

        class ResNetish(nn.Module):
            def __init__(self, blocks, width=8):
                super().__init__()
                self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
            def forward(self, x):
                return self.blocks(x)

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 2)
            def forward(self, x):
                return self.fc(x)

        def resnetish3():
            return ResNetish(3)

        def main():
            open({str(marker)!r}, "w").write("trained")
            return Tiny()

        if __name__ == "__main__":
            main()
    ''')
    result = check_file(path, STATIC)
    assert sorted(graphs(result)) == ["Tiny", "resnetish3"]
    assert not marker.exists()
    # ResNetish is built by the factory: no ARC903 (nor any other analysis diagnostic).
    assert [f.code for f in result.findings if f.is_meta] == []


def test_sibling_and_package_imports(tmp_path):
    write(tmp_path, "pyproject.toml", "[project]\nname = 'x'\n")
    write(tmp_path, "models/__init__.py", "")
    write(tmp_path, "models/parts.py", '''
        import torch.nn as nn
        class Part(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)
            def forward(self, x):
                return self.fc(x)
    ''')
    relative = write(tmp_path, "models/net.py", '''
        import torch.nn as nn
        from .parts import *
        class UsesRelative(nn.Module):
            def __init__(self):
                super().__init__()
                self.part = Part()
            def forward(self, x):
                return self.part(x)
    ''')
    absolute = write(tmp_path, "models/net2.py", '''
        import torch.nn as nn
        from models.parts import Part
        class UsesAbsolute(nn.Module):
            def __init__(self):
                super().__init__()
                self.part = Part()
            def forward(self, x):
                return self.part(x)
    ''')
    for path, name in ((relative, "UsesRelative"), (absolute, "UsesAbsolute")):
        result = check_file(path, STATIC)
        assert result.findings == [], result.findings
        graph = graphs(result)[name]
        fc = next(n for n in graph if n.kind == OpKind.LINEAR)
        # The Linear was built in parts.py: its span points there, at the line to edit.
        assert fc.span.path == str(tmp_path / "models" / "parts.py") and fc.span.line == 6


def test_two_same_named_files_do_not_see_each_other(tmp_path):
    paths = []
    for root, width in (("a", 3), ("b", 5)):
        write(tmp_path / root, "setup.py", "")
        write(tmp_path / root, "models/__init__.py", "")
        write(tmp_path / root, "models/blocks.py", f'''
            import torch.nn as nn
            WIDTH = {width}
            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(WIDTH, WIDTH)
                def forward(self, x):
                    return self.fc(x)
        ''')
        paths.append(write(tmp_path / root, "models/resnet.py", '''
            import torch.nn as nn
            from models.blocks import Block
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.block = Block()
                def forward(self, x):
                    return self.block(x)
        '''))
    shapes = []
    for path in paths:
        (graph,) = graphs(check_file(path, STATIC)).values()
        fc = next(n for n in graph if n.kind == OpKind.LINEAR)
        shapes.append(fc.params["weight"].shape)
        assert fc.span.path.startswith(str(path.parent))
    assert shapes == [(3, 3), (5, 5)]


def test_graph_has_kinds_params_and_forward_order(tmp_path):
    path = write(tmp_path, "cnn.py", '''
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class SmallCNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding=1)
                self.bn = nn.BatchNorm2d(8)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(8, 10)

            def forward(self, x):
                h = F.relu(self.bn(self.conv(x)))
                h = h + self.conv(x) * 0.5
                return self.fc(torch.flatten(self.pool(h), 1))
    ''')
    (graph,) = graphs(check_file(path, STATIC)).values()
    kinds = [n.kind for n in graph]
    assert kinds[0] == OpKind.INPUT and graph.inputs[0].shape[1:] == (3, 32, 32)
    assert [k for k in kinds if k not in (OpKind.INPUT,)] == [
        OpKind.CONV, OpKind.NORM, OpKind.ACTIVATION, OpKind.CONV, OpKind.MUL, OpKind.ADD,
        OpKind.POOL, OpKind.RESHAPE, OpKind.LINEAR,
    ]
    conv = graph["conv"]
    assert conv.params["weight"].shape == (8, 3, 3, 3) and conv.params["weight"].fan_in == 27
    assert conv.module_path == "conv" and conv.span.line == 9
    relu = next(n for n in graph if n.kind == OpKind.ACTIVATION)
    assert relu.span.line == 15 and relu.module_path is None
    add = next(n for n in graph if n.kind == OpKind.ADD)
    assert add.span.line == 16 and len(add.inputs) == 2
    assert graph.output == graph.nodes[-1].name


def test_untraceable_model_still_yields_a_graph(tmp_path):
    path = write(tmp_path, "gpt.py", '''
        import torch.nn as nn

        class TinyGPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.block_size = 128
                self.emb = nn.Embedding(100, 32)
                self.ln = nn.LayerNorm(32)
                self.head = nn.Linear(32, 100)

            def forward(self, idx):
                b, t = idx.size()
                assert t <= self.block_size, f"sequence too long: {t}"
                return self.head(self.ln(self.emb(idx)))
    ''')
    result = check_file(path, STATIC)
    assert [f.code for f in result.findings] == ["ARC901"]
    assert "TraceError" in result.findings[0].message or "control flow" in result.findings[0].message
    graph = graphs(result)["TinyGPT"]
    assert graph.traced_with == "eager"
    assert [n.kind for n in graph if n.kind != OpKind.INPUT][-3:] == [OpKind.EMBEDDING, OpKind.NORM, OpKind.LINEAR]
    assert graph["head"].span.line == 10 and graph.output == "head"
