"""Missing coordinates of a vector target under Gaussian noise, marginalised exactly (Ghahramani & Jordan 1994).

A row of ``y`` (n, d) may hold NaN coordinates (missing at random).  Under an
expert ``y | x ~ N(mu(x), Sigma)``:

* the log-density of a row is that of its **observed** coordinates ``o``,
  ``N(y_o; mu_o, Sigma_oo)`` (0 for a row with every coordinate missing);
* the EM statistics use the complete-data statistics' conditional
  expectations at the current parameters: ``E[y_m | y_o] = mu_m + Sigma_mo
  Sigma_oo^{-1} (y_o - mu_o)`` and ``E[y y^T | y_o] = E[y] E[y]^T + C`` with
  the conditional covariance ``C_mm = Sigma_mm - Sigma_mo Sigma_oo^{-1}
  Sigma_om`` (zero in the observed rows and columns).  The least-squares
  M-step on these statistics is then one EM step of the missing-data problem:
  it never lowers the observed (weighted) log-likelihood.

Rows are grouped by missingness pattern, so each pattern costs one Cholesky
factorisation per expert.  Where there are many patterns (more than
:data:`MAX_GROUPS`: a long y with scattered holes), each row is handled in
one batch instead: its covariance with the missing rows and columns replaced
by the identity's has the Cholesky factor, determinant and solves of
``Sigma_oo`` (``n K d^3 / 3`` flops, no Python loop).  NaN never enters any
arithmetic (observed coordinates are gathered, or missing ones replaced,
before anything is computed), so values and gradients are finite.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._linalg import chunk_rows, weighted_grams
from ..stats import SuffStats

__all__ = ["Pattern", "expected_stats", "has_missing", "iterate_em", "marginal_log_prob", "missing_patterns"]

_LOG_2PI = math.log(2 * math.pi)

#: Most missingness patterns handled group by group; beyond, rows are handled in one batch.
MAX_GROUPS = 64


def has_missing(y: torch.Tensor) -> bool:
    """Whether a floating ``y`` holds any NaN.

    Examples
    --------
    >>> has_missing(torch.tensor([[1.0, float("nan")]])), has_missing(torch.ones(2, 2))
    (True, False)
    """
    return bool(y.is_floating_point() and torch.isnan(y).any())


class Pattern(NamedTuple):
    """One missingness pattern: the rows that share it and their observed and missing columns."""

    rows: torch.Tensor  #: (r,) long, the rows with this pattern
    observed: torch.Tensor  #: (q,) long, the observed columns
    missing: torch.Tensor  #: (d - q,) long, the missing columns


def missing_patterns(y: torch.Tensor) -> tuple[list[Pattern], torch.Tensor]:
    """Group the rows of ``y`` by their pattern of NaN coordinates.

    Returns
    -------
    patterns : list of Pattern
        One per distinct pattern; their rows, concatenated, are ``order``.
    order : Tensor (n,) long
        The rows sorted by pattern (stable).

    Shapes
    ------
    y (n, d).

    Examples
    --------
    >>> nan = float("nan")
    >>> pats, order = missing_patterns(torch.tensor([[1.0, nan], [1.0, 2.0], [3.0, nan]]))
    >>> [(p.rows.tolist(), p.observed.tolist(), p.missing.tolist()) for p in pats]
    [([0, 2], [0], [1]), ([1], [0, 1], [])]
    """
    observed = ~torch.isnan(y)
    uniq, inv = torch.unique(observed, dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)
    counts = torch.bincount(inv, minlength=uniq.shape[0]).tolist()
    cols = torch.arange(y.shape[1], device=y.device)
    pats = [
        Pattern(rows, cols[u], cols[~u])
        for rows, u in zip(torch.split(order, counts), uniq)
    ]
    return pats, order


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _per_pattern(pats: list[Pattern], y: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor, moments: bool):
    """For each pattern of ``pats`` (:func:`missing_patterns`): log-densities of the observed coordinates and, with ``moments``, the conditional moments.

    Yields ``(pattern, logp (r, K), mean (r, K, d) or None, cond_cov (K, d - q, d - q) or None)``;
    ``mean`` is E[y | y_o] (observed coordinates as they are, missing ones their conditional means).
    """
    k, d = loc.shape[1], loc.shape[2]
    lt = scale_tril.expand(k, d, d)
    cov = lt @ lt.transpose(-1, -2)
    for pat in pats:
        rows, o, m = pat
        r, q = rows.numel(), o.numel()
        mu = loc[rows]  # (r, K, d)
        if q == 0:  # nothing observed: the row says nothing about this expert
            yield pat, mu.new_zeros(r, k), (mu if moments else None), (cov if moments else None)
            continue
        chol = lt if q == d else torch.linalg.cholesky(cov[:, o][:, :, o])  # (K, q, q)
        resid = y[rows][:, o][:, None, :] - mu[:, :, o]  # (r, K, q): only observed coordinates, no NaN
        z = torch.linalg.solve_triangular(chol, resid.permute(1, 2, 0), upper=False)  # (K, q, r)
        maha = (z * z).sum(1).T  # (r, K)
        logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        logp = -0.5 * maha - logdet - 0.5 * q * _LOG_2PI
        if not moments:
            yield pat, logp, None, None
            continue
        mean = mu.clone()
        mean[:, :, o] = y[rows][:, o][:, None, :].expand(r, k, q)
        cond = None
        if q < d:
            w = torch.linalg.solve_triangular(chol, cov[:, o][:, :, m], upper=False)  # (K, q, d - q): C^-1 S_om
            mean[:, :, m] = mu[:, :, m] + (w.transpose(-1, -2) @ z).permute(2, 0, 1)  # mu_m + S_mo S_oo^-1 r
            cond = cov[:, m][:, :, m] - w.transpose(-1, -2) @ w  # S_mm - S_mo S_oo^-1 S_om
        yield pat, logp, mean, cond


def _per_row(y: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor, w: torch.Tensor | None):
    """Every row at once: log-densities (n, K) and, given weights ``w`` (n, K), E[y | y_o] (n, K, d) and
    ``sum_i w_ik C_ik`` (K, d, d), the weighted conditional covariances.

    Row i's covariance with the missing rows and columns replaced by the identity's, ``M_i``, is
    block-diagonal (``Sigma_oo`` and I) after a permutation: its Cholesky factor, log-determinant
    and solves are those of ``Sigma_oo``, and ``M_i^{-1} r`` vanishes at the missing coordinates.
    """
    n, k, d = loc.shape
    lt = scale_tril.expand(k, d, d)
    cov = lt @ lt.transpose(-1, -2)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    logps, means = [], []
    extra = None if w is None else cov.new_zeros(k, d, d)
    step = chunk_rows(k * d * d)
    for i in range(0, n, step):
        yc, mu = y[i : i + step], loc[i : i + step]
        obs = ~torch.isnan(yc)  # (r, d)
        both = (obs[:, :, None] & obs[:, None, :])[:, None]  # (r, 1, d, d)
        chol = torch.linalg.cholesky(torch.where(both, cov, eye))  # (r, K, d, d)
        resid = torch.where(obs[:, None, :], torch.where(obs, yc, 0.0)[:, None, :] - mu, 0.0)  # (r, K, d), no NaN
        z = torch.linalg.solve_triangular(chol, resid[..., None], upper=False)[..., 0]
        logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # the identity's diagonal adds log 1 = 0
        logps.append(-0.5 * (z * z).sum(-1) - logdet - 0.5 * _LOG_2PI * obs.sum(1, keepdim=True).to(cov.dtype))
        if w is None:
            continue
        u = torch.cholesky_solve(resid[..., None], chol)[..., 0]  # M^-1 r: Sigma_oo^-1 r_o, 0 where missing
        means.append(torch.where(obs[:, None, :], yc[:, None, :], mu + (cov @ u[..., None])[..., 0]))
        so = cov * obs[:, None, None, :]  # (r, K, d, d): the columns Sigma_{., o}
        cond = cov - so @ torch.cholesky_solve(so.transpose(-1, -2), chol)  # Sigma - Sigma_.o Sigma_oo^-1 Sigma_o.
        mis = (~obs).to(cov.dtype)
        cond = cond * (mis[:, :, None] * mis[:, None, :])[:, None]  # only the missing block
        extra += torch.einsum("rk,rkij->kij", w[i : i + step], cond)
    return torch.cat(logps), (torch.cat(means) if w is not None else None), extra


def marginal_log_prob(y: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """Log-density of the observed coordinates of each row under each expert's Gaussian.

    Parameters
    ----------
    y : Tensor (n, d)
        Targets; NaN marks a missing coordinate.
    loc : Tensor (n, K, d)
        Each expert's mean for each row.
    scale_tril : Tensor (K, d, d) or (1, d, d)
        Lower Cholesky factors of the noise covariances (diagonal for diagonal
        and spherical noise; one shared factor for tied noise).

    Returns
    -------
    Tensor (n, K)
        ``log N(y_o; mu_o, Sigma_oo)``; 0 for a row with every coordinate missing.

    Shapes
    ------
    y (n, d); loc (n, K, d); scale_tril (K, d, d) -> (n, K).

    Examples
    --------
    >>> y = torch.tensor([[0.0, float("nan")]], dtype=torch.float64)
    >>> lp = marginal_log_prob(y, torch.zeros(1, 1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None])
    >>> round(float(lp), 6) == round(-0.5 * math.log(2 * math.pi), 6)
    True
    """
    pats, order = missing_patterns(y)
    if len(pats) > MAX_GROUPS:
        return _per_row(y, loc, scale_tril, None)[0]
    parts = [logp for _, logp, _, _ in _per_pattern(pats, y, loc, scale_tril, moments=False)]
    return torch.cat(parts)[_inverse(order)]


def expected_stats(
    xd: torch.Tensor, y: torch.Tensor, w: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor
) -> SuffStats:
    """The linear-Gaussian expert's statistics with missing coordinates replaced by their conditional moments.

    ``xwy = sum_i w_ik x_i E[y_i]^T`` and ``ywy = sum_i w_ik (E[y_i] E[y_i]^T +
    C_ik)`` at the current parameters (``loc``, ``scale_tril``); ``sw`` and
    ``xwx`` do not involve y.  The expert's least-squares M-step on them is
    one EM step of the missing-data problem (Ghahramani & Jordan 1994).

    Parameters
    ----------
    xd : Tensor (n, p)
        Inputs with their intercept column.
    y : Tensor (n, d)
        Targets with NaN where missing.
    w : Tensor (n, K)
        Weights.
    loc, scale_tril
        As for :func:`marginal_log_prob`.

    Returns
    -------
    SuffStats
        ``sw`` (K,), ``xwx`` (K, p, p), ``xwy`` (K, p, d), ``ywy`` (K, d, d).

    Shapes
    ------
    xd (n, p); y (n, d); w (n, K); loc (n, K, d); scale_tril (K, d, d).

    Examples
    --------
    >>> y = torch.tensor([[1.0, float("nan")]], dtype=torch.float64)
    >>> xd, w = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    >>> s = expected_stats(xd, y, w, torch.zeros(1, 1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None])
    >>> s["xwy"][0].tolist(), s["ywy"][0].tolist()  # E[y_2] = 0, E[y_2^2] = 1
    ([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    n, p = xd.shape
    k, d = loc.shape[1], loc.shape[2]
    pats, order = missing_patterns(y)
    if len(pats) > MAX_GROUPS:
        _, ey, extra = _per_row(y, loc, scale_tril, w)
    else:
        means, extra = [], xd.new_zeros(k, d, d)
        for pat, _, mean, cond in _per_pattern(pats, y, loc, scale_tril, moments=True):
            means.append(mean)
            if cond is not None:
                m = pat.missing
                sw = w[pat.rows].sum(0)  # (K,)
                extra[:, m[:, None], m[None, :]] += sw[:, None, None] * cond
        ey = torch.cat(means)[_inverse(order)]  # (n, K, d)
    wy = w[:, :, None] * ey  # (n, K, d)
    return SuffStats(
        sw=w.sum(0),
        xwx=weighted_grams(xd, w),
        xwy=(xd.T @ wy.reshape(n, k * d)).reshape(p, k, d).permute(1, 0, 2),
        ywy=torch.einsum("nki,nkj->kij", wy, ey) + extra,
    )


@torch.no_grad()
def iterate_em(expert, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *,
               max_iter: int = 1000, tol: float = 1e-13) -> int:
    """Maximise an expert's weighted observed log-likelihood by EM steps ``m_step(suff_stats(...))``.

    With missing coordinates one M-step on the expected statistics is one EM
    step of the missing-data problem (it never lowers the objective); this
    repeats it until the weighted log-likelihood ``sum(weight * log_prob)``
    improves by at most ``tol * (1 + |objective|)``.

    Parameters
    ----------
    expert : LinearGaussianExpert
    x, y, weight
        As for ``expert.fit_weighted``.
    max_iter : int
        Most EM steps.
    tol : float
        Relative improvement below which it stops.

    Returns
    -------
    int
        EM steps taken.

    Shapes
    ------
    x (n, d_x); y (n, d_y) with NaN; weight (n,) or (n, K).
    """
    def objective() -> float:
        lp = expert.log_prob(x, y)
        wt = torch.ones_like(lp) if weight is None else weight.to(lp.dtype).reshape(lp.shape)
        return float((wt * lp).sum())

    f_old = objective()
    for it in range(1, max_iter + 1):
        expert.m_step(expert.suff_stats(x, y, weight))
        f = objective()
        if f - f_old <= tol * (1.0 + abs(f)):
            return it
        f_old = f
    return max_iter
