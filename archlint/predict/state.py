"""The recursion's state at a node: the averaged scalars (``_State``), how samples differ in
scale (``_Modes``), and the markers of a node not predicted (``_Missing``) and of an
elementwise chain (``_Chain``). The quantities are defined in docs/predictor.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from archlint.predict.spatial import _Spatial

_MAX_SHIFT_VAR = 0.05   # scale modes beyond these are dropped (_Modes.small)
_MAX_SPREAD_VAR = 0.25


@dataclass(frozen=True)
class _State:
    M: float
    v: float
    mean: float
    N: float
    # Per-position statistics of a (batch, channel, *spatial) node downstream of a
    # convolution; None: every position alike (M, v, mean, N hold for each).
    sp: _Spatial | None = field(default=None, compare=False)
    # How samples differ in scale at a (batch, features) node or a map (docs/predictor.md,
    # "Finite width"); None: not tracked (sequences, and downstream of them).
    modes: _Modes | None = field(default=None, compare=False)
    # Of a map: the part of v (and of N) that is a sample's shift of a whole channel, the
    # same at every position (its scale modes' shifts that a BatchNorm turned into a random
    # pattern over the channels); average pooling keeps it all.
    D: float = field(default=0.0, compare=False)
    N_D: float = field(default=0.0, compare=False)


@dataclass(frozen=True, eq=False)
class _Modes:
    """Sample x's pre-activations are m_i (1 + b_x) + sqrt(v (1 + a_x)) z_i(x): b_x shifts
    its units along the neuron offsets m_i, a_x scales their fluctuation variance. (b, a)
    = sum_l coef[l] xi_l(x) over independent sources of unit variance (the input's norm, the
    finite width of each layer), identified by ``ids``, so that branches that share a source
    add its coefficients."""

    ids: np.ndarray     # (L,) int
    coef: np.ndarray    # (L, 2): columns b, a
    # (L,): each source's NLC^2 where it arose (N / v there): a shift b_x is a function of
    # the input with that NLC, and the data variance it turns into downstream carries it.
    nlc2: np.ndarray

    def cov(self) -> np.ndarray:
        return self.coef.T @ self.coef

    def small(self) -> bool:
        """Whether the second-order expansion holds: Var(b) <= _MAX_SHIFT_VAR (a sample's
        shift along the offsets within about +-22%) and Var(a) <= _MAX_SPREAD_VAR (its
        fluctuation variance within about +-50%)."""
        var_b, var_a = (self.coef**2).sum(axis=0) if len(self.coef) else (0.0, 0.0)
        return bool(var_b <= _MAX_SHIFT_VAR and var_a <= _MAX_SPREAD_VAR)

    def per_source(self, A: np.ndarray) -> np.ndarray:
        """c_l^T A c_l for each source's coefficients c_l (A: 2 x 2 over (b, a))."""
        return np.einsum("lb,bc,lc->l", self.coef, A, self.coef)

    def shift_variances(self) -> tuple[float, float]:
        """(Var b, its linearised variance): per unit of M, the variance of a sample's shift
        along the offsets and the N it carries (each source's share times its NLC^2)."""
        b2 = self.coef[:, 0] ** 2
        return float(b2.sum()), float(b2 @ self.nlc2)

    def mapped(self, J: np.ndarray) -> _Modes:
        """(b', a') = J (b, a)."""
        return _Modes(self.ids, self.coef @ np.asarray(J, dtype=float).T, self.nlc2)

    def plus(self, cov: np.ndarray, first_id: int, nlc2: float) -> _Modes:
        """With new independent sources of covariance ``cov`` (2 x 2) and NLC^2 ``nlc2``."""
        lam, vec = np.linalg.eigh(cov)
        rows = [math.sqrt(l) * vec[:, k] for k, l in enumerate(lam) if l > 0]
        if not rows:
            return self
        ids = np.arange(first_id, first_id + len(rows))
        return _Modes(np.concatenate([self.ids, ids]), np.vstack([self.coef, np.array(rows)]),
                      np.concatenate([self.nlc2, np.full(len(rows), nlc2)]))


def _combined_modes(parts: list[tuple[_Modes | None, np.ndarray]]) -> _Modes | None:
    """sum_k J_k (b_k, a_k) over inputs that may share sources; None if any is not tracked."""
    tracked = [(m, J) for m, J in parts if m is not None]
    if len(tracked) < len(parts):
        return None
    ids = np.unique(np.concatenate([m.ids for m, _ in tracked]))
    coef, nlc2 = np.zeros((len(ids), 2)), np.zeros(len(ids))
    for m, J in tracked:
        at = np.searchsorted(ids, m.ids)
        coef[at] += m.coef @ np.asarray(J, dtype=float).T
        nlc2[at] = m.nlc2
    return _Modes(ids, coef, nlc2)


def _scalar(s: _State) -> _State:
    """The same averages, position structure dropped (an op that does not keep the layout)."""
    return _State(M=s.M, v=s.v, mean=s.mean, N=s.N, modes=s.modes, D=s.D, N_D=s.N_D)


def _offset_share(M_out: float, part: float) -> float:
    """The share of a node's mean squared neuron offset M_out that ``part`` (the part that
    moves with a sample's shift along the input's offsets) makes: b' = share * b."""
    return min(max(part, 0.0) / M_out, 1.0) if M_out > 0 else 0.0


@dataclass(frozen=True)
class _Missing:
    reason: str
    # The node where the prediction stopped; None at that node itself.
    cause: str | None = None


@dataclass(frozen=True)
class _Chain:
    """A node's value as an elementwise function of one root node's value."""

    root: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    # Identifies fn for the integral cache: the ops and their constants, root to node.
    key: Any


def _identity_chain(root: str) -> _Chain:
    # A copy, so that in-place activations (ReLU(inplace=True)) never touch the grid itself.
    return _Chain(root, torch.Tensor.clone, ("identity",))
