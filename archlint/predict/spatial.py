"""Maps: the state of a (batch, channel, *spatial) node downstream of a convolution, position
by position (stored per class of identical positions), and the convolution and BatchNorm
rules on it (docs/predictor.md, "Positions (zero padding)" and "Storage and cost")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from archlint.predict.state import _State

_MAX_POSITIONS = 1024   # larger maps: positions not modelled (Q has P^2 entries, 8 MB here)
_TAPS: dict[Any, np.ndarray] = {}


@dataclass(frozen=True, eq=False)
class _Spatial:
    """The state at each of the P positions of a map of shape ``shape`` (docs/predictor.md),
    stored per class of identical positions: ``cls[p]`` is the class of position p, and
    positions of one class have the same neuron mean in every channel (the same taps read
    the same classes all the way from a uniform map), hence the same statistics. The
    interior of a map, beyond the borders' reach so far, is one class.

    mu[k] = mean_c m_cp, Q[k, l] = mean_c m_cp m_cq (m_cp = E_x h_cp: the neuron means of
    channel c at positions p, q of classes k, l), v[k] = mean_c Var_x h_cp,
    N[k] = mean_c tr(J_cp Cov J_cp^T); ``count[k]``: the positions of class k.
    """

    shape: tuple[int, ...]
    cls: np.ndarray
    count: np.ndarray
    mu: np.ndarray
    Q: np.ndarray
    v: np.ndarray
    N: np.ndarray

    def channel_offsets_sq(self) -> float:
        """mean_c (mean_p m_cp)^2 = mean_pq Q[p, q]: the offsets a channel has at all of its
        positions (what global pooling keeps of M)."""
        return float(self.count @ self.Q @ self.count) / len(self.cls) ** 2

    def average(self, a: np.ndarray) -> float:
        """The average over positions of a per-class array."""
        return float(self.count @ a) / len(self.cls)

    def like(self, mu: np.ndarray, Q: np.ndarray, v: np.ndarray, N: np.ndarray) -> _Spatial:
        """New statistics on the same classes."""
        return _Spatial(self.shape, self.cls, self.count, mu, Q, v, N)

    def state(self) -> _State:
        """The node's state: averages over positions (and channels) of the maps."""
        return _State(M=max(self.average(np.diag(self.Q)), 0.0), v=self.average(self.v), mean=self.average(self.mu),
                      N=self.average(self.N), sp=self)


def _classes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions with equal columns of ``keys`` (rows: the classes that define a position)
    as one class: (class of each position, positions per class, the keys of each class)."""
    _, first, cls, count = np.unique(keys, axis=1, return_index=True, return_inverse=True, return_counts=True)
    return cls.reshape(-1), count, keys[:, first]


def _uniform_map(s: _State, shape: tuple[int, ...]) -> _Spatial:
    """A position-free state as a map: a channel's neuron mean is the same at every position."""
    P = math.prod(shape)
    one = np.ones(1)
    return _Spatial(shape, np.zeros(P, dtype=np.intp), np.array([P]), s.mean * one, np.full((1, 1), s.M), s.v * one, s.N * one)


def _tap_index(s_in, s_out, kernel, stride, dilation, left, mode) -> np.ndarray:
    """taps[t, o]: the flat input position that tap t reads at output position o, P_in (a
    zero) where it reads zero padding; the other padding modes read an input position."""
    idx = np.zeros((1, 1), dtype=np.int64)  # (taps so far, output positions so far)
    valid = np.ones((1, 1), dtype=bool)
    for n, k, st, dl, lf, o in zip(s_in, kernel, stride, dilation, left, s_out):
        i = np.arange(k)[:, None] * dl + np.arange(o)[None, :] * st - lf  # (k, o)
        inside = (i >= 0) & (i < n)
        if mode == "circular":
            i = i % n
        elif mode == "reflect":
            i = np.abs(i)
            i = np.where(i >= n, 2 * (n - 1) - i, i)
        elif mode == "replicate":
            i = np.clip(i, 0, n - 1)
        if mode != "zeros":
            inside = np.ones_like(inside)
        idx = (idx[:, None, :, None] * n + i[None, :, None, :]).reshape(idx.shape[0] * k, -1)
        valid = (valid[:, None, :, None] & inside[None, :, None, :]).reshape(idx.shape)
    return np.where(valid, idx, math.prod(s_in))


def _conv_tap_index(conv: nn.modules.conv._ConvNd, src: tuple[int, ...],
                    dst: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]] | None:
    """(input position of each tap at each output position, input and output map shapes) of
    a Conv1d/2d/3d module from a (batch, channel, *spatial) node of shape ``src`` to one of
    shape ``dst`` (cached); None where ``src`` is not such a map of the module's dimensions, or
    where either map has more than _MAX_POSITIONS positions (not modelled)."""
    d = len(conv.kernel_size)
    s_in, s_out = tuple(src[-d:]), tuple(dst[-d:])
    if len(src) != d + 2 or max(math.prod(s_in), math.prod(s_out)) > _MAX_POSITIONS:
        return None
    key = (s_in, s_out, tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation),
           tuple(conv._reversed_padding_repeated_twice), conv.padding_mode)
    if key not in _TAPS:
        if len(_TAPS) >= 256:
            _TAPS.clear()
        # _reversed_padding_repeated_twice: (left, right) per dim, last dim first.
        left = [conv._reversed_padding_repeated_twice[2 * (d - 1 - k)] for k in range(d)]
        _TAPS[key] = _tap_index(s_in, s_out, conv.kernel_size, conv.stride, conv.dilation, left, conv.padding_mode)
    return _TAPS[key], s_in, s_out


def _conv_map(s: _State, taps_info, c_in: float, w_sq: float, w_mean: float, b_sq: float, b_mean: float) -> _State:
    """A convolution position by position (docs/predictor.md): each output position sums the
    taps that fall inside the input; ``c_in`` input channels per tap."""
    taps, s_in, s_out = taps_info
    sp = s.sp if s.sp is not None and s.sp.shape == s_in else _uniform_map(s, s_in)
    K = len(sp.mu)
    # A zero appended as class K: what a tap over the zero padding reads.
    mu, v, N = (np.append(a, 0.0) for a in (sp.mu, sp.v, sp.N))
    Q = np.zeros((K + 1, K + 1))
    Q[:K, :K] = sp.Q
    # Output positions whose taps read the same input classes are one output class;
    # reads[t, k]: the input class that tap t reads at the positions of output class k.
    cls, count, reads = _classes(np.append(sp.cls, K)[taps])
    gain = c_in * w_sq
    mu1 = c_in * w_mean * mu[reads].sum(axis=0) + b_mean
    v1, N1 = gain * v[reads].sum(axis=0), gain * N[reads].sum(axis=0)
    Q1 = sum(Q[np.ix_(t, t)] for t in reads)
    Q1 = np.outer(mu1, mu1) + c_in * (w_sq - w_mean**2) * Q1 + (b_sq - b_mean**2)
    return _Spatial(s_out, cls, count, mu1, Q1, v1, N1).state()


def _batch_norm_map(sp: _Spatial, g_mean: float, g_sq: float, b_mean: float, b_sq: float, eps: float) -> _State:
    """BatchNorm of a map: each channel centred by its mean over positions (and the data),
    scaled by its variance over positions and data (docs/predictor.md)."""
    row = sp.Q @ sp.count / len(sp.cls)  # mean over positions q of Q[p, q]
    total = sp.average(row)
    centred = sp.Q - row[:, None] - row[None, :] + total  # mean_c (m_cp - mu_c)(m_cq - mu_c)
    var = sp.average(np.diag(centred)) + sp.average(sp.v)  # per-channel variance, averaged
    scale = g_sq / (var + eps)
    shift = (sp.mu - sp.average(sp.mu)) / math.sqrt(var + eps)
    mu1 = g_mean * shift + b_mean
    Q1 = scale * centred + b_mean * g_mean * (shift[:, None] + shift[None, :]) + b_sq
    return sp.like(mu1, Q1, scale * sp.v, scale * sp.N).state()
