"""archlint.sourcemap: every module and functional op maps to the line a user would change.

Expected spans are computed by searching the model files under tests/data/sourcemap/ for the
exact source text the span must cover, so each assertion pins line, start column, end line
and end column.
"""

import gc
import importlib.util
import os
import weakref

import pytest
import torch
import torch.fx as fx
from torch import nn

from archlint.graph import Span
from archlint.sourcemap import (
    RawPosition,
    SourceIndex,
    call_span,
    construction_span,
    index_for,
    record_constructions,
    to_span,
    user_call_site,
)

torch.set_num_threads(1)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sourcemap")
NETS = os.path.join(DATA, "nets.py")
FORWARDS = os.path.join(DATA, "forwards.py")
FAKELIB = os.path.join(DATA, "fakelib.py")


def load(path):
    name = "sourcemap_data_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nets = load(NETS)
forwards = load(FORWARDS)
fakelib = load(FAKELIB)


def where(path, snippet, within=None):
    """The Span covering ``snippet`` in ``path`` (character columns); with ``within``, the
    snippet's occurrence inside that (unique) larger piece of text."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    context = snippet if within is None else within
    assert text.count(context) == 1, f"{context!r} must occur exactly once in {path}"
    start = text.index(context) + context.index(snippet)
    end = start + len(snippet)

    def line_col(offset):
        before = text[:offset]
        return before.count("\n") + 1, offset - (before.rfind("\n") + 1)

    (line, col), (end_line, end_col) = line_col(start), line_col(end)
    return Span(path, line, col, end_line, end_col)


def site_span(sites, root, path):
    module = root.get_submodule(path)
    pos = sites.get(module)
    assert pos is not None, f"no construction site recorded for {path!r}"
    return construction_span(pos)


@pytest.fixture(scope="module")
def net_sites():
    with record_constructions() as sites:
        net = nets.Net()
    return net, sites


@pytest.fixture(scope="module")
def resnet_sites():
    with record_constructions() as sites:
        model = nets.resnetish()
    return model, sites


# --------------------------------------------------------------------------------------
# construction sites


def test_nested_user_class_maps_to_its_assignment_in_the_owner(net_sites):
    net, sites = net_sites
    # Block itself: the `Block(8)` call in Net.__init__, not `super().__init__()` in Block.
    assert site_span(sites, net, "block") == where(NETS, "self.block = Block(8)")
    # The Linear inside Block: Block's own statement.
    assert site_span(sites, net, "block.fc") == where(NETS, "self.fc = nn.Linear(width, width)")
    # Submodules torch builds internally map to the user's call of the library module.
    attn = where(NETS, "self.attn = nn.MultiheadAttention(width, 2)")
    assert site_span(sites, net, "block.attn") == attn
    assert site_span(sites, net, "block.attn.out_proj") == attn


def test_sequential_literal_elements_get_their_own_calls(net_sites):
    net, sites = net_sites
    assert site_span(sites, net, "features") == where(
        NETS,
        "self.features = nn.Sequential(\n"
        "            nn.Conv2d(3, 8, 3),\n"
        "            nn.ReLU(),\n"
        "            nn.Conv2d(8, 16, 3), nn.Tanh(),\n"
        "        )",
    )
    assert site_span(sites, net, "features.0") == where(NETS, "nn.Conv2d(3, 8, 3)")
    assert site_span(sites, net, "features.1") == where(NETS, "nn.ReLU()")
    # Two elements on one line: told apart by column.
    assert site_span(sites, net, "features.2") == where(NETS, "nn.Conv2d(8, 16, 3)")
    assert site_span(sites, net, "features.3") == where(NETS, "nn.Tanh()")


def test_modules_built_in_a_loop_map_to_the_call_in_append(net_sites):
    net, sites = net_sites
    call = where(NETS, "nn.Linear(8, 8)", within="layers.append(nn.Linear(8, 8))")
    assert len(net.loop) == 4
    for i in range(4):
        assert site_span(sites, net, f"loop.{i}") == call
    assert site_span(sites, net, "loop") == where(NETS, "self.loop = nn.ModuleList(layers)")


def test_modules_built_in_a_list_comprehension(net_sites):
    net, sites = net_sites
    for i in range(3):
        assert site_span(sites, net, f"comp.{i}") == where(NETS, "nn.Linear(8, 8, bias=False)")
    assert site_span(sites, net, "comp") == where(
        NETS, "self.comp = nn.ModuleList([nn.Linear(8, 8, bias=False) for _ in range(3)])"
    )


def test_make_layer_helper_method_resnet_style(resnet_sites):
    model, sites = resnet_sites
    assert site_span(sites, model, "conv1") == where(
        NETS, "self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)"
    )
    stage = where(NETS, "nn.Sequential(*layers)")
    assert site_span(sites, model, "layer1") == stage
    assert site_span(sites, model, "layer2") == stage
    first = where(NETS, "BasicBlock(self.inplanes, planes, stride, downsample)")
    rest = where(
        NETS,
        "BasicBlock(self.inplanes, planes)",
        within="append(BasicBlock(self.inplanes, planes))",
    )
    assert site_span(sites, model, "layer1.0") == first
    assert site_span(sites, model, "layer2.1") == rest
    conv1 = where(NETS, "self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)")
    for path in ("layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"):
        assert site_span(sites, model, path) == conv1
    assert site_span(sites, model, "layer2.0.downsample.0") == where(
        NETS, "nn.Conv2d(self.inplanes, planes, 1, stride, bias=False)"
    )
    assert site_span(sites, model, "layer2.0.downsample.1") == where(
        NETS, "nn.BatchNorm2d(planes)", within="nn.BatchNorm2d(planes),"
    )


def test_module_level_helper_function(net_sites):
    net, sites = net_sites
    assert site_span(sites, net, "stem") == where(
        NETS, "nn.Sequential(conv, nn.BatchNorm2d(cout))"
    )
    assert site_span(sites, net, "stem.1") == where(
        NETS, "nn.BatchNorm2d(cout)", within="conv, nn.BatchNorm2d(cout)"
    )
    # Assigned to a local, not to self: the call, not the statement.
    assert site_span(sites, net, "stem.0") == where(NETS, "nn.Conv2d(cin, cout, 1)")


def test_annotated_parenthesised_and_multiline_attribute_calls(net_sites):
    net, sites = net_sites
    assert site_span(sites, net, "head") == where(NETS, "self.head: nn.Linear = nn.Linear(8, 2)")
    assert site_span(sites, net, "wrapped") == where(NETS, "self.wrapped = (nn.LayerNorm(8))")
    # A method call spanning lines: Python reports it from `Linear` on the second line, so
    # no call starts there; the statement is still found (by the call's end).
    raw = sites.get(net.chained)
    linear = where(NETS, "Linear(4, 4)", within=".Linear(4, 4))")
    assert (raw.line, raw.col) == (linear.line, linear.col)
    assert site_span(sites, net, "chained") == where(
        NETS, "self.chained = (layers_api\n                        .Linear(4, 4))"
    )


def test_non_ascii_lines_use_character_columns(net_sites):
    net, sites = net_sites
    second = where(NETS, "nn.Linear(3, 2)")
    raw = sites.get(net.get_submodule("größe.1"))
    # The interpreter counts UTF-8 bytes: "ö" and "ß" take two each.
    assert raw.col == second.col + 2
    assert site_span(sites, net, "größe.1") == second
    assert site_span(sites, net, "größe") == where(
        NETS, "self.größe = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))"
    )


def test_top_level_model_maps_to_the_caller_line():
    with record_constructions() as sites:
        net = nets.Block(4)
    span = construction_span(sites.get(net))
    # Split so that the searched text occurs once in this file: on the line above.
    assert span == where(__file__, "nets." + "Block(4)")


def test_deepcopied_clones_fall_back_to_nearest_recorded_ancestor(net_sites):
    net, sites = net_sites
    clone = net.get_submodule("encoder.layers.0.linear1")
    assert sites.get(clone) is None
    pos = sites.find(net, "encoder.layers.0.linear1")
    # encoder.layers, built inside TransformerEncoder.__init__: the user's encoder call.
    assert pos == sites.get(net.encoder)
    assert construction_span(pos).line == where(NETS, "self.encoder = nn.TransformerEncoder(").line
    # A recorded module is its own answer; a bad path still finds the root.
    assert sites.find(net, "block.fc") is sites.get(net.block.fc)
    assert sites.find(net, "no.such.path") is sites.get(net)


# --------------------------------------------------------------------------------------
# the patch itself


def test_init_is_restored_after_exit_and_after_an_exception():
    original = nn.Module.__dict__["__init__"]
    with record_constructions():
        assert nn.Module.__dict__["__init__"] is not original
    assert nn.Module.__dict__["__init__"] is original

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        with record_constructions():
            Boom()
    assert nn.Module.__dict__["__init__"] is original
    with pytest.raises(KeyError):
        with record_constructions():
            raise KeyError("x")
    assert nn.Module.__dict__["__init__"] is original


def test_nested_contexts_both_record_and_unwind_in_order():
    original = nn.Module.__dict__["__init__"]
    with record_constructions() as outer:
        a = nn.Linear(2, 2)
        with record_constructions() as inner:
            b = nn.Linear(2, 2)
        c = nn.Linear(2, 2)
        # Back to the outer recorder's wrapper, which still records.
        assert nn.Module.__dict__["__init__"] is not original
    assert nn.Module.__dict__["__init__"] is original
    assert outer.get(a) and outer.get(b) and outer.get(c)
    assert inner.get(b) == outer.get(b)
    assert inner.get(a) is None and inner.get(c) is None
    assert outer.get(c).line == where(__file__, "c = " + "nn.Linear(2, 2)").line


def test_modules_built_outside_the_context_are_not_recorded():
    before = nn.Linear(2, 2)
    with record_constructions() as sites:
        inside = nn.Linear(2, 2)
    after = nn.Linear(2, 2)
    assert sites.get(inside) is not None
    assert sites.get(before) is None
    assert sites.get(after) is None
    assert len(sites) == 1


def test_recording_does_not_change_the_model():
    torch.manual_seed(0)
    plain = nets.resnetish()
    torch.manual_seed(0)
    with record_constructions():
        recorded = nets.resnetish()
    a, b = plain.state_dict(), recorded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [type(m) for m in plain.modules()] == [type(m) for m in recorded.modules()]


def test_sites_hold_no_strong_reference():
    with record_constructions() as sites:
        model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert len(sites) == 3
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert len(sites) == 0


# --------------------------------------------------------------------------------------
# call sites in forward


FAKE_LIBRARY = """
from archlint.sourcemap import user_call_site

def library_call(x):
    return helper(x)

def helper(x):
    return user_call_site()
"""


def test_user_call_site_skips_library_like_frames():
    namespace = {}
    exec(compile(FAKE_LIBRARY, "<fake-library>", "exec"), namespace)
    model = forwards.FakeModel(namespace["library_call"])
    # The innermost user instruction is the call in forward, not anything in the library.
    pos = model.forward(torch.ones(1))
    assert pos.path == FORWARDS
    assert call_span(pos) == where(FORWARDS, "self.library_call(z)")


def test_extra_skip_treats_a_users_file_or_directory_as_library():
    # Without extra_skip, the probe's own file is user code.
    pos = forwards.FakeModel(fakelib.probe).forward(torch.ones(1))
    assert call_span(pos) == where(FAKELIB, "user_call_site()")
    expected = where(FORWARDS, "self.library_call(z)")
    pos = forwards.FakeModel(fakelib.probe_skipping_me).forward(torch.ones(1))
    assert call_span(pos) == expected

    def probe_skipping_dir(x):
        return user_call_site(extra_skip=[DATA, __file__])

    # With the data directory and this file skipped, only pytest's frames (site-packages)
    # and the stdlib remain: no user frame at all.
    assert forwards.FakeModel(probe_skipping_dir).forward(torch.ones(1)) is None


class SiteTracer(fx.Tracer):
    """The way archlint's tracer uses user_call_site: at node creation time."""

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        # This test file is user code too; skip it so forward is the innermost user frame.
        node.meta["site"] = user_call_site(extra_skip=(__file__,))
        return node


def test_functional_ops_map_to_their_expression_in_forward():
    graph = SiteTracer().trace(forwards.Functional())
    spans = {n.name: call_span(n.meta["site"]) for n in graph.nodes if n.meta["site"]}
    assert spans["fc"] == where(FORWARDS, "self.fc(x)")
    assert spans["relu"] == where(FORWARDS, "F.relu(y)")
    assert spans["tanh"] == where(FORWARDS, "torch.tanh(a)")
    assert spans["relu_1"] == where(FORWARDS, "b.relu()")
    assert spans["add"] == where(FORWARDS, "a + c")
    assert spans["add_1"] == where(FORWARDS, "d += y")
    assert spans["mul"] == where(FORWARDS, "d * 0.5")
    assert spans["sigmoid"] == where(FORWARDS, "torch\n             .sigmoid(e)")
    # Python reports this one from `clamp` on; it is widened to the whole call expression.
    raw = next(n for n in graph.nodes if n.name == "clamp").meta["site"]
    clamp = where(FORWARDS, "clamp(min=0)")
    assert (raw.line, raw.col) == (clamp.line, clamp.col)
    assert spans["clamp"] == where(FORWARDS, "f\n             .clamp(min=0)")


# --------------------------------------------------------------------------------------
# SourceIndex


def test_span_for_call_picks_the_smallest_enclosing_expression():
    index = index_for(FORWARDS)
    inner = where(FORWARDS, "a + c")
    # A position on the `c` of `a + c`: the enclosing binary operation.
    pos = RawPosition(FORWARDS, inner.line, inner.col + 4, inner.line, inner.col + 5)
    assert index.span_for_call(pos) == inner
    # Nested calls: a position on the `cout` of `nn.Sequential(conv, nn.BatchNorm2d(cout))`
    # gets the inner call, not the Sequential around it.
    inner = where(NETS, "nn.BatchNorm2d(cout)")
    cout = where(NETS, "cout", within="nn.BatchNorm2d(cout)")
    pos = RawPosition(NETS, cout.line, cout.col, cout.end_line, cout.end_col)
    assert index_for(NETS).span_for_call(pos) == inner
    # No op encloses the `return` keyword: the position comes back as given.
    ret = where(FORWARDS, "return g")
    pos = RawPosition(FORWARDS, ret.line, ret.col, ret.line, ret.col + 6)
    assert index.span_for_call(pos) == Span(FORWARDS, ret.line, ret.col, ret.line, ret.col + 6)


def test_span_for_construction_without_a_call_returns_the_position():
    index = index_for(NETS)
    line = where(NETS, "layers = []")
    pos = RawPosition(NETS, line.line, line.col, line.line, line.col + 6, "construction")
    expected = Span(NETS, line.line, line.col, line.line, line.col + 6)
    assert index.span_for_construction(pos) == expected


def test_definition_spans_point_at_the_name():
    index = index_for(NETS)
    assert index.definition_span("Net") == _name_span("class Net(", "Net")
    assert index.definition_span("Outer.Inner") == _name_span("class Inner(", "Inner")
    assert index.definition_span("resnetish") == _name_span("def resnetish(", "resnetish")
    make_layer = _name_span("def _make_layer(", "_make_layer")
    assert index.definition_span("ResNetish._make_layer") == make_layer
    assert index.definition_span(nets.factory().__qualname__) == _name_span("class Local(", "Local")
    assert index.definition_span("Nope") is None


def _name_span(statement, name):
    s = where(NETS, statement)
    col = s.col + statement.index(name)
    return Span(NETS, s.line, col, s.line, col + len(name))


def test_line_text_and_cache(tmp_path):
    index = index_for(NETS)
    line = where(NETS, "self.block = Block(8)").line
    assert index.line_text(line) == "        self.block = Block(8)"
    assert index.line_text(0) == "" and index.line_text(10_000) == ""
    assert index_for(NETS) is index

    path = tmp_path / "m.py"
    path.write_text("import torch\nx = torch.relu(y)\n")
    first = index_for(str(path))
    assert index_for(str(path)) is first
    path.write_text("import torch\n\nx = torch.relu(y)\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-grained filesystems
    second = index_for(str(path))
    assert second is not first
    assert second.line_text(3) == "x = torch.relu(y)"
    assert index_for(str(tmp_path / "missing.py")) is None


def test_unparsable_file_still_gives_spans(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n    x = g(1)\n")
    index = SourceIndex(str(path))
    pos = RawPosition(str(path), 2, 8, 2, 12, "call")
    assert index.span_for_call(pos) == Span(str(path), 2, 8, 2, 12)
    assert index.line_text(2) == "    x = g(1)"


def test_to_span_dispatches_on_kind_and_survives_missing_files(net_sites):
    net, sites = net_sites
    pos = sites.get(net.block.fc)
    assert pos.kind == "construction"
    assert to_span(pos) == where(NETS, "self.fc = nn.Linear(width, width)")
    # Read as a call site, the same position is just the call.
    assert to_span(pos._replace(kind="call")) == where(NETS, "nn.Linear(width, width)")
    gone = RawPosition("/nonexistent/model.py", 3, 4, 3, 9, "call")
    assert to_span(gone) == Span("/nonexistent/model.py", 3, 4, 3, 9)


def test_definition_names_after_odd_spacing_and_non_ascii(tmp_path):
    path = tmp_path / "odd.py"
    path.write_text(
        'label = "é"; x = 1\n'
        "class  \\\n    Wide:\n    pass\n"
        "async   def fetch(): pass\n"
        's = "ü"; y = torch.relu(x)\n',
        encoding="utf-8",
    )
    index = SourceIndex(str(path))
    assert index.definition_span("Wide") == Span(str(path), 3, 4, 3, 8)
    assert index.definition_span("fetch") == Span(str(path), 5, 12, 5, 17)
    # ast counts bytes; spans count characters ("ü" is two bytes).
    assert index.span_for_call(RawPosition(str(path), 6, 14, 6, 27)) == Span(str(path), 6, 13, 6, 26)
