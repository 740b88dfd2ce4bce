"""Metrics for conditional densities and for multi-valued (inverse) problems.

* :func:`negative_log_likelihood` - mean ``-log p(y | x)`` of a predictive
  distribution.
* :func:`best_of_m_error` - distance from the truth to the nearest predicted
  mode (or hypothesis).
* :func:`mode_recall` - fraction of the true branches matched by a predicted
  mode (one-to-one).
* :func:`forward_consistency_error` - apply the forward map to predicted modes
  and measure the distance to the observed input (Bishop 1994's robot-arm
  table).
* :func:`interval_coverage` - fraction of targets inside their intervals.
* :func:`crps` - continuous ranked probability score for scalar y, closed form
  for Gaussian mixtures.

Modes and branches are NaN-padded arrays ``(n, M, d)`` (or ``(n, M)`` for
scalar y), the layout returned by ``predict_modes`` and by the generators'
``inverse`` functions.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtr
from torch.distributions import Normal

from ..distributions import MixtureDistribution
from .intervals import in_intervals

__all__ = [
    "best_of_m_error",
    "crps",
    "forward_consistency_error",
    "interval_coverage",
    "mode_recall",
    "negative_log_likelihood",
]


def _as_np(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if hasattr(a, "to_numpy"):
        a = a.to_numpy()
    try:
        return np.asarray(a, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__}") from e


def _points(a, name: str) -> np.ndarray:
    """(n, M) or (n, M, d) -> (n, M, d)."""
    a = _as_np(a, name)
    if a.ndim == 2:
        return a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (n, M) for scalar y or (n, M, d), got {a.shape}")
    return a


def _truth(y, name: str, n: int, d: int) -> np.ndarray:
    """(n,) or (n, d) -> (n, 1, d)."""
    y = _as_np(y, name)
    if y.ndim == 1 and d == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape != (n, d):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, {d}) to match the modes, got {y.shape}")
    return y[:, None, :]


def _reduce(v: np.ndarray, reduction: str, name: str = "reduction"):
    if reduction == "mean":
        return float(np.mean(v))
    if reduction == "none":
        return v
    raise ValueError(f"{name} must be 'mean' or 'none', got {reduction!r}")


def negative_log_likelihood(dist, y, reduction: str = "mean"):
    """Mean negative log-likelihood ``-log p(y_i | x_i)`` of a predictive distribution.

    For continuous y the value is a negative log *density*: it can be
    negative, and it shifts by ``log c`` when y is rescaled by c.

    Parameters
    ----------
    dist : torch Distribution with batch shape (n,)
        E.g. ``estimator.predict_distribution(X)``.
    y : array (n,) or (n, d_y)
    reduction : {"mean", "none"}

    Returns
    -------
    float, or (n,) per-row values for ``reduction="none"``.

    Shapes
    ------
    dist: batch shape (n,), event shape () or (d_y,); y (n,) for scalar y,
    (n, d_y) for vector y; returns a float, or (n,) for ``reduction="none"``.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> round(negative_log_likelihood(Normal(torch.zeros(2), torch.ones(2)), [0.0, 0.0]), 4)
    0.9189
    """
    ref = getattr(dist, "mean", None)
    dtype = ref.dtype if isinstance(ref, torch.Tensor) else torch.float64
    dev = ref.device if isinstance(ref, torch.Tensor) else None
    yt = torch.as_tensor(_as_np(y, "y"), dtype=dtype, device=dev)
    with torch.no_grad():
        v = -dist.log_prob(yt).cpu().numpy()
    return _reduce(v, reduction)


def best_of_m_error(modes, y_true, reduction: str = "mean"):
    """Distance from the truth to the nearest of the M predicted modes.

    Parameters
    ----------
    modes : (n, M) or (n, M, d), NaN padding
    y_true : (n,) or (n, d)
    reduction : {"mean", "none"}

    Returns
    -------
    float, or (n,) distances for ``reduction="none"`` (Euclidean in y).

    Shapes
    ------
    modes (n, M) for scalar y, (n, M, d_y) for vector y; y_true (n,) for
    scalar y, (n, d_y) for vector y (the same d_y as the modes); returns a
    float, or (n,) for ``reduction="none"``.

    Examples
    --------
    >>> import numpy as np
    >>> best_of_m_error(np.array([[0.0, 5.0], [1.0, np.nan]]), np.array([4.0, 1.0]), reduction="none")
    array([1., 0.])
    """
    m = _points(modes, "modes")
    t = _truth(y_true, "y_true", m.shape[0], m.shape[2])
    dist = np.sqrt(((m - t) ** 2).sum(-1))
    dist = np.where(np.isnan(dist), np.inf, dist)
    return _reduce(dist.min(1), reduction)


def mode_recall(modes, true_branches, tol: float, reduction: str = "mean"):
    """Fraction of true branches matched by a predicted mode (one-to-one, within ``tol``).

    Each predicted mode can match at most one true branch and vice versa; the
    matching maximises the number of pairs closer than ``tol`` (Euclidean in
    y), so that one mode sitting between two branches does not count twice.

    Parameters
    ----------
    modes : (n, M) or (n, M, d), NaN padding
    true_branches : (n, B) or (n, B, d), NaN padding (rows may have different counts)
    tol : float
        Largest distance at which a mode recovers a branch.
    reduction : {"mean", "none"}
        "mean": matched branches / all true branches (rows with no branch do
        not count); "none": per-row fraction (NaN for rows without branches).

    Returns
    -------
    float, or (n,) per-row fractions for ``reduction="none"``.

    Shapes
    ------
    modes (n, M) or (n, M, d_y); true_branches (n, B) or (n, B, d_y) with
    the same n and d_y as the modes (M and B may differ); returns a float, or
    (n,) for ``reduction="none"``.

    Examples
    --------
    >>> import numpy as np
    >>> modes = np.array([[0.0, 1.0], [0.5, np.nan]])
    >>> truth = np.array([[0.02, 0.98], [0.0, 1.0]])
    >>> mode_recall(modes, truth, tol=0.1)
    0.5
    """
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    m = _points(modes, "modes")
    b = _points(true_branches, "true_branches")
    if m.shape[0] != b.shape[0] or m.shape[2] != b.shape[2]:
        raise ValueError(f"modes {m.shape} and true_branches {b.shape} must have the same rows and dimension")
    dist = np.sqrt(((b[:, :, None, :] - m[:, None, :, :]) ** 2).sum(-1))  # (n, B, M)
    close = np.where(np.isnan(dist), False, dist < tol)
    n_true = (~np.isnan(b).any(-1)).sum(1)
    matched = np.zeros(len(m))
    # rows where the greedy count is unambiguous (no mode close to two branches, no branch close to two modes)
    simple = (close.sum(1) <= 1).all(1) & (close.sum(2) <= 1).all(1)
    matched[simple] = close[simple].sum((1, 2))
    for i in np.flatnonzero(~simple):
        cost = np.where(close[i], 0.0, 1.0) + 1e-9 * np.nan_to_num(dist[i], nan=1e9)
        r, c = linear_sum_assignment(cost)
        matched[i] = close[i][r, c].sum()
    if reduction == "mean":
        tot = n_true.sum()
        return float(matched.sum() / tot) if tot > 0 else math.nan
    if reduction == "none":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_true > 0, matched / np.maximum(n_true, 1), np.nan)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def forward_consistency_error(forward, modes, X, which: str = "top", weights=None, reduction: str = "rms"):
    """Distance between the observed input and the forward map of predicted modes.

    For an inverse problem with a known forward map (robot arm: joint angles
    to hand position), a predicted answer is *consistent* when the forward map
    sends it back to the observed x.  Bishop (1994) reports the RMS of this
    error for the robot arm.

    Parameters
    ----------
    forward : callable
        ``forward(y (m, d_y)) -> x (m, d_x)`` (NumPy arrays).
    modes : (n, M, d_y), or (n, M) for scalar y; NaN padding; sorted by
        decreasing mass (``predict_modes``'s layout).  Single predictions
        ``y_hat`` (n, d_y), e.g. a regressor's ``predict``, are passed as
        ``y_hat[:, None, :]`` (M = 1).
    X : (n, d_x) observed inputs.
    which : {"top", "weighted", "all"}, default="top"
        "top": the first mode of every row; "weighted": the mass-weighted mean
        of the per-mode squared errors (needs ``weights``); "all": every valid
        mode counts as one prediction.
    weights : (n, M), optional
        Mode masses, for ``which="weighted"``.
    reduction : {"rms", "mean", "none"}, default="rms"
        "rms": ``sqrt(mean ||f(y) - x||^2)``; "mean": mean Euclidean error;
        "none": per-row errors (n,) for "top", (n, M) for "all" (NaN padding).

    Returns
    -------
    float, or an array for ``reduction="none"`` (see Shapes).

    Shapes
    ------
    forward: (m, d_y) -> (m, d_x); modes (n, M, d_y), or (n, M) for scalar
    y; X (n, d_x) (a 1-D X (n,) is read as d_x = 1); weights (n, M).
    Returns a float, or for ``reduction="none"``: (n,) for ``which="top"``
    and ``"weighted"``, (n, M) for ``which="all"`` (NaN padding).

    Examples
    --------
    >>> import numpy as np
    >>> fwd = lambda y: y ** 2
    >>> forward_consistency_error(fwd, np.array([[2.0, -2.0], [3.0, np.nan]]), np.array([[4.0], [8.0]]))
    0.7071067811865476
    """
    if which not in ("top", "weighted", "all"):
        raise ValueError(f"which must be 'top', 'weighted' or 'all', got {which!r}")
    if reduction not in ("rms", "mean", "none"):
        raise ValueError(f"reduction must be 'rms', 'mean' or 'none', got {reduction!r}")
    X = _as_np(X, "X")
    if X.ndim == 1:
        X = X[:, None]
    n = X.shape[0]
    m = _as_np(modes, "modes")
    m = _points(m, "modes")
    if m.shape[0] != n:
        raise ValueError(f"modes has {m.shape[0]} rows but X has {n}")
    M, d = m.shape[1], m.shape[2]
    flat = m.reshape(n * M, d)
    valid = ~np.isnan(flat).any(1)
    fx = np.full((n * M, X.shape[1]), np.nan)
    if valid.any():
        fx[valid] = np.asarray(forward(flat[valid]), dtype=float).reshape(int(valid.sum()), -1)
    sq = ((fx.reshape(n, M, -1) - X[:, None, :]) ** 2).sum(-1)  # (n, M), NaN for padding
    if which == "top":
        e2 = sq[:, 0]
    elif which == "all":
        if reduction == "none":
            return np.sqrt(sq)
        e2 = sq[~np.isnan(sq)]
    else:
        if weights is None:
            raise ValueError("which='weighted' needs the mode masses: pass weights=(n, M)")
        w = _as_np(weights, "weights")
        if w.shape != sq.shape:
            raise ValueError(f"weights must have shape {sq.shape}, got {w.shape}")
        w = np.where(np.isnan(sq), 0.0, np.nan_to_num(w))
        e2 = (w * np.nan_to_num(sq)).sum(1) / np.maximum(w.sum(1), 1e-300)
    if reduction == "none":
        return np.sqrt(e2)
    if reduction == "rms":
        return float(np.sqrt(np.mean(e2)))
    return float(np.mean(np.sqrt(e2)))


def interval_coverage(y, intervals, reduction: str = "mean"):
    """Fraction of targets that fall inside their (union of) intervals.

    Parameters
    ----------
    y : (n,)
    intervals : (n, J, 2) or (n, 2), NaN padding (``predict_interval``'s layout)
    reduction : {"mean", "none"}

    Returns
    -------
    float, or (n,) indicators (1.0 inside, 0.0 outside) for ``reduction="none"``.

    Shapes
    ------
    y (n,); intervals (n, J, 2) or (n, 2); returns a float, or (n,) for
    ``reduction="none"``.

    Examples
    --------
    >>> import numpy as np
    >>> interval_coverage(np.array([0.5, 3.0]), np.array([[0.0, 1.0], [0.0, 1.0]]))
    0.5
    """
    yv = _as_np(y, "y")
    if yv.ndim != 1:
        raise ValueError(f"y must be 1-D (scalar targets), got shape {yv.shape}")
    inside = in_intervals(yv, _as_np(intervals, "intervals"))
    return _reduce(inside.astype(float), reduction)


def _crps_gauss_term(mu, var):
    """E|X| for X ~ N(mu, var): ``2 s phi(mu/s) + mu (2 Phi(mu/s) - 1)``."""
    s = np.sqrt(var)
    z = mu / s
    return 2 * s * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) + mu * (2 * ndtr(z) - 1)


def crps(dist, y, reduction: str = "mean", n_grid: int = 2000):
    """Continuous ranked probability score for scalar y (lower is better).

    ``CRPS(F, y) = E|Y - y| - E|Y - Y'| / 2`` with Y, Y' independent draws from
    F.  For a mixture of Normal components the closed form of Grimit et al.
    (2006) is used; for any other scalar distribution with a CDF (other
    mixtures, Student-t, ...) the integral ``int (F(z) - 1{z >= y})^2 dz`` is
    computed on a grid between the 1e-6 and 1 - 1e-6 quantiles.

    Parameters
    ----------
    dist : MixtureDistribution (scalar y) or a torch Distribution with ``cdf``/``icdf``
    y : array (n,)
    reduction : {"mean", "none"}
    n_grid : int, default=2000
        Grid size of the numerical fallback.

    Returns
    -------
    float, or (n,) per-row scores for ``reduction="none"``.

    Shapes
    ------
    dist: batch shape (n,), event shape () (with K components for a
    mixture); y (n,); returns a float, or (n,) for ``reduction="none"``.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> m = MixtureDistribution(torch.zeros(1, 1, dtype=torch.float64),
    ...                         Normal(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)))
    >>> round(crps(m, [0.0]), 6)  # (sqrt(2) - 1) / sqrt(pi)
    0.233695
    """
    yv = _as_np(y, "y")
    if yv.ndim != 1:
        raise ValueError(f"y must be 1-D (scalar targets), got shape {yv.shape}")
    if len(getattr(dist, "event_shape", ())) != 0:
        raise ValueError("crps is defined for scalar y; this distribution has a vector event shape")
    with torch.no_grad():
        if isinstance(dist, MixtureDistribution) and isinstance(dist.components, Normal):
            w = dist.weights.cpu().numpy().astype(float)
            mu = dist.components.mean.cpu().numpy().astype(float)
            var = dist.components.variance.cpu().numpy().astype(float)
            if mu.shape[0] != len(yv):
                raise ValueError(f"y has {len(yv)} rows but the distribution has {mu.shape[0]}")
            t1 = (w * _crps_gauss_term(yv[:, None] - mu, var)).sum(1)
            t2 = (w[:, :, None] * w[:, None, :] * _crps_gauss_term(mu[:, :, None] - mu[:, None, :],
                                                                 var[:, :, None] + var[:, None, :])).sum((1, 2))
            v = t1 - 0.5 * t2
        else:
            v = _crps_numeric(dist, yv, int(n_grid))
    return _reduce(v, reduction)


def _crps_numeric(dist, yv: np.ndarray, n_grid: int) -> np.ndarray:
    ref = dist.mean
    dtype, dev = ref.dtype, ref.device
    n = len(yv)
    lo = dist.icdf(torch.full((n,), 1e-6, dtype=dtype, device=dev))
    hi = dist.icdf(torch.full((n,), 1 - 1e-6, dtype=dtype, device=dev))
    yt = torch.as_tensor(yv, dtype=dtype, device=dev)
    lo = torch.minimum(lo, yt) - 1e-9
    hi = torch.maximum(hi, yt) + 1e-9
    # split at y so that both integrands are smooth: int_lo^y F^2 + int_y^hi (1 - F)^2
    u = torch.linspace(0, 1, max(n_grid // 2, 16), dtype=dtype, device=dev)[:, None]
    z1 = lo[None, :] + (yt - lo)[None, :] * u  # (G, n)
    z2 = yt[None, :] + (hi - yt)[None, :] * u
    v = torch.trapezoid(dist.cdf(z1) ** 2, z1, dim=0) + torch.trapezoid((1 - dist.cdf(z2)) ** 2, z2, dim=0)
    # beyond the grid: F < 1e-6 below lo and 1 - F < 1e-6 above hi, negligible squared
    return v.cpu().numpy().astype(float)
