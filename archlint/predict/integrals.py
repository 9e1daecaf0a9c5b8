"""The Gaussian integrals: a state through an elementwise function (E over the neuron means
and the data of the function, its slope and, with scale modes, their derivatives), with
the grids and the cache they use (docs/predictor.md, "Numerics")."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from archlint.predict.spatial import _Spatial
from archlint.predict.state import _Missing, _State

_Z_RANGE = 7.0           # z in [-7, 7]: the tails beyond weigh < 1e-11
_EVALS = 20000           # function evaluations per integral (about 0.1-0.3 ms)
# With Gauss-Hermite neuron means (a map's classes need dozens of such integrals per node)
# fewer: averaging over the means smooths a kink (ReLU); on the benchmark models this moves
# predicted NLCs by under 0.4% and makes a CIFAR ResNet-18's prediction ~3x faster.
_GAUSS_EVALS = 4096
_SINGLE_MEAN_EVALS = 32768  # z-nodes when all neurons share one mean (after BatchNorm)
_GH_NODES = 24           # Gauss-Hermite nodes over m while the m-spread is <= sqrt(v)
_M_RANGE = 8.5           # the m-grid covers mean +- 8.5 spreads
_MAX_UNIFORM = 200       # half-width, in steps, of a uniform m-grid; beyond it: two scales
_LINEAR_BELOW = 1e-7     # sqrt(v) / |m| below which a neuron is linear
_BATCH = 16          # states per evaluation in _hermite_moments_into_cache (bounds its temporaries)
_HERMITE_TERMS = 24     # terms of the Mehler expansion of neuron-mean correlations
# Integrals: _moments results by (key, M, v, mean), _moments_with_modes ones by (key,
# "modes", M, v, mean, the modes' covariance).
_CACHE: dict[Any, Any] = {}
_CACHE_SIZE = 20000
_MODE_STEP = 0.02       # the (b, a) stencil of _moments_with_modes
_STENCIL_COARSER = 8    # its z-grid against _moments'
_MODE_FLOOR = 1e-9      # M' below this share of M' + v': no offsets for a sample to shift along
_HERMITE = np.polynomial.hermite_e.hermegauss(_GH_NODES)


def _round(x: float) -> float:
    return float(f"{x:.9g}")


def _gaussian_map(fn: Callable[[torch.Tensor], torch.Tensor], s: _State, key: Any, units: int | None = None,
                  first_id: int = 0) -> _State | _Missing:
    """The state after an elementwise function, N' = N E tau'^2 (cached per key and state).

    The integral runs at (M, v, mean) rounded to 9 significant digits, so that a cached value
    does not depend on which call computed it. A state with a map is mapped position by
    position, and the neuron means' correlations between positions by their Hermite
    expansion; a state with scale modes to second order in them, and the output's ``units``
    add two sources (ids ``first_id``, ``first_id + 1``; docs/predictor.md).
    """
    if s.sp is not None:
        return _gaussian_map_spatial(fn, s.sp, key)
    if s.modes is not None and units and s.modes.small():
        mixed = _mixed_moments(fn, key, s)
        if mixed is not None:
            out, J, unit, H = mixed.out, mixed.J, mixed.unit, mixed.H
            # The offsets' variance each source turns into data variance, with its NLC.
            converted = np.clip(-s.modes.per_source(H), 0.0, None)
            N = s.N * out.N + float(converted @ s.modes.nlc2)
            modes = s.modes.mapped(J).plus(unit / units, first_id, N / max(out.v, 1e-300))
            return _State(M=out.M, v=out.v, mean=out.mean, N=N, modes=modes)
    unit = _unit_moments(fn, s.M, s.v, s.mean, key)
    if isinstance(unit, _Missing):
        return unit
    # _moments returns the gain E tau'^2 in the N slot.
    out, _ = unit
    return _State(M=out.M, v=out.v, mean=out.mean, N=s.N * out.N)


def _mixed_moments(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, s: _State):
    """_moments_with_modes at state ``s`` (its averages and its modes' covariance), cached."""
    cov = s.modes.cov()
    args = tuple(_round(float(x)) for x in (s.M, s.v, s.mean, cov[0, 0], cov[0, 1], cov[1, 1]))
    return _cached((key, "modes", *args) if key is not None else None, lambda: _moments_with_modes(fn, key, *args))


def _with_map_modes(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, root: _State, out: _State | _Missing,
                    units: int, first_id: int) -> _State | _Missing:
    """``out``, an elementwise function of a map with scale modes (``root``), with its modes
    and channel shifts (docs/predictor.md, "Finite width"). The statistics per position stay
    the wide limit's; the modes map as in a (batch, features) layer, at the map's averages;
    a channel's shift d passes with the slope, E_c (E tau'_c)^2 D; and the offsets' variance
    that the modes' shifts turn into data variance is the same at every position of a channel
    (a neuron's offset is its channel's), so it is a channel shift too."""
    if isinstance(out, _Missing) or not root.modes.small():
        return out
    mixed = _mixed_moments(fn, key, root)
    if mixed is None:
        return out
    nlc2 = root.modes.nlc2
    converted = np.clip(-root.modes.per_source(mixed.H), 0.0, None)
    dv, dN = float(converted.sum()), float(converted @ nlc2)
    if out.sp is not None:
        out = out.sp.like(out.sp.mu, out.sp.Q, out.sp.v + dv, out.sp.N + dN).state()
    else:
        out = replace(out, v=out.v + dv, N=out.N + dN)
    # The shifts along the output's offsets are the mode b'; the rest of the offsets' shifts,
    # a random pattern over the channels, is a channel shift.
    modes = root.modes.mapped(mixed.J)
    along = modes.coef[:, 0] ** 2 * out.M
    rest = np.clip(root.modes.per_source(mixed.gram) - along, 0.0, None)
    modes = modes.plus(mixed.unit / units, first_id, out.N / max(out.v, 1e-300))
    return replace(out, modes=modes, D=mixed.slope2 * root.D + float(rest.sum()),
                   N_D=mixed.slope2 * root.N_D + float(rest @ nlc2))


def _unit_moments(fn: Callable[[torch.Tensor], torch.Tensor], M: float, v: float, mean: float, key: Any):
    M, v, mean = _round(M), _round(v), _round(mean)
    return _cached((key, M, v, mean) if key is not None else None, lambda: _moments(fn, M, v, mean))


def _cached(cache_key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in _CACHE under ``cache_key`` (None: not kept)."""
    if cache_key is not None and cache_key in _CACHE:
        return _CACHE[cache_key]
    value = compute()
    if cache_key is not None:
        _cache_put(cache_key, value)
    return value


def _cache_put(cache_key: Any, value: Any) -> None:
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[cache_key] = value


def _gaussian_map_spatial(fn: Callable[[torch.Tensor], torch.Tensor], sp: _Spatial, key: Any) -> _State | _Missing:
    diag = np.diag(sp.Q)
    P = len(sp.mu)
    M1, v1, mu1, gain = (np.empty(P) for _ in range(4))
    herm = np.zeros((P, _HERMITE_TERMS))
    args = [(_round(float(diag[p])), _round(float(sp.v[p])), _round(float(sp.mu[p]))) for p in range(P)]
    _hermite_moments_into_cache(fn, args, key)
    units: dict[tuple[float, float, float], Any] = {}
    for p, a in enumerate(args):
        unit = units.get(a)
        if unit is None:
            unit = units[a] = _unit_moments(fn, *a, key)
        if isinstance(unit, _Missing):
            return unit
        out, herm[p] = unit
        M1[p], v1[p], mu1[p], gain[p] = out.M, out.v, out.mean, out.N
    # Correlation across channels of the neuron means at positions p, q (Gaussian over
    # channels, A2), and Mehler's formula for the covariance of f_p(m_p), f_q(m_q).
    C = sp.Q - np.outer(sp.mu, sp.mu)
    sd = np.sqrt(np.clip(np.diag(C), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(np.outer(sd, sd) > 0, C / np.outer(sd, sd), 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    var1 = np.clip(M1 - mu1 * mu1, 0.0, None)
    # The part of each Var_c f_p beyond the terms kept, taken as one term of the next order.
    tail = np.sqrt(np.clip(var1 - (herm * herm).sum(axis=1), 0.0, None))
    C1 = np.outer(tail, tail)
    for n in range(_HERMITE_TERMS - 1, -1, -1):  # Horner in rho
        C1 = rho * (C1 + np.outer(herm[:, n], herm[:, n]))
    np.fill_diagonal(C1, var1)  # exact on the diagonal
    return sp.like(mu1, C1 + np.outer(mu1, mu1), v1, sp.N * gain).state()


def _hermite_moments_into_cache(fn: Callable[[torch.Tensor], torch.Tensor], args: list[tuple[float, float, float]], key: Any) -> None:
    """_moments of the states ``args`` (rounded) whose m-grid is the Gauss-Hermite one, all
    in one evaluation of ``fn``, into the cache (a map's classes need dozens: one call each
    would cost more in overhead than in arithmetic). The same nodes and sums as _moments."""
    if key is None:
        return
    todo = []
    for a in dict.fromkeys(args):
        M, v, mean = a
        sv, sm = math.sqrt(v), math.sqrt(max(M - mean * mean, 0.0))
        if (key, *a) not in _CACHE and 1e-6 * (abs(mean) + sv) < sm <= sv:
            todo.append((a, sv, sm))
    for start in range(0, len(todo), _BATCH):
        _hermite_moments_batch(fn, todo[start:start + _BATCH], key)


def _hermite_moments_batch(fn: Callable[[torch.Tensor], torch.Tensor], todo: list, key: Any) -> None:
    mean = np.array([a[2] for a, _, _ in todo])[:, None]
    sv, sm = (np.array(c)[:, None] for c in list(zip(*todo))[1:])
    x, w = _HERMITE
    ms, wm = mean + sm * x, w / w.sum()  # (K, nodes)
    z, wz = _z_grid(_z_count(len(x)))
    h = np.empty(ms.shape + (len(z) + 1,))
    np.multiply(sv[:, :, None], z, out=h[..., :-1])
    h[..., :-1] += ms[..., None]
    h[..., -1] = ms
    try:
        y, dy = _values_and_slopes(fn, torch.from_numpy(h))
    except Exception:
        return  # _moments reports it, one state at a time
    e_tau = np.einsum("kjz,z->kj", y[..., :-1], wz)
    var_tau = np.einsum("kjz,z->kj", (y[..., :-1] - e_tau[..., None]) ** 2, wz)
    gain = np.einsum("kjz,z->kj", dy[..., :-1] ** 2, wz)
    linear = sv <= _LINEAR_BELOW * np.abs(ms)
    e_tau = np.where(linear, y[..., -1], e_tau)
    var_tau = np.where(linear, sv * sv * dy[..., -1] ** 2, var_tau)
    gain = np.where(linear, dy[..., -1] ** 2, gain)
    # Sums by einsum, not `@`: numpy hands small products to BLAS, whose per-call cost
    # (thread hand-off) was most of this function's time.
    stats = [np.einsum("kj,j->k", c, wm) for c in (e_tau * e_tau, var_tau, e_tau, gain)]
    u = (ms - mean) / sm
    H = np.empty((_HERMITE_TERMS,) + u.shape)  # normalised He_1 .. He_T at the nodes
    h_prev, H[0] = np.ones_like(u), u
    for n in range(1, _HERMITE_TERMS):
        H[n] = (u * H[n - 1] - math.sqrt(n) * h_prev) / math.sqrt(n + 1)
        h_prev = H[n - 1]
    herm = np.einsum("kj,nkj,j->kn", e_tau, H, wm)
    for k, (a, _, _) in enumerate(todo):
        out = _State(*(float(c[k]) for c in stats))
        if all(math.isfinite(c) for c in (out.M, out.v, out.mean, out.N)):
            _cache_put((key, *a), (out, herm[k]))


def _z_count(m_nodes: int) -> int:
    """z-nodes per neuron mean (even, so that z = 0 is a cell edge): a single mean gets many,
    since a kink of tau inside a cell costs O(dz) and nothing smooths it out; Gauss-Hermite
    means (smooth averaging) _GAUSS_EVALS in all, other m-grids (an odd number of nodes, or
    hundreds) _EVALS."""
    if m_nodes == 1:
        return _SINGLE_MEAN_EVALS
    evals = _GAUSS_EVALS if m_nodes == _GH_NODES else _EVALS
    return int(np.clip(evals // m_nodes // 2 * 2, 64, 4096))


@functools.lru_cache(maxsize=16)
def _z_grid(n_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint nodes on [-7, 7] and their Gaussian weights (see _moments)."""
    dz = 2 * _Z_RANGE / n_z
    z = -_Z_RANGE + dz * (np.arange(n_z) + 0.5)
    wz = np.exp(-0.5 * z * z)
    wz /= wz.sum()
    # Unit variance on the grid too, so that affine maps (a scalar mul, a shift) come out
    # with NLC 1 and variance a^2 v to rounding precision.
    z /= math.sqrt(np.einsum("z,z->", wz, z * z))
    z.flags.writeable = wz.flags.writeable = False
    return z, wz


def _moments(fn: Callable[[torch.Tensor], torch.Tensor], M: float, v: float, mean: float) -> tuple[_State, np.ndarray] | _Missing:
    """E_m over neuron means m ~ N(mean, M - mean^2) of the per-neuron statistics of
    tau(m + sqrt(v) z), z ~ N(0, 1). Returns (M', v', mean', E tau'^2) as a _State, and
    the coefficients a_n = E_u[f(mean + s u) He_n(u)] / sqrt(n!), n = 1.._HERMITE_TERMS, of
    the neuron-mean map f(m) = E_z tau(m + sqrt(v) z) (s^2 = M - mean^2; zero when s = 0)."""
    sv, sm = math.sqrt(v), math.sqrt(max(M - mean * mean, 0.0))
    ms, wm = _m_grid(mean, sm, sv)
    z, wz = _z_grid(_z_count(len(ms)))
    # Row k: neuron mean ms[k], inputs ms[k] + sqrt(v) z; the last column is z = 0 itself,
    # used for neurons too narrow for the z-grid to resolve in float64 (linear limit).
    h = np.concatenate([ms[:, None] + sv * z[None, :], ms[:, None]], axis=1)
    try:
        y, dy = _values_and_slopes(fn, torch.from_numpy(h))
    except Exception as exc:
        return _Missing(f"cannot evaluate the elementwise function on a grid ({type(exc).__name__}: {exc})")
    # einsum, not matmul: a long 1-row matmul goes to multithreaded BLAS, which stalls for
    # milliseconds on a busy machine.
    e_tau = np.einsum("kz,z->k", y[:, :-1], wz)
    var_tau = np.einsum("kz,z->k", (y[:, :-1] - e_tau[:, None]) ** 2, wz)
    gain = np.einsum("kz,z->k", dy[:, :-1] ** 2, wz)
    linear = sv <= _LINEAR_BELOW * np.abs(ms)
    e_tau = np.where(linear, y[:, -1], e_tau)
    var_tau = np.where(linear, v * dy[:, -1] ** 2, var_tau)
    gain = np.where(linear, dy[:, -1] ** 2, gain)
    out = _State(M=float(wm @ (e_tau * e_tau)), v=float(wm @ var_tau), mean=float(wm @ e_tau), N=float(wm @ gain))
    if not all(math.isfinite(x) for x in (out.M, out.v, out.mean, out.N)):
        return _Missing("the elementwise function overflows at this operating point")
    herm = np.zeros(_HERMITE_TERMS)
    if len(ms) > 1:
        u = (ms - mean) / sm
        h_prev, h = np.ones_like(u), u  # normalised He_0, He_1
        for n in range(1, _HERMITE_TERMS + 1):
            herm[n - 1] = float(wm @ (e_tau * h))
            h_prev, h = h, (u * h - math.sqrt(n) * h_prev) / math.sqrt(n + 1)
    return out, herm


class _Mixed(NamedTuple):
    """What _moments_with_modes returns besides the population statistics ``out``."""

    out: _State
    J: np.ndarray      # (b, a) -> the output's (b', a'), 2 x 2
    unit: np.ndarray   # the covariance of (b', a') one output unit adds (over n units: / n)
    H: np.ndarray      # second order of the output offsets: dM = -c^T H c per source c
    gram: np.ndarray   # c^T gram c: the variance of the neuron offsets' shifts per source c
    slope2: float      # E_m (E_z tau')^2: the gain of a shift of all of a neuron's inputs


def _moments_with_modes(fn: Callable[[torch.Tensor], torch.Tensor], key: Any, M: float, v: float, mean: float,
                        var_b: float, cov: float, var_a: float) -> _Mixed | None:
    """_moments for a state whose samples differ in scale (docs/predictor.md, "Finite
    width"): sample x's pre-activations are m_i (1 + b_x) + sqrt(v_f (1 + a_x)) z, where
    (b, a) has covariance [[var_b, cov], [cov, var_a]] over the samples and v_f = v - var_b M
    is what the shifts leave of the population's v. To second order in
    (b, a), from the 3 x 3 stencil of the integrals at b, a in {-h, 0, h}: returns the
    population statistics (M', v', mean', and E tau'^2 at b = a = 0) as a _State, and the
    maps of _Mixed. None where the stencil cannot resolve the
    neurons (a z-grid too coarse for them; the caller then drops the modes).

    The statistics at b = a = 0 are _moments' (cached per ``key``); the stencil, which only
    supplies corrections of a few percent and relative changes, runs on a z-grid
    _STENCIL_COARSER times coarser, on the same nodes at every stencil point."""
    # The population's v holds the shifts' variance var_b M: the rest is the fluctuation.
    v = v - var_b * M
    sv, sm = math.sqrt(max(v, 0.0)), math.sqrt(max(M - mean * mean, 0.0))
    ms, wm = _m_grid(mean, sm, sv)
    if sv <= _LINEAR_BELOW * float(np.abs(ms).max()) or sv == 0.0:
        return None
    base = _unit_moments(fn, M, v, mean, key)
    if isinstance(base, _Missing):
        return None
    base = base[0]
    z, wz = _z_grid(max(64, _z_count(len(ms)) // _STENCIL_COARSER // 2 * 2))
    steps = np.array([-_MODE_STEP, 0.0, _MODE_STEP])
    b, a = np.meshgrid(steps, steps, indexing="ij")  # [b-index, a-index]
    h = ms[None, None, :, None] * (1 + b)[..., None, None] + np.sqrt(v * (1 + a))[..., None, None] * z
    try:
        with torch.no_grad():  # values only: no slopes are needed here
            y = fn(torch.from_numpy(h.reshape(-1))).view(h.shape).numpy()
    except Exception:
        return None
    f = np.einsum("bamz,z->bam", y, wz)
    g = np.einsum("bamz,z->bam", y * y, wz)
    if not (np.isfinite(f).all() and np.isfinite(g).all()):
        return None
    d = _MODE_STEP

    def d1(x):  # (d/db, d/da) at 0, per neuron mean
        return (x[2, 1] - x[0, 1]) / (2 * d), (x[1, 2] - x[1, 0]) / (2 * d)

    def second_order(x):  # E_{b,a} x to second order, per neuron mean
        xbb = (x[2, 1] - 2 * x[1, 1] + x[0, 1]) / d**2
        xaa = (x[1, 2] - 2 * x[1, 1] + x[1, 0]) / d**2
        xba = (x[2, 2] - x[2, 0] - x[0, 2] + x[0, 0]) / (4 * d * d)
        return x[1, 1] + 0.5 * (xbb * var_b + 2 * xba * cov + xaa * var_a)

    f0 = f[1, 1]
    df = second_order(f) - f0
    dM = 2 * float(wm @ (f0 * df))  # E_m (E f)^2 - E_m f^2 to second order
    dq = float(wm @ (second_order(g) - g[1, 1]))
    M1 = base.M + dM
    # E tau'^2 is taken at b = a = 0: tau'^2 is often a step (ReLU), whose second
    # differences on a finite grid are noise, and for a scale-free tau it does not change.
    out = _State(M=max(M1, 0.0), v=max(base.v + dq - dM, 0.0), mean=base.mean + float(wm @ df), N=base.N)
    gv = g - f * f  # Var_z tau: a sample's fluctuation variance, per neuron mean
    f_b, f_a = d1(f)
    gv_b, gv_a = d1(gv)
    vf = float(wm @ gv[1, 1])  # the output's fluctuation variance (v' less the shifts)
    J = np.zeros((2, 2))
    # b' = the output offsets' share of a sample's shift (raw moments: the common offset
    # scales too); a' = the relative change of its fluctuation variance.
    aligned = out.M > _MODE_FLOOR * (out.M + out.v)
    if aligned:
        J[0] = wm @ (f0 * f_b) / out.M, wm @ (f0 * f_a) / out.M
    if vf > 0:
        J[1] = wm @ gv_b / vf, wm @ gv_a / vf
    # One unit's share of a sample's (b', a'): over n independent units i, b'_x =
    # mean_i m'_i (y_i(x) - m'_i) / M' and a'_x = mean_i (y_i(x) - m'_i)^2 / vf - 1 have
    # these (co)variances times n.
    c = y[1, 1] - f0[:, None]
    var_tau = np.einsum("mz,z->m", c * c, wz)
    c3, c4 = np.einsum("mz,z->m", c**3, wz), np.einsum("mz,z->m", c**4, wz)
    unit = np.zeros((2, 2))
    if aligned:
        unit[0, 0] = wm @ (f0 * f0 * var_tau) / out.M**2
    if vf > 0:
        unit[1, 1] = wm @ (c4 - var_tau**2) / vf**2
        if aligned:
            unit[0, 1] = unit[1, 0] = wm @ (f0 * c3) / (out.M * vf)
    # dM = -sum_l c_l^T H c_l over the sources' coefficients c_l (second order).
    f_bb = (f[2, 1] - 2 * f0 + f[0, 1]) / d**2
    f_aa = (f[1, 2] - 2 * f0 + f[1, 0]) / d**2
    f_ba = (f[2, 2] - f[2, 0] - f[0, 2] + f[0, 0]) / (4 * d * d)
    H = np.array([[wm @ (f0 * f_bb), wm @ (f0 * f_ba)], [wm @ (f0 * f_ba), wm @ (f0 * f_aa)]])
    # E_m of the outer product of (d/db, d/da) E_z tau: the variance of the offsets' shifts.
    gram = np.array([[wm @ (f_b * f_b), wm @ (f_b * f_a)], [wm @ (f_b * f_a), wm @ (f_a * f_a)]])
    # E_m (E_z tau')^2, the gain of a shift of a whole channel (Stein: E_z tau' = E_z tau z / sqrt(v)).
    slope2 = float(wm @ (np.einsum("mz,z->m", y[1, 1] * z, wz) / sv) ** 2)
    mixed = _Mixed(out, J, unit, H, gram, slope2)
    if not all(np.isfinite(x).all() for x in mixed[1:]):
        return None
    return mixed


def _m_grid(mean: float, sm: float, sv: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E_m over m ~ N(mean, sm^2) (docs/predictor.md, "Numerics")."""
    # A spread below 1e-6 of the scale changes the integrals by < 1e-12 (and is often the
    # rounding error of a centring, e.g. a BatchNorm of a map): one node.
    if sm <= 1e-6 * (abs(mean) + sv):
        return np.array([mean]), np.ones(1)
    if sm <= sv:
        x, w = _HERMITE
        return mean + sm * x, w / w.sum()
    # Steps of sqrt(v)/2 resolve what the z-smoothing leaves of a kink; 0.1 sm the density.
    step = min(0.1 * sm, 0.5 * sv) if sv > 0 else 0.1 * sm
    n = math.ceil(_M_RANGE * sm / step)
    if n <= _MAX_UNIFORM:
        ms = mean + step * np.arange(-n, n + 1)
    else:
        # Two scales: steps of 0.05 sm over the density, steps of sqrt(v)/2 within 20 sqrt(v)
        # of 0, beyond which a kink at 0 is outside every row's z-range.
        coarse = mean + sm * np.linspace(-_M_RANGE, _M_RANGE, 341)
        fine = 0.5 * sv * np.arange(-40, 41)
        ms = np.union1d(coarse, np.clip(fine, mean - _M_RANGE * sm, mean + _M_RANGE * sm))
    # Trapezoid weights times the density.
    w = np.zeros_like(ms)
    w[:-1] += np.diff(ms) / 2
    w[1:] += np.diff(ms) / 2
    w *= np.exp(-0.5 * ((ms - mean) / sm) ** 2)
    return ms, w / w.sum()


def _values_and_slopes(fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """tau(h) and tau'(h) elementwise, in float64: autograd, else central differences."""
    flat = h.flatten()  # 1-D, as the function was checked on
    x = flat.clone().requires_grad_(True)
    try:
        y = fn(x)
        if y.requires_grad:
            (dy,) = torch.autograd.grad(y.sum(), x)
            return y.detach().view_as(h).numpy(), dy.view_as(h).numpy()
    except RuntimeError:
        pass  # e.g. an op without a derivative formula
    with torch.no_grad():
        step = 1e-5 * (1.0 + flat.abs())
        y = fn(flat.clone())
        dy = (fn(flat + step) - fn(flat - step)) / (2 * step)
    return y.view_as(h).numpy(), dy.view_as(h).numpy()
