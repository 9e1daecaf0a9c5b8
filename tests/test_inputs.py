"""archlint.inputs: inferring example inputs from the first layer, and making batches."""

from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)

from archlint import inputs, load  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "load"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def infer_and_run(model: nn.Module, batch_size: int = 4):
    """Infer the spec, make a batch and check the model really accepts it."""
    spec = inputs.infer_inputs(model)
    batch = inputs.make_batch(spec, batch_size, gen())
    model.eval()
    with torch.no_grad():
        model(*batch)
    return spec, batch


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        # Declared before the conv, used after it: only the fx trace knows the order.
        self.head = nn.Linear(16, 10)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace this: the fallback takes the first leaf module
            x = -x
        return self.conv(x)


def test_conv2d_gives_an_image():
    spec, (x,) = infer_and_run(ConvNet())
    (arg,) = spec.args
    assert (arg.shape, arg.family, arg.dtype) == ((3, 32, 32), "image", torch.float32)
    assert x.shape == (4, 3, 32, 32)
    assert spec.describe() == "float32[B,3,32,32] (image)"


def test_untraceable_model_falls_back_to_the_first_leaf_module():
    spec, (x,) = infer_and_run(DataDependent())
    assert spec.args[0].shape == (1, 32, 32)


def test_linear_gives_a_vector_and_follows_the_model_dtype():
    with load.isolated_import(DATA / "classes.py") as module:
        spec, (x,) = infer_and_run(module.MLP())
    assert (spec.args[0].shape, spec.args[0].family) == ((8,), "vector")
    spec64 = inputs.infer_inputs(nn.Sequential(nn.Linear(5, 2)).double())
    assert inputs.make_batch(spec64, 2, gen())[0].dtype == torch.float64


def test_embedding_gives_token_ids_below_the_vocabulary_size():
    with load.isolated_import(DATA / "gpt.py") as module:
        model = module.GPT(module.GPTConfig(vocab_size=37))
        spec, (idx,) = infer_and_run(model, batch_size=8)
    arg = spec.args[0]
    assert (arg.shape, arg.family, arg.high, arg.dtype) == ((64,), "tokens", 37, torch.int64)
    assert idx.dtype == torch.int64 and idx.shape == (8, 64)
    assert 0 <= idx.min() and idx.max() < 37 and len(idx.unique()) > 30


def test_time_major_lstm_puts_the_batch_second():
    with load.isolated_import(DATA / "rnn.py") as module:
        spec, (x,) = infer_and_run(module.SeqClassifier(), batch_size=5)
    arg = spec.args[0]
    assert (arg.shape, arg.family, arg.batch_first) == ((32, 10), "sequence", False)
    assert x.shape == (32, 5, 10)
    assert spec.describe() == "float32[32,B,10] (sequence, time-major)"


def test_batch_first_gru():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(6, 8, batch_first=True)

        def forward(self, x):
            return self.gru(x)[0]

    spec, (x,) = infer_and_run(Tagger(), batch_size=3)
    assert x.shape == (3, 32, 6)


def test_two_required_forward_arguments_cannot_be_inferred():
    with load.isolated_import(DATA / "rnn.py") as module:
        with pytest.raises(inputs.InputInferenceError, match="--inputs") as info:
            inputs.infer_inputs(module.RNNModel())
    assert "input, hidden" in str(info.value)


def test_no_recognisable_first_layer():
    with pytest.raises(inputs.InputInferenceError, match="--input-shape"):
        inputs.infer_inputs(nn.Sequential(nn.ReLU(), nn.Tanh()))


def test_parse_input_shape():
    assert inputs.parse_input_shape("3,32,32").args[0] == inputs.ArgSpec((3, 32, 32), torch.float32, "image")
    assert inputs.parse_input_shape("10").args[0].family == "vector"
    assert inputs.parse_input_shape("16, 8").args[0].family == "sequence"
    for bad in ("3,x", "0,4", ""):
        with pytest.raises(inputs.InputsError):
            inputs.parse_input_shape(bad)


@pytest.mark.parametrize("spec", [
    inputs.parse_input_shape("3,16,16"),
    inputs.parse_input_shape("12"),
    inputs.InputSpec((inputs.ArgSpec((20,), torch.int64, "tokens", high=9),)),
    inputs.InputSpec((inputs.ArgSpec((7, 4), family="sequence", batch_first=False),)),
], ids=["image", "vector", "tokens", "sequence"])
def test_make_batch_is_deterministic(spec):
    a = inputs.make_batch(spec, 6, gen(1))
    b = inputs.make_batch(spec, 6, gen(1))
    c = inputs.make_batch(spec, 6, gen(2))
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])


def neighbour_correlation(x: torch.Tensor) -> float:
    left, right = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    return torch.corrcoef(torch.stack([left, right]))[0, 1].item()


def test_images_are_spatially_correlated_and_standardised():
    (x,) = inputs.make_batch(inputs.parse_input_shape("3,32,32"), 64, gen())
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-5)
    assert neighbour_correlation(x) > 0.5
    assert abs(neighbour_correlation(torch.randn(64, 3, 32, 32, generator=gen()))) < 0.05


def test_eval_inputs_sees_the_module_namespace_torch_and_model():
    with load.isolated_import(DATA / "rnn.py") as module:
        model = module.RNNModel()
        args = inputs.eval_inputs("(torch.randint(0, 50, (35, 16)), model.init_hidden(16))", module, model)
        assert len(args) == 2 and args[0].shape == (35, 16)
        out, _ = model(*args)
        assert out.shape == (35, 16, 50)
        # A class of the file is in scope; a single tensor becomes a 1-tuple.
        (x,) = inputs.eval_inputs("torch.zeros(2, 3) + len(RNNModel.__name__)", module, model)
        assert x.shape == (2, 3) and x[0, 0] == len("RNNModel")


def test_eval_inputs_errors_name_the_expression_and_the_exception():
    model = nn.Linear(2, 2)
    with load.isolated_import(DATA / "rnn.py") as module:
        with pytest.raises(inputs.InputsError, match=r"torch\.rand\(2, 3\) \+ nope.*NameError"):
            inputs.eval_inputs("torch.rand(2, 3) + nope", module, model)
        with pytest.raises(inputs.InputsError, match="SyntaxError"):
            inputs.eval_inputs("torch.rand(2,", module, model)


def test_token_length_fits_the_smallest_embedding_table():
    class TinyGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(500, 16)
            self.pos = nn.Embedding(24, 16)

        def forward(self, idx):
            return self.tok(idx) + self.pos(torch.arange(idx.shape[1]))

    (arg,) = inputs.infer_inputs(TinyGPT()).args
    assert arg.family == "tokens" and arg.shape == (24,) and arg.high == 500
    (arg,) = inputs.infer_inputs(nn.Sequential(nn.Embedding(500, 16))).args
    assert arg.shape == (64,)
