"""The rules of ops that combine or rearrange signals: sums, average pooling (global pooling
of a map with what a sample shifts at every position) and reshapes and concatenations
(docs/predictor.md, "Propagation" and "Finite width")."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from archlint.graph import Node
from archlint.predict.base import _RSUB_OPS, _SUB_OPS, _RecursionBase
from archlint.predict.spatial import _Spatial, _classes, _uniform_map
from archlint.predict.state import _Missing, _State, _combined_modes, _scalar

_CONCAT_OPS = {"cat", "concat", "stack"}
# Reshapes that take a second tensor only for its shape or dtype.
_SHAPE_LIKE_OPS = {"view_as", "type_as", "expand_as", "reshape_as"}


class _SignalRules(_RecursionBase):
    """The rules of OpKind ADD (of different signals), POOL and RESHAPE."""

    def _add(self, node: Node, ins: list[_State]) -> _State | _Missing:
        fxn = self.fx_nodes.get(node.name)
        if fxn is not None and fxn.kwargs.get("alpha", 1) != 1:
            return _Missing("torch.add with alpha: not read")
        name = node.attrs.get("op", node.op)
        signs = [1.0] * len(ins)
        if name in _SUB_OPS and len(ins) == 2:
            signs = [1.0, -1.0]
        elif name in _RSUB_OPS and len(ins) == 2:
            signs = [-1.0, 1.0]
        maps = self._maps(node, ins)
        scalars = [_scalar(s) for s in ins]
        mean = sum(sg * s.mean for sg, s in zip(signs, scalars))
        # Independent branches: the per-neuron offsets around the common offset add in
        # square, and so do the fluctuations, the linearised variances and channel shifts.
        spread = sum(max(s.M - s.mean**2, 0.0) for s in scalars)
        M, v = mean**2 + spread, sum(s.v for s in scalars)
        if maps is not None:
            # Each input's statistics on the classes of the sum (pairs of the inputs' classes).
            cls, count, keys = _classes(np.stack([m.cls for m in maps]))
            parts = [(m.mu[k], m.Q[np.ix_(k, k)], m.v[k], m.N[k]) for m, k in zip(maps, keys)]
            mu = sum(sg * p[0] for sg, p in zip(signs, parts))
            Q = np.outer(mu, mu) + sum(p[1] - np.outer(p[0], p[0]) for p in parts)
            out = _Spatial(maps[0].shape, cls, count, mu, Q, sum(p[2] for p in parts), sum(p[3] for p in parts)).state()
        else:
            out = _State(M=M, v=v, mean=mean, N=sum(s.N for s in scalars))
        # A sample's shift of each input, projected on the sum's offsets (the branches'
        # offsets are uncorrelated but for their common offsets); fluctuation variances add.
        parts = []
        for k, (sg, s) in enumerate(zip(signs, scalars)):
            others = sum(sg2 * s2.mean for j, (sg2, s2) in enumerate(zip(signs, scalars)) if j != k)
            share = (s.M + sg * s.mean * others) / M if M > 0 else 0.0
            parts.append((s.modes, np.diag([share, s.v / v if v > 0 else 0.0])))
        return self._on_map(node, out, _combined_modes(parts), sum(s.D for s in scalars), sum(s.N_D for s in scalars))

    def _maps(self, node: Node, ins: list[_State]) -> list[_Spatial] | None:
        """The inputs' maps, where one has a map and all have this node's shape."""
        shapes = [self.graph[i].shape for i in node.inputs]
        with_map = [s.sp for s in ins if s.sp is not None]
        if not with_map or any(sh != node.shape for sh in shapes):
            return None
        shape = with_map[0].shape
        if any(m.shape != shape for m in with_map):
            return None
        return [s.sp if s.sp is not None else _uniform_map(s, shape) for s in ins]

    def _pool(self, node: Node, ins: list[_State]) -> _State | _Missing:
        kind = node.attrs.get("pool")
        if kind != "avg":
            return _Missing(f"{kind} pooling: not covered by the mean-field recursion")
        if node.op == "sum":
            return _Missing("sum reduction: its scale depends on the correlation of the summed units")
        if node.op == "mean" and not self._spatial_mean(node):
            return _Missing("mean over features or unknown dimensions: not covered")
        s = ins[0]
        src = self.graph[node.inputs[0]].shape
        if node.shape is not None and src is not None and len(src) >= 3 and math.prod(node.shape[2:]) == 1:
            return self._global_pool(node, s, math.prod(src[2:]))
        # Linear, NLC factor 1; M is exact (a channel's neuron mean the same at every
        # position), v an upper bound (spatial correlation unknown). A sample's scale and
        # channel shifts are the same at the positions pooled: kept.
        return _scalar(s)

    def _global_pool(self, node: Node, s: _State, positions: int) -> _State:
        """Average over all positions of a map. A channel's output mean is its neuron means'
        average over positions, M = mean_c (mean_p m_cp)^2 = mean_pq Q[p, q]. The
        fluctuations of different positions are uncorrelated in the wide-layer limit and
        pooling divides their variance by the positions, but not that of what a sample shifts
        at every position alike: its shift along the offsets (Var b M) and its channels'
        shifts (D). v and N stay on the scale of one position (the limit's NLC factor 1;
        v is an upper bound where the data's positions are correlated), so those two are
        multiplied by the positions instead."""
        M = s.sp.channel_offsets_sq() if s.sp is not None else s.M
        var_b, n_b = s.modes.shift_variances() if s.modes is not None else (0.0, 0.0)
        v_each = max(s.v - s.D - var_b * s.M, 0.0)
        N_each = max(s.N - s.N_D - n_b * s.M, 0.0)
        v = v_each + positions * (s.D + var_b * M)
        N = N_each + positions * (s.N_D + n_b * M)
        modes = s.modes.mapped(np.diag([1.0, v_each / v if v > 0 else 0.0])) if s.modes is not None else None
        return self._on_map(node, _State(M=M, v=v, mean=s.mean, N=N), modes, 0.0, 0.0)

    def _spatial_mean(self, node: Node) -> bool:
        """x.mean(dims) over spatial dims only (dims >= 2 of an N, C, ... tensor)."""
        fxn = self.fx_nodes.get(node.name)
        shape = self.graph[node.inputs[0]].shape
        if fxn is None or shape is None or len(shape) < 3:
            return False
        dims = fxn.kwargs.get("dim", fxn.args[1] if len(fxn.args) > 1 else None)
        dims = [dims] if isinstance(dims, int) else dims
        return bool(dims) and all(isinstance(d, int) and d % len(shape) >= 2 for d in dims)

    def _reshape(self, node: Node, ins: list[_State]) -> _State | _Missing:
        if len(ins) == 1 or node.op in _SHAPE_LIKE_OPS:
            # A map stays with the node only while the layout does (the averages always hold).
            src = self.graph[node.inputs[0]].shape
            if node.shape == src:
                return ins[0]
            s = _scalar(ins[0])
            if self._is_map(node) and src is not None and tuple(src[:2]) == tuple(node.shape[:2]):
                return s  # the channels stay: (batch, channels, positions in another layout)
            return replace(s, modes=self._vector(node, s.modes), D=0.0, N_D=0.0)
        ins = [_scalar(x) for x in ins]
        if node.op in _CONCAT_OPS:
            sizes = [math.prod(self.graph[i].shape or (0,)) for i in node.inputs]
            if not all(sizes):
                return _Missing(f"{node.op}: input sizes unknown")
            w = [n / sum(sizes) for n in sizes]
            M, v = sum(a * s.M for a, s in zip(w, ins)), sum(a * s.v for a, s in zip(w, ins))
            parts = [(s.modes, np.diag([a * s.M / M if M > 0 else 0.0, a * s.v / v if v > 0 else 0.0])) for a, s in zip(w, ins)]
            return _State(
                M=M,
                v=v,
                mean=sum(a * s.mean for a, s in zip(w, ins)),
                N=sum(a * s.N for a, s in zip(w, ins)),
                modes=self._vector(node, _combined_modes(parts)),
            )
        return _Missing(f"{node.op} of {len(ins)} signals: not covered")
