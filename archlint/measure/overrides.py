"""Function overrides during a measurement: dropout off, recurrent kernels with forward-mode
derivatives, and lean tangent rules for convolution, linear layers, batch norm, layer norm,
softmax and LSTMs."""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from archlint.measure.replay import Replay, ReplayedAffine, input_gradient
from archlint.state import ParameterGuard


def _has_tangent(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None


def _fixed_arguments(args: tuple, kwargs: dict) -> bool:
    """Whether a layer's arguments besides its input (weights, bias, options) carry no tangent."""
    return not any(_has_tangent(a) for a in list(args[1:]) + list(kwargs.values()))


def _affine_in_input(x, func, args, kwargs, tangent_func, tangent_args, tangent_kwargs, primal_values=None):
    """y = func(x, *args) for a func that is affine in x, with the tangent its linear part,
    tangent_func(t, *tangent_args) (for convolution and linear: the same call without the
    bias). PyTorch's own forward-mode rules for convolution and linear also convolve the input
    with a zero weight tangent (a third convolution) or copy the tangents. The dual is
    unpacked and made again by hand: an autograd.Function with a jvp rule cost about 0.8 ms a
    call under vmap (its generated vmap rule), more than the 128x512 by 512x512 product of a
    depth-20 MLP's layer. ``primal_values(primal, compute)``: where the value may come from
    (measure.replay)."""
    primal, tangent = fwAD.unpack_dual(x)
    value = (func(primal, *args, **kwargs) if primal_values is None
             else primal_values(primal, lambda: (func(primal, *args, **kwargs),))[0])
    return fwAD.make_dual(value, tangent_func(tangent, *tangent_args, **tangent_kwargs))


def _scale_channels(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The tangent of eval-mode batch norm: a per-channel (dim 1) scale. A plain broadcast
    product: under vmap, F.batch_norm would fold the probes into the channels (a copy)."""
    return t * scale.view([1, -1] + [1] * (t.dim() - 2))


# Up to this ratio of a channel's squared mean to its variance, E[x^2] - E[x]^2 loses at most
# about 3e-5 of the variance to float32 rounding (by hand, 128 x 144 x 32 x 32 Gaussian maps:
# 3e-5 at a ratio of 99, 5e-7 at 1, 2e-7 at 0; PyTorch's kernel 1.5e-7). Above it, in any
# channel, PyTorch's kernel computes the statistics.
CANCELLATION = 100.0


def _row_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Train-mode batch norm's per-channel (dim 1) mean and biased variance of ``x`` by two
    reductions along each row of positions; None where PyTorch's kernel should compute them.

    On a CPU, PyTorch's kernel (native_batch_norm) reads a contiguous (N, C, ...) map one
    channel at a time, at a fraction of the memory's speed; the sum and the squared norm of
    each row read it in order, 3-4x faster: a MobileNetV2 block's expanded map (128 x 144 x 32
    x 32) 42 ms against 15 ms with its normalisation, 128 x 32 x 32 x 32 9.3 against 2.4 ms
    (measured by hand; ``python benchmarks/bench_cost.py --part batchnorm`` times the whole
    measurement both ways). Elsewhere (a GPU, half precision, channels-last, one value per
    channel and sample), or where the variance would cancel (CANCELLATION): None."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() >= 3 and x.is_contiguous()):
        return None
    rows = x.reshape(x.shape[0], x.shape[1], -1)
    count = rows.shape[0] * rows.shape[2]
    mean = rows.sum(2).sum(0) / count
    var = torch.linalg.vector_norm(rows, dim=2).square().sum(0) / count - mean.square()
    if not bool(((mean.square() <= CANCELLATION * var) & var.isfinite()).all()):
        return None
    return mean, var


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-mode batch norm's per-channel (dim 1) mean and biased variance of ``x``
    (``_row_statistics``, else PyTorch's kernel)."""
    found = _row_statistics(x)
    if found is not None:
        return found
    _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, 0.0)
    return mean, invstd.pow(-2)


def batch_norm_train(x: torch.Tensor, weight, bias, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """native_batch_norm in train mode without running statistics: (value, mean, inverse
    standard deviation). With ``_row_statistics``, the eval-mode kernel normalises; else
    PyTorch's train-mode kernel does it all (in half precision it keeps its statistics in
    float32 inside, where a variance written in float16 could overflow)."""
    found = _row_statistics(x)
    if found is None:
        return torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
    mean, var = found
    out = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled)
    return out, mean, torch.rsqrt(var + eps)


def _batch_norm_train(x, weight, bias, eps, eval_from, primal_values=None):
    """Batch normalisation with the statistics of the batch, with a lean tangent rule.

    With batch means <.> per channel, xhat = (x - mu) / sigma and s = gamma / sigma:
        dy = s * (dx - <dx> - xhat * <dx * xhat>).
    That is also the formula of its gradient (the Jacobian is symmetric within a channel), so
    PyTorch's fused batch-norm backward kernel computes the tangent in one pass over the data;
    PyTorch's forward-mode rule takes about six and materialises zero tangents for the running
    statistics. The dual is made by hand, as in _affine_in_input. ``primal_values(primal,
    compute)``: where the value and statistics may come from (measure.replay)."""
    primal, tangent = fwAD.unpack_dual(x)

    def compute():
        return batch_norm_train(primal, weight, bias, eps)

    out, mean, invstd = compute() if primal_values is None else primal_values(primal, compute)
    return fwAD.make_dual(out, _BatchNormTangent.apply(tangent, primal, weight, mean, invstd, eps, eval_from))


class _BatchNormTangent(torch.autograd.Function):
    """The train-mode batch-norm tangent through the fused backward kernel, one probe at a
    time under vmap: that kernel's own batching rule is several times slower.

    Probes from ``eval_from`` on (None: none) take the population rule instead: the batch
    statistics held fixed, a per-channel scale (see plan._fusable)."""

    @staticmethod
    def forward(x_t, x, weight, mean, invstd, eps, eval_from):
        if eval_from == 0:
            return _scale_channels(x_t, invstd if weight is None else invstd * weight)
        return torch.ops.aten.native_batch_norm_backward(x_t, x, weight, None, None, mean, invstd, True, eps, [True, False, False])[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, *args):
        size = info.batch_size
        eval_from = args[-1]
        per_probe = [
            _BatchNormTangent.apply(*(a.select(d, k) if d is not None else a for a, d in zip(args[:-1], in_dims)),
                                    None if eval_from is None or k < eval_from else 0)
            for k in range(size)
        ]
        return torch.stack(per_probe), 0


class _BatchNormEitherRule(torch.autograd.Function):
    """Train-mode batch norm in a reverse-mode pass (measure.deflate) whose backward takes
    the batch rule, or, while the mode's ``population_backward`` is set, the population rule:
    the batch's statistics (biased variance, as in training) held fixed, a per-channel scale.
    The forward is the same for both, so one forward pass serves the reverse passes of the
    batch value and of the population value."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, mode, kept=None):
        """``kept``: the value, mean and inverse standard deviation kept from the main pass
        (measure.replay), else computed."""
        if kept is None:
            out, mean, invstd = batch_norm_train(x, weight, bias, eps)
        else:
            out, mean, invstd = kept[0].detach(), kept[1], kept[2]  # a new alias: the graph attaches to it
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.mode = eps, mode
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        if ctx.mode.population_backward:
            grad_x = _scale_channels(grad, invstd if weight is None else invstd * weight)
        else:
            grad_x = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, ctx.eps,
                                                               [True, False, False])[0]
        return grad_x, None, None, None, None, None


def _layer_norm(x, normalized_shape, weight, bias, eps):
    """Layer normalisation with a lean tangent rule. With row means <.> over the normalised
    dimensions, xhat = (x - mu) * rstd: dy = weight * rstd * (dx - <dx> - xhat * <dx * xhat>).
    Without the weight that is also the formula of the gradient (the Jacobian is symmetric
    within a row), so PyTorch's fused backward kernel computes it in one pass; PyTorch's
    forward-mode rule takes several passes and copies, about three times as long on a GPT's
    128x64x128 activations with 2 probes."""
    primal, tangent = fwAD.unpack_dual(x)
    out, mean, rstd = torch.native_layer_norm(primal, normalized_shape, weight, bias, eps)
    tangent = torch.ops.aten.native_layer_norm_backward(tangent, primal, normalized_shape, mean, rstd, None, None,
                                                        [True, False, False])[0]
    return fwAD.make_dual(out, tangent if weight is None else tangent * weight)


def _softmax(x, dim):
    """Softmax with a lean tangent rule: dy = y * (dx - <y * dx>), the sum along dim. That is
    also the formula of its gradient (the Jacobian diag(y) - y y^T is symmetric), so
    PyTorch's fused backward kernel computes it in one pass; PyTorch's forward-mode rule
    takes four (a 128x4x64x64 attention map with 2 probes: 6.4 ms against 15.0 ms)."""
    primal, tangent = fwAD.unpack_dual(x)
    out = torch.softmax(primal, dim)
    return fwAD.make_dual(out, torch._softmax_backward_data(tangent, out, dim, primal.dtype))


def _lstm(args, kwargs):
    """torch.lstm (the unpacked form nn.LSTM calls) with a lean tangent rule; None where it
    does not apply (packed sequences, projections, tangents on the state or the weights,
    dropout in train mode), and the caller falls back to PyTorch's own rule.

    PyTorch's forward-mode rule needs its step-by-step recurrent kernel (oneDNN's fused one
    has none) and differentiates every elementwise operation of every step. Here each layer
    and direction takes one product for the input's share of all steps' gates, then per step
    one product with the recurrent weights for the values and, after them, one for the
    tangents of all probes at once (_lstm_layer)."""
    if kwargs or len(args) != 9 or not isinstance(args[1], (list, tuple)):
        return None
    x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
    directions = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if (len(hx) != 2 or len(params) != num_layers * directions * per or x.dim() != 3 or (train and dropout > 0)
            or any(_has_tangent(t) for t in list(hx) + list(params))):
        return None
    hidden = params[1].shape[1]
    if any(params[k * per + 1].shape != (4 * hidden, hidden) for k in range(num_layers * directions)):
        return None  # projections (proj_size): another recurrence
    primal, tangent = fwAD.unpack_dual(x)
    if batch_first:
        primal, tangent = primal.transpose(0, 1), tangent.transpose(0, 1)
    h_n, c_n, dh_n, dc_n = [], [], [], []
    for layer in range(num_layers):
        outs, douts = [], []
        for d in range(directions):
            k = layer * directions + d
            weights = params[k * per:(k + 1) * per]
            seq, dseq = (primal, tangent) if d == 0 else (primal.flip(0), tangent.flip(0))
            out, h, c, dout, dh, dc = _lstm_layer(seq, dseq, hx[0][k], hx[1][k], weights)
            outs.append(out if d == 0 else out.flip(0))
            douts.append(dout if d == 0 else dout.flip(0))
            h_n.append(h)
            c_n.append(c)
            dh_n.append(dh)
            dc_n.append(dc)
        primal, tangent = torch.cat(outs, -1), torch.cat(douts, -1)
    if batch_first:
        # Contiguous, as the fused kernel returns it: a layer after it folds its rows into one
        # matrix product instead of a batched one.
        primal, tangent = primal.transpose(0, 1).contiguous(), tangent.transpose(0, 1).contiguous()
    return (fwAD.make_dual(primal, tangent), fwAD.make_dual(torch.stack(h_n), torch.stack(dh_n)),
            fwAD.make_dual(torch.stack(c_n), torch.stack(dc_n)))


def _rows_times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w for x of shape (T, B, n) as one matrix product over all T * B rows (a batched
    product otherwise, several times slower under vmap)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


def _lstm_layer(seq, dseq, h0, c0, weights):
    """One layer and direction, time first (see _lstm). PyTorch's gate order: input, forget,
    cell, output. The input's share of the gates of all steps is one product; then the values
    go step by step, one product with the recurrent weights each, as the fused kernel's do; then
    the tangents, for all probes at once. Taking the values from the fused kernel instead meant
    computing the gates again from its outputs: two more products over the whole sequence."""
    w_ih, w_hh = weights[0], weights[1]
    from_input = _rows_times(seq, w_ih.T)
    if len(weights) == 4:
        from_input = from_input + (weights[2] + weights[3])
    hidden = w_hh.shape[1]
    w_hh_t = w_hh.T
    h, c = h0, c0
    outs, cells, tanh_cells, activated = [], [], [], []
    for t in range(seq.shape[0]):
        gates = torch.addmm(from_input[t], h, w_hh_t)
        # sigmoid for the input, forget and output gates, tanh for the cell's.
        act = gates.sigmoid()
        act[:, 2 * hidden:3 * hidden] = gates[:, 2 * hidden:3 * hidden].tanh()
        i, f, g, o = act.chunk(4, -1)
        c = torch.addcmul(f * c, i, g)
        tanh_c = c.tanh()
        h = o * tanh_c
        outs.append(h)
        cells.append(c)
        tanh_cells.append(tanh_c)
        activated.append(act)
    out, cell, tanh_cell = torch.stack(outs), torch.stack(cells), torch.stack(tanh_cells)
    i, f, g, o = torch.stack(activated).chunk(4, -1)
    cell_before = torch.cat([c0[None], cell[:-1]])
    # d gates = (dx W_ih^T + dh_prev W_hh^T) * gate_slopes; dh = do * tanh(c) + to_h * dc.
    gate_slopes = torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], -1)
    to_h = o * (1 - tanh_cell * tanh_cell)
    d_from_input = _rows_times(dseq, w_ih.T)
    dh = dc = None
    douts = []
    for t in range(seq.shape[0]):
        dgates = d_from_input[t] if dh is None else torch.addmm(d_from_input[t], dh, w_hh_t)
        di, df, dg, do = (dgates * gate_slopes[t]).chunk(4, -1)
        dc_new = torch.addcmul(torch.addcmul(df * cell_before[t], di, g[t]), i[t], dg)
        dc = dc_new if dc is None else torch.addcmul(dc_new, f[t], dc)
        dh = torch.addcmul(do * tanh_cell[t], to_h[t], dc)
        douts.append(dh)
    return out, h, c, torch.stack(douts), dh, dc


_AFFINE_FUNCS = {F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
# The calls whose values a plan keeps and replays (measure.replay): the affine layers, and batch
# norm where it uses the batch's statistics (its value, mean and inverse standard deviation).
_REPLAYED = _AFFINE_FUNCS | {F.batch_norm}
_SOFTMAX_FUNCS = {F.softmax, torch.softmax, torch.Tensor.softmax}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout}
# Activations with an ``inplace`` flag. In place, forward mode also updates the input's
# tangent in place, about five times the cost of the out-of-place rule (a ReLU on a
# 128x32x32x32 map with 3 probes: 45 ms more than out of place, 10 ms): for a thin
# full-resolution CNN a sixth of the measurement. Run out of place where nothing else can
# see the input (see _MeasureMode.private).
_INPLACE_ACTIVATIONS = {F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.celu, F.selu, F.silu, F.hardswish,
                        F.hardsigmoid, F.mish, F.threshold, F.rrelu}
_SIGNATURES: dict[Any, inspect.Signature] = {}
_BN_ARGS = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
# The oneDNN (mkldnn) recurrent kernels have no forward-mode derivative; PyTorch's own have.
# cuDNN's are turned off too, assuming they lack one as well (unchecked: no GPU was at hand).
_RNN_FUNCS = {torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu}


class _MeasureMode(TorchFunctionMode):
    """Dropout off (fx bakes ``training=True`` into functional calls), recurrent layers on
    kernels that have forward-mode derivatives, and cheaper tangent rules for the layers that
    dominate the cost: convolutions, linear layers and batch norm."""

    # Probes from this index on take the population rule of train-mode batch norm (set by
    # the runner around a pass; None: all probes take the batch rule).
    eval_from: int | None = None
    # A reverse-mode pass is running (runner.reverse): train-mode batch norm takes a backward
    # that follows ``population_backward`` (_BatchNormEitherRule).
    reverse: bool = False
    population_backward: bool = False

    def __init__(self, guard: ParameterGuard | None = None) -> None:
        super().__init__()
        # Copies each parameter before the first call that could write it (archlint.state):
        # every call of the model's code passes through here first.
        self.guard = guard
        # The kept values of the layers, while a plan replays them (measure.replay).
        self.replay: Replay | None = None
        # Tensors (by id, with a weak reference to check it is still the same one) that no
        # one else holds or views: the runner marks them from the graph. An in-place
        # activation of one runs out of place, the same values and tangents.
        self.private: dict[int, weakref.ref] = {}

    def mark_private(self, t: torch.Tensor) -> None:
        self.private[id(t)] = weakref.ref(t)

    def _out_of_place(self, func, args, kwargs):
        """(args, kwargs) of the out-of-place call of an in-place activation of a private
        tensor; None when it is not one."""
        if func not in _INPLACE_ACTIVATIONS or not args:
            return None
        ref = self.private.pop(id(args[0]), None)
        if ref is None or ref() is not args[0]:
            return None
        sig = _SIGNATURES.get(func)
        if sig is None:
            sig = _SIGNATURES[func] = inspect.signature(func)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:
            return None
        if not bound.arguments.get("inplace"):
            return None
        bound.arguments["inplace"] = False
        return bound.args, bound.kwargs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.guard is not None:
            self.guard.before(func, args, kwargs)
        if func in _DROPOUT_FUNCS:
            return args[0] if args else kwargs["input"]
        if self.private:
            call = self._out_of_place(func, args, kwargs)
            if call is not None:
                return func(*call[0], **call[1])
        if func is torch.lstm and args and _has_tangent(args[0]):
            lean = _lstm(args, kwargs)
            if lean is not None:
                return lean
        if func in _RNN_FUNCS:
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
                return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            if "dropout_p" in kwargs:
                kwargs = {**kwargs, "dropout_p": 0.0}
            elif len(args) > 4:
                args = args[:4] + (0.0,) + tuple(args[5:])
        if func in _SOFTMAX_FUNCS and args and _has_tangent(args[0]) and len(args) <= 2 and set(kwargs) <= {"dim", "_stacklevel", "dtype"}:
            dim = args[1] if len(args) == 2 else kwargs.get("dim")
            if dim is not None and kwargs.get("dtype") is None:
                return _softmax(args[0], dim)
        if func is F.layer_norm and args and _has_tangent(args[0]):
            ln = dict(zip(("normalized_shape", "weight", "bias", "eps"), args[1:]), **kwargs)
            if not (_has_tangent(ln.get("weight")) or _has_tangent(ln.get("bias"))):
                return _layer_norm(args[0], tuple(ln["normalized_shape"]), ln.get("weight"), ln.get("bias"), ln.get("eps", 1e-5))
        primal_values = key = None
        if self.replay is not None and func in _REPLAYED and args:
            # Every call is numbered, whether its value is replayed or not (measure.replay).
            replay, x = self.replay, args[0]
            weight = dict(zip(_BN_ARGS, args[1:]), **kwargs).get("weight") if func is F.batch_norm else (
                args[1] if len(args) > 1 else kwargs.get("weight"))
            key = replay.key(func, weight)

            def primal_values(primal, compute):
                return replay.values(key, weight, primal, compute)

            if func in _AFFINE_FUNCS and not _has_tangent(x) and _fixed_arguments(args, kwargs):
                if not (torch.is_grad_enabled() and x.requires_grad):
                    return primal_values(x, lambda: (func(*args, **kwargs),))[0]
                # A reverse-mode pass (runner.reverse): the kept value, the layer's input
                # gradient backward.
                gradient = input_gradient(func, x, tuple(args[1:]), kwargs)
                kept = replay.take(key, weight, x) if gradient is not None else None
                return func(*args, **kwargs) if kept is None else ReplayedAffine.apply(x, kept[0], gradient)
        if (func in _AFFINE_FUNCS or func is F.batch_norm) and args and _has_tangent(args[0]):
            if func in _AFFINE_FUNCS and _fixed_arguments(args, kwargs):
                rest, tangent_rest = tuple(args[1:]), list(args[1:])
                tangent_kwargs = dict(kwargs)
                if len(tangent_rest) >= 2:
                    tangent_rest[1] = None  # the bias: linear(x, w, b), conv*(x, w, b, ...)
                if "bias" in tangent_kwargs:
                    tangent_kwargs["bias"] = None
                return _affine_in_input(args[0], func, rest, kwargs, func, tuple(tangent_rest), tangent_kwargs, primal_values)
            if func is F.batch_norm:
                bn = dict(zip(_BN_ARGS, args[1:]), **kwargs)
                weight, bias, eps = bn.get("weight"), bn.get("bias"), bn.get("eps", 1e-5)
                if not (_has_tangent(weight) or _has_tangent(bias)):
                    if bn.get("training", False):
                        return _batch_norm_train(args[0], weight, bias, eps, self.eval_from, primal_values)
                    rest = (bn["running_mean"], bn["running_var"], weight, bias, False, 0.0, eps)
                    scale = torch.rsqrt(bn["running_var"] + eps)
                    if weight is not None:
                        scale = scale * weight
                    return _affine_in_input(args[0], F.batch_norm, rest, {}, _scale_channels, (scale,), {})
        if func is F.batch_norm and args:
            bn = dict(zip(_BN_ARGS, args[1:]), **kwargs)
            weight, bias, eps = bn.get("weight"), bn.get("bias"), bn.get("eps", 1e-5)
            if bn.get("training", False) and self.reverse:
                kept = self.replay.take(key, weight, args[0]) if key is not None else None
                return _BatchNormEitherRule.apply(args[0], weight, bias, eps, self, kept)
            if bn.get("training", False) and not any(map(_has_tangent, (args[0], weight, bias))):
                # The values a pass with tangents computes (batch_norm_train), whatever pass
                # computes them: a segment's pass before its start, a pass without probes.
                return batch_norm_train(args[0], weight, bias, eps)[0]
        return func(*args, **kwargs)
