"""The user's model is left as it was: a measurement copies a parameter only before a call that
could write it, and a model that writes its parameters in its forward pass (ten ways of doing
it in Python, traced and eager) gets them back bit for bit; a write no call announced is
reported."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

import archlint.measure.model as measure_model
from archlint.measure import measure
from archlint.state import preserved_state
from archlint.trace import trace
from test_measure import assert_unchanged, gaussian, mlp, snapshot


@pytest.fixture
def guards(monkeypatch):
    """The ParameterGuards of the measurements run while the test runs."""
    seen = []

    @contextmanager
    def recording(model, **kwargs):
        with preserved_state(model, **kwargs) as guard:
            seen.append(guard)
            yield guard

    monkeypatch.setattr(measure_model, "preserved_state", recording)
    return seen


def test_a_model_that_only_reads_its_parameters_has_none_copied(guards):
    model = mlp(4, 32)
    before = snapshot(model)
    measure(model, gaussian(128, 16))
    assert guards and all(g is not None for g in guards)
    assert [g.copied() for g in guards] == [[]] * len(guards)
    assert_unchanged(model, before)


class Writes(nn.Module):
    """A linear layer whose forward pass writes its weight first, in one of several ways;
    ``eager``: a branch on a value, which torch.fx cannot trace (measured eagerly)."""

    def __init__(self, how, eager):
        super().__init__()
        self.how, self.eager = how, eager
        self.lin = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        if self.eager and float(x.detach().abs().sum()) < 0:
            return x
        w = self.lin.weight
        with torch.no_grad():
            if self.how == "data":
                w.data.mul_(0.5)
            elif self.how == "in place":
                w.mul_(0.5)
            elif self.how == "detached alias":
                w.detach().add_(1.0)
            elif self.how == "view":
                w[0].zero_()
            elif self.how == "setitem":
                w[1] = 0.0
            elif self.how == "augmented":  # torch.fx records it as an add
                w += 1.0
            elif self.how == "out":
                torch.mul(w, 0.5, out=w)
            elif self.how == "numpy":
                w.detach().numpy()[:] = 0.25
            elif self.how == "replaced":
                w.data = w.data * 3.0
            elif self.how == "aten":
                torch.ops.aten.mul_.Tensor(w, 2.0)
        return self.out(torch.relu(self.lin(x)))


WAYS = ["data", "in place", "detached alias", "view", "setitem", "augmented", "out", "numpy", "replaced", "aten"]


# Not ("replaced", eager): assigning .data inside torch.func's transforms crashes the process
# in torch 2.13 (a segmentation fault in unpack_dual), with or without archlint's guard.
CASES = [(how, eager) for how in WAYS for eager in (False, True) if (how, eager) != ("replaced", True)]


@pytest.mark.parametrize("how,eager", CASES, ids=[f"{how}-{'eager' if eager else 'fx'}" for how, eager in CASES])
def test_a_parameter_written_by_the_forward_pass_is_put_back(how, eager, guards):
    torch.manual_seed(0)
    model = Writes(how, eager)
    before = snapshot(model)
    x = gaussian(64, 16)
    graph = trace(model, (x[:4],), name="writes")
    if eager:
        assert graph.traced_with == "eager"
    before = snapshot(model)  # tracing ran the model too, and put it back
    measure(model, x, graph=graph)
    assert_unchanged(model, before)
    copied = {name for g in guards for name in g.copied()}
    assert ("lin.weight" in copied) is (graph.traced_with == "eager" or how != "augmented")
    assert not copied & {"out.weight", "out.bias"}  # only read: not copied


def test_embedding_with_max_norm_renormalises_its_weight_and_gets_it_back(guards):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16, max_norm=0.5), nn.Flatten(), nn.Linear(16 * 8, 4))
    before = snapshot(model)
    measure(model, torch.randint(0, 50, (64, 8)))
    assert_unchanged(model, before)
    assert "0.weight" in {name for g in guards for name in g.copied()}


class Unseen(nn.Module):
    """Writes its weight with torch's function handling turned off, so that the write itself
    is not seen; ``through_data``: to the tensor that ``weight.data`` gave, whose version
    counter is not the weight's. (Measured eagerly: torch.fx would record the write as a call
    of the graph.)"""

    def __init__(self, through_data):
        super().__init__()
        self.through_data = through_data
        self.lin = nn.Linear(16, 4)

    def forward(self, x):
        if float(x.detach().abs().sum()) < 0:
            return x
        w = self.lin.weight.data if self.through_data else self.lin.weight
        with torch.no_grad(), torch._C.DisableTorchFunction():
            w.mul_(0.5)
        return self.lin(x)


def test_a_write_that_could_not_be_seen_is_reported_not_hidden():
    with pytest.raises(RuntimeError, match="'lin.weight' was written during the run"):
        measure(Unseen(through_data=False), gaussian(64, 16))


def test_reading_data_copies_the_parameter_first(guards):
    # Nothing else would tell: the write moves no version counter of the weight's.
    model = Unseen(through_data=True)
    before = snapshot(model)
    measure(model, gaussian(64, 16))
    assert_unchanged(model, before)
    assert {name for g in guards for name in g.copied()} == {"lin.weight"}


def test_without_the_guard_every_parameter_is_copied_up_front():
    model = Unseen(through_data=False)
    before = snapshot(model)
    with preserved_state(model) as guard:
        model(gaussian(8, 16))
    assert guard is None
    assert_unchanged(model, before)
