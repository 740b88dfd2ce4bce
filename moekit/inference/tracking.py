"""Tracking through time: carry every branch of p(pose | frame) along a sequence.

A conditional mixture fitted frame by frame (``p(pose_t | frame_t)``, e.g. the
3-D pose of a person from one 2-D image) is multimodal on ambiguous frames:
each image has several 3-D explanations.  Over a sequence, a smoothness model
``p(pose_t | pose_{t-1})`` resolves them from their neighbours.  This module
gives two ways to combine the two:

* :func:`filter_mixture` - **mixture propagation** (a Gaussian-sum filter, as
  in discriminative density propagation for 3-D tracking, Sminchisescu et al.
  2005/2007): the filtered density of frame t is a mixture; predicting it one
  frame ahead widens every hypothesis by the motion noise, and multiplying it
  by frame t's conditional mixture gives ``H x K`` hypotheses, which are then
  pruned (negligible weight) and merged (moment matching of near
  hypotheses) back to at most ``max_hypotheses``.
* :func:`track_modes` / :func:`viterbi` - the **most probable sequence of
  branches**: the modes of every frame (:func:`~moekit.inference.find_modes`)
  are the states of a hidden Markov chain, each scored by its probability
  mass, transitions by the motion model; dynamic programming finds the best
  path through all frames at once, so an ambiguous frame is decided by the
  frames before *and after* it.

The motion model is a Gaussian random walk on the pose (``order=1``: steps
``pose_t - pose_{t-1} ~ N(0, Q)``) or on its velocity (``order=2``, constant
velocity: accelerations ``pose_t - 2 pose_{t-1} + pose_{t-2} ~ N(0, Q)``);
:func:`estimate_transition_cov` estimates Q from training sequences.

Assumption: the per-frame mixture is used as a likelihood of the pose (up to
a constant), i.e. the pose prior of the data that the per-frame model was
trained on is taken as flat over the poses in play.  This is the usual
approximation when a discriminative per-frame model is combined with a
motion model.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.distributions import MultivariateNormal, Normal

from ..distributions import MixtureDistribution, covariance, flatten_leaves
from .modes import find_modes

__all__ = ["FilterResult", "TrackResult", "estimate_transition_cov", "filter_mixture", "track_modes", "viterbi"]


class TrackResult(tuple):
    """``(path, index)`` with the other fields as attributes.

    Attributes
    ----------
    path : ndarray (T, d) or (T,) for scalar y
        The chosen mode of every frame.
    index : ndarray (T,)
        Its column in ``modes``.
    log_score : float
        Log-probability of the path under the chain (unary + transitions).
    modes, weights : ndarray (T, M, d) / (T, M)
        The candidates (per-frame modes) and their masses.

    Parameters
    ----------
    path, index, log_score, modes, weights
        The fields above, in that order (built by :func:`track_modes`).

    Shapes
    ------
    path (T, d), or (T,) for scalar y; index (T,) of int; modes (T, M, d),
    or (T, M) for scalar y; weights (T, M).  T frames, M candidate columns
    per frame (NaN padding), d the dimension of y.

    Examples
    --------
    >>> import numpy as np
    >>> res = TrackResult(np.zeros(3), np.zeros(3, dtype=int), 0.0, np.zeros((3, 2)), np.ones((3, 2)) / 2)
    >>> path, index = res
    >>> path.shape, res.modes.shape, res.weights.shape
    ((3,), (3, 2), (3, 2))
    """

    def __new__(cls, path, index, log_score, modes, weights):
        self = tuple.__new__(cls, (path, index))
        self.path, self.index, self.log_score, self.modes, self.weights = path, index, log_score, modes, weights
        return self


class FilterResult(tuple):
    """``(distribution, mean_path)`` with the other fields as attributes.

    Attributes
    ----------
    distribution : MixtureDistribution
        Batch (T,): the filtered mixture of every frame over the pose
        (MultivariateNormal components, ``max_hypotheses`` of them, unused
        ones with weight 0).
    mean_path : ndarray (T, d) or (T,)
        Mean of the heaviest hypothesis of every frame (the filter's
        point estimate).
    means : ndarray (T, H, d); covariances (T, H, d, d); weights (T, H)
        The hypotheses (NaN / 0 padding); for scalar y means (T, H) and
        covariances (T, H) (variances).
    log_evidence : float
        ``sum_t log p(frame_t | frames_<t)`` under the combined model (up to
        the constant of the flat-prior assumption).

    Parameters
    ----------
    distribution, mean_path, means, covariances, weights, log_evidence
        The fields above, in that order (built by :func:`filter_mixture`).

    Shapes
    ------
    distribution: batch (T,), H components, event (d,) (or () for scalar
    y); mean_path (T, d) or (T,); means (T, H, d) or (T, H); covariances
    (T, H, d, d) or (T, H); weights (T, H).  T frames, H =
    ``max_hypotheses``, d the dimension of y.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> from moekit.inference import filter_mixture
    >>> mu = torch.tensor([[0.0, 5.0]] * 4, dtype=torch.float64)
    >>> frames = MixtureDistribution(torch.full((4, 2), 0.5, dtype=torch.float64).log(),
    ...                              Normal(mu, torch.ones(4, 2, dtype=torch.float64)))
    >>> res = filter_mixture(frames, transition_cov=0.1, max_hypotheses=3)
    >>> dist, mean_path = res
    >>> tuple(dist.batch_shape), mean_path.shape, res.means.shape, res.covariances.shape, res.weights.shape
    ((4,), (4,), (4, 3), (4, 3), (4, 3))
    """

    def __new__(cls, distribution, mean_path, means, covariances, weights, log_evidence):
        self = tuple.__new__(cls, (distribution, mean_path))
        self.distribution, self.mean_path = distribution, mean_path
        self.means, self.covariances, self.weights, self.log_evidence = means, covariances, weights, log_evidence
        return self


# --------------------------------------------------------------- utilities
def _as_cov(q, d: int, name: str = "transition_cov") -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if q.ndim == 0:
        q = np.eye(d) * float(q)
    elif q.ndim == 1:
        q = np.diag(q)
    if q.shape != (d, d):
        raise ValueError(f"{name} must be a scalar, a (d,) vector of variances or a ({d}, {d}) matrix; got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} contains NaN or infinite values")
    q = 0.5 * (q + q.T)
    ev = np.linalg.eigvalsh(q)
    if ev.min() <= 0:
        raise ValueError(f"{name} must be positive definite; its smallest eigenvalue is {ev.min():.3g}")
    return q


def _check_order(order) -> int:
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (random walk on the pose) or 2 (constant velocity), got {order!r}")
    return int(order)


def estimate_transition_cov(sequences, order: int = 1, shrinkage: float = 1e-6) -> np.ndarray:
    """Covariance of the motion noise from training sequences.

    Parameters
    ----------
    sequences : array (S, T, d), (T, d), (T,) or a list of (T_i, d) arrays
    order : {1, 2}
        1: covariance of the steps ``x_t - x_{t-1}``; 2: of the accelerations
        ``x_t - 2 x_{t-1} + x_{t-2}``.
    shrinkage : float, default=1e-6
        Added to the diagonal, relative to its mean, so that Q is always
        positive definite.

    Returns
    -------
    ndarray (d, d)

    Shapes
    ------
    sequences (S, T, d) (S sequences of T frames), (T, d), (T,) (read as
    d = 1) or a list of (T_i, d) / (T_i,) arrays -> (d, d).  A 2-D array is
    always one sequence (T, d).

    Examples
    --------
    >>> import numpy as np
    >>> walk = np.cumsum(np.random.default_rng(0).normal(0, 0.1, (5000, 1)), axis=0)
    >>> round(float(estimate_transition_cov(walk)[0, 0]), 3)
    0.01
    """
    order = _check_order(order)
    if isinstance(sequences, (list, tuple)):
        seqs = [np.asarray(s, dtype=float) for s in sequences]
    else:
        a = np.asarray(sequences, dtype=float)
        seqs = list(a) if a.ndim == 3 else [a]
    diffs = []
    for s in seqs:
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise ValueError(f"each sequence must be (T,) or (T, d), got shape {s.shape}")
        dd = np.diff(s, n=order, axis=0)
        if len(dd):
            diffs.append(dd)
    if not diffs:
        raise ValueError(f"the sequences are too short: order={order} needs at least {order + 1} frames")
    dd = np.concatenate(diffs)
    if not np.all(np.isfinite(dd)):
        raise ValueError("sequences contain NaN or infinite values")
    q = dd.T @ dd / len(dd)
    return q + shrinkage * max(float(np.trace(q)) / q.shape[0], 1e-300) * np.eye(q.shape[0])


def _frames(frames, X=None):
    """The per-frame MixtureDistribution: given directly, or an estimator and X."""
    if hasattr(frames, "predict_distribution"):
        if X is None:
            raise ValueError("pass the frames' inputs X (T, d_x) together with a fitted estimator")
        return frames.predict_distribution(X)
    if X is not None:
        raise ValueError("X is only used with an estimator; pass either (estimator, X) or a MixtureDistribution")
    if not hasattr(frames, "log_weights"):
        raise TypeError(
            "frames must be a moekit MixtureDistribution with batch shape (T,) or a fitted conditional-mixture "
            f"estimator (with X), got {type(frames).__name__}"
        )
    return frames


def _gaussian_parts(mix):
    """Log weights (T, K), means (T, K, d), covariances (T, K, d, d) of the leaves (moment-matched)."""
    lws, mus, covs = [], [], []
    scalar = len(mix.event_shape) == 0
    for g in flatten_leaves(mix):
        mu = g.attr("mean")
        if scalar:
            cov = g.attr("variance")[..., None, None]
            mu = mu[..., None]
        else:
            c = covariance(g.dist)
            cov = c if g.stacked else c.unsqueeze(1)
        lws.append(g.log_weights)
        mus.append(mu)
        covs.append(cov.expand(mu.shape + mu.shape[-1:]))
    f = lambda ts: torch.cat(ts, 1).detach().cpu().to(torch.float64).numpy()
    lw, mu, cov = f(lws), f(mus), f(covs)
    if not np.all(np.isfinite(cov[np.isfinite(lw)])):
        raise ValueError("a component has an infinite variance (e.g. Student-t with df <= 2); it cannot be tracked "
                         "by Gaussian propagation")
    return lw, mu, cov


def _log_gauss(e, s):
    """log N(e; 0, S) for e (..., d), S (..., d, d)."""
    d = e.shape[-1]
    L = np.linalg.cholesky(s)
    z = np.linalg.solve(L, e[..., None])[..., 0]
    return -0.5 * (z * z).sum(-1) - np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1) - 0.5 * d * math.log(2 * math.pi)


# ------------------------------------------------------------------ Viterbi
def viterbi(candidates, log_unary, transition_cov, order: int = 1, initial_cov=None):
    """Most probable path through per-frame candidates under a Gaussian motion model.

    Maximises ``sum_t log_unary[t, i_t] + sum_t log N(step_t; 0, Q)`` where
    ``step_t = c_t - c_{t-1}`` (``order=1``) or ``c_t - 2 c_{t-1} + c_{t-2}``
    (``order=2``; the first step then uses ``initial_cov``, default 25 Q).

    Parameters
    ----------
    candidates : array (T, M, d) or (T, M) for scalar y, NaN padding
    log_unary : array (T, M)
        Score of every candidate (e.g. log of its mass); -inf or NaN for
        padding.  Every frame needs at least one valid candidate.
    transition_cov : float, (d,) or (d, d)
        Q.
    order : {1, 2}
    initial_cov : float, (d,) or (d, d), optional
        For order 2: covariance of the first step.

    Returns
    -------
    path : ndarray (T, d) or (T,)
    index : ndarray (T,) of int
    log_score : float

    Shapes
    ------
    candidates (T, M, d), or (T, M) for scalar y; log_unary (T, M);
    transition_cov and initial_cov () scalar, (d,) variances or (d, d);
    path (T, d), or (T,) for scalar candidates; index (T,).

    Examples
    --------
    >>> import numpy as np
    >>> cand = np.array([[0.0, 5.0], [0.1, 5.0], [0.2, 5.0]])  # two branches, the one at 5 is heavier
    >>> unary = np.log(np.array([[0.4, 0.6], [0.4, 0.6], [0.9, 0.1]]))
    >>> path, index, score = viterbi(cand, unary, transition_cov=0.01)
    >>> index
    array([0, 0, 0])
    """
    order = _check_order(order)
    c = np.asarray(candidates, dtype=float)
    scalar = c.ndim == 2
    if scalar:
        c = c[..., None]
    if c.ndim != 3:
        raise ValueError(f"candidates must have shape (T, M, d) or (T, M), got {np.shape(candidates)}")
    T, M, d = c.shape
    u = np.asarray(log_unary, dtype=float)
    if u.shape != (T, M):
        raise ValueError(f"log_unary must have shape {(T, M)} like the candidates, got {u.shape}")
    valid = ~np.isnan(c).any(-1) & ~np.isnan(u) & (u > -np.inf)
    if not valid.any(1).all():
        bad = int(np.flatnonzero(~valid.any(1))[0])
        raise ValueError(f"frame {bad} has no valid candidate; every frame needs at least one")
    u = np.where(valid, u, -np.inf)
    cz = np.where(valid[..., None], c, 0.0)
    q = _as_cov(transition_cov, d)
    qi = np.linalg.inv(q)
    const = -0.5 * np.linalg.slogdet(q)[1] - 0.5 * d * math.log(2 * math.pi)

    def trans(e, prec, cst):  # e (..., d)
        return cst - 0.5 * np.einsum("...i,ij,...j->...", e, prec, e)

    if order == 1 or T < 2:
        score = u[0].copy()
        back = np.zeros((T, M), dtype=int)
        for t in range(1, T):
            e = cz[t][:, None, :] - cz[t - 1][None, :, :]  # (i, j, d)
            tot = score[None, :] + trans(e, qi, const)  # (i, j)
            back[t] = np.argmax(tot, 1)
            score = tot[np.arange(M), back[t]] + u[t]
        idx = np.zeros(T, dtype=int)
        idx[-1] = int(np.argmax(score))
        best = float(score[idx[-1]])
        for t in range(T - 1, 0, -1):
            idx[t - 1] = back[t, idx[t]]
    else:
        q0 = _as_cov(25.0 * q if initial_cov is None else initial_cov, d, "initial_cov")
        q0i = np.linalg.inv(q0)
        c0 = -0.5 * np.linalg.slogdet(q0)[1] - 0.5 * d * math.log(2 * math.pi)
        # pair states (j at t-1, i at t)
        e = cz[1][None, :, :] - cz[0][:, None, :]  # (j, i, d)
        score = u[0][:, None] + u[1][None, :] + trans(e, q0i, c0)  # (j, i)
        back = np.zeros((T, M, M), dtype=int)  # back[t, j, i] = k at t-2
        for t in range(2, T):
            # from (k, j) at t-1 to (j, i) at t
            acc = cz[t][None, None, :, :] - 2 * cz[t - 1][None, :, None, :] + cz[t - 2][:, None, None, :]  # (k, j, i, d)
            tot = score[:, :, None] + trans(acc, qi, const)  # (k, j, i)
            back[t] = np.argmax(tot, 0)
            score = np.take_along_axis(tot, back[t][None], 0)[0] + u[t][None, :]
        j, i = np.unravel_index(int(np.argmax(score)), score.shape)
        best = float(score[j, i])
        idx = np.zeros(T, dtype=int)
        idx[-1], idx[-2] = i, j
        for t in range(T - 1, 1, -1):
            idx[t - 2] = back[t, idx[t - 1], idx[t]]
    path = c[np.arange(T), idx]
    return (path[:, 0] if scalar else path), idx, best


def track_modes(frames, transition_cov, X=None, order: int = 1, max_modes: int | None = 8,
                min_weight: float = 0.01, unary: str = "mass", **mode_kwargs) -> TrackResult:
    """The most probable sequence of branches: Viterbi over the modes of every frame.

    Parameters
    ----------
    frames : MixtureDistribution (batch T) or a fitted estimator (then pass X)
        ``p(pose_t | frame_t)`` for the frames of ONE sequence, in time order.
    transition_cov : float, (d,) or (d, d)
        Q of the motion model (see :func:`estimate_transition_cov`).
    X : array (T, d_x), optional
        The frames' inputs, with an estimator.
    order : {1, 2}
    max_modes : int, default=8
        Candidates per frame (the heaviest modes).
    min_weight : float, default=0.01
        Modes lighter than this are not candidates.
    unary : {"mass", "density", "none"}, default="mass"
        Score of a candidate: log of its probability mass, log of the density
        at the mode, or nothing (motion model only).
    **mode_kwargs
        Passed to :func:`moekit.inference.find_modes`.

    Returns
    -------
    TrackResult
        Unpacks as ``(path, index)``; also ``log_score``, ``modes``, ``weights``.

    Shapes
    ------
    frames: batch (T,), event (d,) or () (or X (T, d_x) with an
    estimator); transition_cov () scalar, (d,) or (d, d); path (T, d) or
    (T,) for scalar y; index (T,); modes (T, M, d) or (T, M); weights
    (T, M).  M = ``max_modes`` when it is given, else the most modes of any
    frame.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> mu = torch.tensor([[0.0, 5.0], [0.1, 5.0], [0.2, 5.0], [0.3, 5.0]], dtype=torch.float64)
    >>> w = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6], [0.9, 0.1]], dtype=torch.float64)
    >>> frames = MixtureDistribution(w.log(), Normal(mu, 0.1 * torch.ones(4, 2, dtype=torch.float64)))
    >>> path, index = track_modes(frames, transition_cov=0.01, max_modes=2)
    >>> path.round(4)  # stays on the branch near 0 through the ambiguous frames
    array([0. , 0.1, 0.2, 0.3])
    >>> index  # column of the chosen mode (column 0 is the heaviest)
    array([0, 1, 1, 0])
    """
    if unary not in ("mass", "density", "none"):
        raise ValueError(f"unary must be 'mass', 'density' or 'none', got {unary!r}")
    mix = _frames(frames, X)
    res = find_modes(mix, max_modes=max_modes, min_weight=min_weight, **mode_kwargs).numpy()
    modes, w = res.modes, res.weights
    with np.errstate(divide="ignore"):
        if unary == "mass":
            u = np.log(w)
        elif unary == "density":
            u = res.log_density.copy()
        else:
            u = np.where(np.isnan(w), np.nan, 0.0)
    path, idx, score = viterbi(modes, u, transition_cov, order=order)
    return TrackResult(path, idx, score, modes, w)


# ------------------------------------------------------------------- filter
def _merge(lw, m, P, max_h, prune, merge_distance):
    """Prune and merge one frame's hypotheses (numpy, float64).

    lw (N,), m (N, D), P (N, D, D) -> the same, at most max_h, weights renormalised.
    Greedy (Salmond / Runnalls style): take the heaviest, merge every
    hypothesis within ``merge_distance`` Mahalanobis (under its covariance)
    by moment matching, repeat.
    """
    lw = lw - np.logaddexp.reduce(lw)
    keep = lw > math.log(prune)
    keep[np.argmax(lw)] = True
    lw, m, P = lw[keep], m[keep], P[keep]
    order = np.argsort(-lw)
    lw, m, P = lw[order], m[order], P[order]
    out_w, out_m, out_P = [], [], []
    used = np.zeros(len(lw), dtype=bool)
    for i in range(len(lw)):
        if used[i]:
            continue
        e = m - m[i]
        pi = np.linalg.inv(P[i])
        dist2 = np.einsum("ni,ij,nj->n", e, pi, e)
        grp = (~used) & (dist2 < merge_distance**2)
        grp[i] = True
        used |= grp
        w = np.exp(lw[grp] - lw[grp].max())
        ws = w / w.sum()
        mm = (ws[:, None] * m[grp]).sum(0)
        dm = m[grp] - mm
        PP = (ws[:, None, None] * (P[grp] + dm[:, :, None] * dm[:, None, :])).sum(0)
        out_w.append(lw[grp].max() + math.log(w.sum()))
        out_m.append(mm)
        out_P.append(0.5 * (PP + PP.T))
        if len(out_w) == max_h:
            break
    lw = np.array(out_w)
    return lw - np.logaddexp.reduce(lw), np.array(out_m), np.array(out_P)


def filter_mixture(frames, transition_cov, X=None, order: int = 1, max_hypotheses: int = 10,
                   prune_weight: float = 1e-4, merge_distance: float = 0.5, initial_cov=None,
                   reset_prob: float = 1e-3) -> FilterResult:
    """Filtered mixtures ``p(pose_t | frames_1..t)`` by Gaussian-sum propagation.

    Every hypothesis is a Gaussian over the motion state (the pose, or pose
    and velocity for ``order=2``); one frame: predict every hypothesis with
    the motion model, combine it with every component of the frame's
    conditional mixture (a Kalman update in which component k, N(mu_k,
    Sigma_k), acts as an observation of the pose with noise Sigma_k, weighted
    by gate weight times the predictive likelihood of mu_k), then prune
    hypotheses lighter than ``prune_weight`` and merge those closer than
    ``merge_distance`` (Mahalanobis) by moment matching, keeping at most
    ``max_hypotheses``.  Components are moment-matched to Gaussians (exact
    for Gaussian experts and MDNs).

    So that a track that lost the right branch (pruned during a long
    ambiguous stretch) can recover, the motion model is a mixture: with
    probability ``1 - reset_prob`` the smooth motion, with ``reset_prob`` a
    jump to a pose drawn from a broad Gaussian prior (the mean and covariance
    of all the frames' components); the jump term re-seeds hypotheses at the
    frame's components (velocity unknown for order 2).

    Parameters
    ----------
    frames : MixtureDistribution (batch T) or a fitted estimator (then pass X)
    transition_cov : float, (d,) or (d, d)
        Q: covariance of the steps (order 1) or of the accelerations (order 2).
    X : array (T, d_x), optional
    order : {1, 2}
    max_hypotheses : int, default=10
    prune_weight : float, default=1e-4
    merge_distance : float, default=0.5
    initial_cov : optional
        For order 2: prior covariance of the initial velocity (default 25 Q).
    reset_prob : float, default=1e-3
        Probability per frame of a jump of the pose (0 disables re-seeding).

    Returns
    -------
    FilterResult
        Unpacks as ``(distribution, mean_path)``.

    Shapes
    ------
    frames: batch (T,), event (d,) or () (or X (T, d_x) with an
    estimator); distribution: batch (T,), H = ``max_hypotheses``
    components, event (d,) (or () for scalar y); mean_path (T, d) or (T,);
    means (T, H, d) or (T, H); covariances (T, H, d, d) or (T, H) for
    scalar y; weights (T, H).

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> T = 5  # frame 2 is ambiguous (0 or 5); its neighbours are at 0
    >>> mu = torch.tensor([[0.0, 5.0]] * T, dtype=torch.float64)
    >>> w = torch.tensor([[0.99, 0.01], [0.99, 0.01], [0.4, 0.6], [0.99, 0.01], [0.99, 0.01]], dtype=torch.float64)
    >>> frames = MixtureDistribution(w.log(), Normal(mu, 0.1 * torch.ones(T, 2, dtype=torch.float64)))
    >>> res = filter_mixture(frames, transition_cov=0.05)
    >>> bool(abs(res.mean_path[2]) < 0.1)
    True
    """
    order = _check_order(order)
    if not (isinstance(max_hypotheses, numbers.Integral) and max_hypotheses >= 1):
        raise ValueError(f"max_hypotheses must be a positive integer, got {max_hypotheses!r}")
    if not (isinstance(prune_weight, numbers.Real) and 0 <= prune_weight < 1):
        raise ValueError(f"prune_weight must be in [0, 1), got {prune_weight!r}")
    if not (isinstance(merge_distance, numbers.Real) and merge_distance >= 0):
        raise ValueError(f"merge_distance must be >= 0, got {merge_distance!r}")
    if not (isinstance(reset_prob, numbers.Real) and 0 <= reset_prob < 1):
        raise ValueError(f"reset_prob must be in [0, 1), got {reset_prob!r}")
    mix = _frames(frames, X)
    scalar = len(mix.event_shape) == 0
    with torch.no_grad():
        lwf, muf, covf = _gaussian_parts(mix)
    T, _, d = muf.shape
    q = _as_cov(transition_cov, d)
    D = d * order
    Hm = np.zeros((d, D))
    Hm[:, :d] = np.eye(d)
    v0 = None
    if order == 1:
        F = np.eye(d)
        Qs = q
    else:
        F = np.block([[np.eye(d), np.eye(d)], [np.zeros((d, d)), np.eye(d)]])
        G = np.vstack([0.5 * np.eye(d), np.eye(d)])
        Qs = G @ q @ G.T + 1e-12 * np.trace(q) / d * np.eye(D)
        v0 = _as_cov(25.0 * q if initial_cov is None else initial_cov, d, "initial_cov")
    # broad prior for jumps: moments of all the frames' components
    wf = np.where(np.isfinite(lwf), np.exp(lwf), 0.0)
    wf = wf / wf.sum()
    prior_m = (wf[..., None] * muf).sum((0, 1))
    dm = muf - prior_m
    prior_c = (wf[..., None, None] * (covf + dm[..., :, None] * dm[..., None, :])).sum((0, 1))
    prior_c = 0.5 * (prior_c + prior_c.T) + 1e-9 * max(np.trace(prior_c) / d, 1e-300) * np.eye(d)
    log_keep = math.log1p(-reset_prob)
    H = int(max_hypotheses)
    means = np.full((T, H, d), np.nan)
    covs = np.full((T, H, d, d), np.nan)
    weights = np.zeros((T, H))
    log_ev = 0.0
    hyp = None
    for t in range(T):
        ok = np.isfinite(lwf[t])
        lk, mk, ck = lwf[t][ok], muf[t][ok], covf[t][ok]
        lk = lk - np.logaddexp.reduce(lk)
        if hyp is None:  # first frame: the frame's mixture itself (velocity unknown for order 2)
            m = np.zeros((len(lk), D))
            m[:, :d] = mk
            P = np.zeros((len(lk), D, D))
            P[:, :d, :d] = ck
            if order == 2:
                P[:, d:, d:] = v0
            lw = lk
        else:
            hw, hm, hP = hyp
            pm = hm @ F.T  # predict
            pP = F @ hP @ F.T + Qs
            # update with every component: (J, K) pairs
            hx = pm @ Hm.T  # (J, d)
            S = (Hm @ pP @ Hm.T)[:, None] + ck[None]  # (J, K, d, d)
            e = mk[None] - hx[:, None]  # (J, K, d)
            ll = _log_gauss(e, S)
            lw = (hw[:, None] + lk[None] + ll).reshape(-1)
            PHt = pP @ Hm.T  # (J, D, d)
            Sinv = np.linalg.inv(S)
            Kg = PHt[:, None] @ Sinv  # (J, K, D, d)
            m = (pm[:, None] + (Kg @ e[..., None])[..., 0]).reshape(-1, D)
            P = (pP[:, None] - Kg @ np.swapaxes(PHt, -1, -2)[:, None]).reshape(-1, D, D)
            P = 0.5 * (P + np.swapaxes(P, -1, -2))
            if reset_prob > 0:  # jump term: prior x component k, re-seeded hypotheses
                lw = lw + log_keep
                sb = prior_c[None] + ck
                lb = math.log(reset_prob) + lk + _log_gauss(mk - prior_m, sb)
                gain = prior_c[None] @ np.linalg.inv(sb)  # (K, d, d)
                mb = np.zeros((len(lk), D))
                mb[:, :d] = prior_m + (gain @ (mk - prior_m)[..., None])[..., 0]
                Pb = np.zeros((len(lk), D, D))
                Pb[:, :d, :d] = prior_c[None] - gain @ prior_c[None]
                if order == 2:
                    Pb[:, d:, d:] = v0
                lw = np.concatenate([lw, lb])
                m = np.concatenate([m, mb])
                P = np.concatenate([P, 0.5 * (Pb + np.swapaxes(Pb, -1, -2))])
            log_ev += float(np.logaddexp.reduce(lw))
        hyp = _merge(lw, m, P, H, max(prune_weight, 1e-300), merge_distance)
        nh = len(hyp[0])
        weights[t, :nh] = np.exp(hyp[0])
        means[t, :nh] = hyp[1][:, :d]
        covs[t, :nh] = hyp[2][:, :d, :d]
    mean_path = means[:, 0]
    dtype, dev = mix.log_weights.dtype, mix.log_weights.device
    fill_m = np.where(np.isnan(means), means[:, :1], means)
    fill_c = np.where(np.isnan(covs), covs[:, :1], covs)
    with np.errstate(divide="ignore"):
        lw_t = torch.as_tensor(np.log(weights), dtype=dtype, device=dev)
    comps = MultivariateNormal(torch.as_tensor(fill_m, dtype=dtype, device=dev),
                               covariance_matrix=torch.as_tensor(fill_c, dtype=dtype, device=dev), validate_args=False)
    if scalar:
        comps = Normal(torch.as_tensor(fill_m[..., 0], dtype=dtype, device=dev),
                       torch.as_tensor(np.sqrt(fill_c[..., 0, 0]), dtype=dtype, device=dev), validate_args=False)
        mean_path = mean_path[:, 0]
        means_out, covs_out = means[..., 0], covs[..., 0, 0]
    else:
        means_out, covs_out = means, covs
    return FilterResult(MixtureDistribution(lw_t, comps), mean_path, means_out, covs_out, weights, log_ev)
