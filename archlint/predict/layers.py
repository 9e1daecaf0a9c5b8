"""The closed-form rules of layers with parameters or constants: embeddings, Linear and
convolutions, normalisations, and a signal times or plus a constant tensor
(docs/predictor.md, "Propagation"; convolutions and BatchNorm of maps: ``spatial``)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from archlint import metainit
from archlint.graph import Node, OpKind
from archlint.predict.base import _DIV_OPS, _RSUB_OPS, _SUB_OPS, _RecursionBase, _fetch_attr
from archlint.predict.spatial import _batch_norm_map, _conv_map, _conv_tap_index
from archlint.predict.state import _Missing, _Modes, _offset_share, _scalar, _State


class _LayerRules(_RecursionBase):
    """The rules of OpKind EMBEDDING, LINEAR, CONV and NORM, and of MUL / IDENTITY with a constant."""

    def _embedding(self, node: Node) -> _State | _Missing:
        w = node.params.get("weight")
        if node.op == "EmbeddingBag" or w is None or not math.isfinite(w.std):
            return _Missing(f"{node.op}: embedding weights not readable as one table")
        var = w.std**2
        if not self._depends_on_input(node):
            # Looked up with indices that are the same for every sample (positions).
            return _State(M=var + w.mean**2, v=0.0, mean=_systematic_mean(w), N=0.0)
        rows = w.shape[0]
        return _State(M=w.mean**2 + var / rows, v=var * (1 - 1 / rows), mean=_systematic_mean(w), N=var * (1 - 1 / rows))

    def _linear(self, node: Node, ins: list[_State]) -> _State | _Missing:
        if len(ins) != 1:
            return _Missing(f"{node.op} of {len(ins)} signals (a bilinear product)")
        w = node.params.get("weight")
        if w is None or w.fan_in is None:
            return _Missing(f"functional {node.op}: its weight is not a module parameter archlint can read")
        if not (math.isfinite(w.mean) and math.isfinite(w.std)):
            return _Missing(f"{node.op}: weight statistics unavailable (meta device?)")
        fan_in = float(w.fan_in)
        if node.attrs.get("transposed"):
            # A transposed conv's output sums in_channels/groups x kernel/stride inputs
            # (torch's fan_in of its weight counts the output channels instead).
            kernel, stride = node.attrs.get("kernel_size", [1]), node.attrs.get("stride", [1])
            fan_in = w.shape[0] / node.attrs.get("groups", 1) * math.prod(kernel) / math.prod(stride)
        b = node.params.get("bias")
        w_sq = w.std**2 + w.mean**2
        b_sq = b.std**2 + b.mean**2 if b is not None else 0.0
        w_mean, b_mean = _systematic_mean(w), _systematic_mean(b) if b is not None else 0.0
        s = ins[0]
        gain = fan_in * w_sq  # sigma_w^2 of the real weights
        taps = self._conv_taps(node)
        if taps is not None:
            out = _conv_map(s, taps, fan_in / len(taps[0]), w_sq, w_mean, b_sq, b_mean)
        else:
            mean = fan_in * w_mean * s.mean + b_mean
            # E_i (sum_j W_ij m_j + b_i)^2 with the systematic means taken out of the spreads.
            M = mean**2 + fan_in * (w_sq - w_mean**2) * s.M + b_sq - b_mean**2
            out = _State(M=M, v=gain * s.v, mean=mean, N=gain * s.N)
        # A sample's shift along the input offsets moves the weights' part of M, not the bias;
        # a channel's shift sums over the taps like the fluctuations (gain).
        modes = s.modes.mapped(np.diag([_offset_share(out.M, out.M - b_sq), 1.0])) if s.modes is not None else None
        if node.kind is not OpKind.CONV:  # a Linear on a map or a sequence: per position
            return replace(out, modes=self._vector(node, modes))
        return self._on_map(node, out, modes, gain * s.D, gain * s.N_D)

    def _conv_taps(self, node: Node) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]] | None:
        """(input position of each tap at each output position, input and output map shapes)
        of a Conv1d/2d/3d module; None where positions are not modelled (docs/predictor.md):
        other convolutions (transposed, functional), unknown shapes, large maps."""
        conv = node.module
        src = self.graph[node.inputs[0]].shape
        if (node.kind is not OpKind.CONV or not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed
                or src is None or node.shape is None or len(src) != len(node.shape)):
            return None
        return _conv_tap_index(conv, src, node.shape)

    def _norm(self, node: Node, ins: list[_State]) -> _State | _Missing:
        norm = node.attrs.get("norm_type")
        if norm not in ("batch", "layer", "group", "rms"):
            what = {"instance": "instance norm (depends on spatial correlation)"}.get(norm, f"{norm} normalisation")
            return _Missing(f"{what}: not covered by the mean-field recursion")
        affine = self._affine(node)
        if affine is None:
            return _Missing(f"functional {node.op}: affine parameters not readable")
        if not all(math.isfinite(x) for x in affine):
            return _Missing(f"{node.op}: the initial values of its affine parameters are unknown (meta device)")
        g_mean, g_sq, b_mean, b_sq = affine
        eps = float(node.attrs.get("eps", 1e-5))
        s = ins[0]
        if norm == "batch":
            if s.sp is not None:
                out = _batch_norm_map(s.sp, g_mean, g_sq, b_mean, b_sq, eps)
                scale = out.v / s.v if s.v > 0 else 0.0
                channel = s.sp.channel_offsets_sq()
            else:
                # Per-neuron statistics of the data: offsets removed, spread normalised.
                scale = g_sq / (s.v + eps)
                out, channel = _State(M=b_sq, v=scale * s.v, mean=b_mean, N=scale * s.N), s.M
            if s.modes is None:
                return out
            # The offsets become beta's, which no sample's shift moves: the shift m_i b_x is a
            # random pattern over the units now, i.e. fluctuation; on a map, the part a
            # channel has at every position shifts the whole channel (D). A map's offsets
            # that vary over positions (zero-padding borders) stay, and move with b.
            var_b, n_b = s.modes.shift_variances()
            kept = _offset_share(out.M, scale * (s.M - channel)) if s.sp is not None else 0.0
            modes = s.modes.mapped(np.diag([kept, 1.0]))
            D, N_D = scale * (s.D + var_b * channel), scale * (s.N_D + n_b * channel)
            return self._on_map(node, out, modes, D, N_D)
        s = _scalar(s)  # normalised over all units of a sample: positions not modelled
        if norm == "rms":
            r2 = s.M + s.v + eps
            mean = g_mean * s.mean / math.sqrt(r2)
            M = g_sq * s.M / r2 + 2 * mean * b_mean + b_sq
            modes = self._vector(node, _per_sample_normalised(s.modes, s.M, s.v, M, M - b_sq))
            return _State(M=M, v=g_sq * s.v / r2, mean=mean + b_mean, N=g_sq * s.N / r2, modes=modes)
        # layer / group: the per-sample mean over units is the common offset `mean`.
        spread = max(s.M - s.mean**2, 0.0)
        s2 = spread + s.v + eps
        M = g_sq * spread / s2 + b_sq
        modes = self._vector(node, _per_sample_normalised(s.modes, spread, s.v, M, M - b_sq)) if norm == "layer" else None
        return _State(M=M, v=g_sq * s.v / s2, mean=b_mean, N=g_sq * s.N / s2, modes=modes)

    def _affine(self, node: Node) -> tuple[float, float, float, float] | None:
        """(mean g, mean g^2, mean beta, mean beta^2) of a norm's affine parameters."""
        if node.module is None:
            fxn = self.fx_nodes.get(node.name)
            if fxn is None or any(a.op == "get_attr" for a in fxn.all_input_nodes):
                return None
            return 1.0, 1.0, 0.0, 0.0
        g, b = node.params.get("weight"), node.params.get("bias")
        g_stats = (_systematic_mean(g), g.std**2 + g.mean**2) if g is not None else (1.0, 1.0)
        b_stats = (_systematic_mean(b), b.std**2 + b.mean**2) if b is not None else (0.0, 0.0)
        return g_stats + b_stats

    def _constant_op(self, node: Node, ins: list[_State]) -> _State | _Missing:
        """One signal times or plus a constant tensor (layer scale, a bias vector)."""
        ins = [_scalar(x) for x in ins]  # positions not modelled
        if len(ins) != 1:
            what = "matrix product" if node.attrs.get("product") else "product"
            return _Missing(f"{node.op}: {what} of two different signals: not covered by the mean-field recursion")
        fxn = self.fx_nodes.get(node.name)
        consts = [a for a in fxn.all_input_nodes if a.op == "get_attr"] if fxn is not None else []
        others = [a for a in fxn.all_input_nodes if a.op != "get_attr" and a.name not in node.inputs] if fxn is not None else []
        if len(consts) != 1 or others:
            return _Missing(f"{node.op} of a signal with a constant archlint could not read")
        c = _fetch_attr(self.gm, consts[0].target)
        if not isinstance(c, torch.Tensor):
            return _Missing(f"{node.op} of a signal with a non-tensor constant")
        if c.is_meta:
            # A model built on the meta device: the statistics its init asked for.
            known = metainit.stats(c)
            if known is None:
                return _Missing(f"{node.op} of a signal with a constant whose initial values are unknown (meta device)")
            c_mean, c_sq = _systematic(known[0], known[1], c.numel()), known[0] ** 2 + known[1] ** 2
        else:
            c = c.detach().double()
            c_mean, c_sq = _systematic(float(c.mean()), float(c.std(unbiased=False)), c.numel()), float((c * c).mean())
        s = ins[0]
        if node.kind is OpKind.MUL:
            if node.attrs.get("op", node.op) in _DIV_OPS:
                return _Missing(f"{node.op} of a signal by a constant tensor: not read")
            # Independent of which neuron it scales: means scale by E[c], squares by E[c^2].
            return _State(M=c_sq * s.M, v=c_sq * s.v, mean=c_mean * s.mean, N=c_sq * s.N, modes=s.modes,
                          D=c_sq * s.D, N_D=c_sq * s.N_D)
        name = node.attrs.get("op", node.op)
        signal_first = fxn.args and isinstance(fxn.args[0], fx.Node) and fxn.args[0].name == node.inputs[0]
        sign_x = -1.0 if (name in _SUB_OPS and not signal_first) or name in _RSUB_OPS else 1.0
        sign_c = -1.0 if name in _SUB_OPS and signal_first else 1.0
        mean = sign_x * s.mean + sign_c * c_mean
        M = s.M + 2 * sign_x * sign_c * s.mean * c_mean + c_sq
        modes = s.modes.mapped(np.diag([_offset_share(M, s.M + sign_x * sign_c * s.mean * c_mean), 1.0])) if s.modes is not None else None
        return _State(M=M, v=s.v, mean=mean, N=s.N, modes=modes, D=s.D, N_D=s.N_D)


def _per_sample_normalised(modes: _Modes | None, C: float, v: float, M_out: float, weight_part: float) -> _Modes | None:
    """A norm that divides each sample by its own spread C (1 + b)^2 + v (1 + a) (LayerNorm:
    C the offsets' spread around their common offset; RMSNorm: C = M): the relative change
    delta = (2 C b + v a) / (C + v) leaves b - delta / 2, a - delta (a pure scale, a = 2 b,
    is removed); then the affine's bias dilutes b as in a Linear."""
    if modes is None or C + v <= 0:
        return None
    t = C + v
    J = np.array([[v / t, -v / (2 * t)], [-2 * C / t, C / t]])
    return modes.mapped(np.diag([_offset_share(M_out, weight_part), 1.0]) @ J)


def _systematic(mean: float, std: float, numel: int) -> float:
    """``mean`` where it stands out of the sampling noise of a zero-mean tensor, else 0."""
    return mean if abs(mean) > 3 * std / math.sqrt(max(numel, 1)) else 0.0


def _systematic_mean(p: Any) -> float:
    return _systematic(p.mean, p.std, math.prod(p.shape))
