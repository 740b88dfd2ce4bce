"""Initial partitions of the rows among K experts (k-means++ or random): the responsibilities EM starts from."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.cluster import KMeans

__all__ = ["DistinctRows", "distinct_rows", "initial_responsibilities"]


def initial_responsibilities(
    x: torch.Tensor,
    y: torch.Tensor,
    n_experts: int,
    init="kmeans",
    random_state: int | None = None,
    sample_weight: torch.Tensor | None = None,
    rows: DistinctRows | None = None,
) -> torch.Tensor:
    """Hard (one-hot) initial responsibilities, shape (n, K).

    Parameters
    ----------
    x : Tensor (n, d_x)
    y : Tensor (n,) or (n, d_y); integer labels are one-hot encoded.
    n_experts : int
    init : {"kmeans", "random"} or array-like (n, K)
        ``"kmeans"``: k-means (k-means++ seeding) on the standardised joint
        ``[x, y]``, the usual start for mixtures of regressions.
        ``"random"``: every row to a uniformly random expert.
        An array: responsibilities given by the user (rows are normalised).
    random_state : int, optional
    sample_weight : Tensor (n,), optional
        Passed to k-means.
    rows : DistinctRows, optional
        ``distinct_rows(x, y, sample_weight)`` when the caller has it already
        (several starts on the same data).

    Shapes
    ------
    Returns (n, K), rows summing to one, in x's dtype.
    """
    n = x.shape[0]
    dtype, device = x.dtype, x.device
    if isinstance(init, str):
        if init not in ("random", "kmeans"):
            raise ValueError(f"init must be 'kmeans', 'random' or an (n, K) array, got {init!r}")
        z, uniq, inv, counts, pos, _ = distinct_rows(x, y, sample_weight) if rows is None else rows
        if len(uniq) < n_experts:
            raise ValueError(
                f"init={init!r} needs at least n_experts={n_experts} distinct rows of [X, y] with positive "
                f"weight, got {len(uniq)} (from {n} sample(s)); use fewer experts or more data"
            )
        if init == "random":
            rng = np.random.default_rng(random_state)
            labels_u = rng.integers(0, n_experts, size=len(uniq))
            labels = np.zeros(n, dtype=int)
        else:
            km = KMeans(n_clusters=n_experts, n_init=1, random_state=random_state).fit(uniq, sample_weight=counts)
            labels_u = km.labels_
            labels = km.predict(z)
        labels[pos] = labels_u[inv]
        r = np.zeros((n, n_experts))
        r[np.arange(n), labels] = 1.0
        return torch.as_tensor(r, dtype=dtype, device=device)
    r = torch.as_tensor(np.asarray(init, dtype=float), dtype=dtype, device=device)
    if r.shape != (n, n_experts):
        raise ValueError(f"init responsibilities must have shape ({n}, {n_experts}), got {tuple(r.shape)}")
    if not torch.isfinite(r).all() or (r < 0).any() or (r.sum(1) <= 0).any():
        raise ValueError("init responsibilities must be finite, non-negative, with a positive sum in every row")
    return r / r.sum(1, keepdim=True)


class DistinctRows(NamedTuple):
    """The distinct positive-weight rows of the standardised joint [x, y] (see :func:`distinct_rows`)."""

    z: np.ndarray  #: (n, d) every row, standardised
    uniq: np.ndarray  #: (m, d) the distinct rows of z[positive], sorted
    inverse: np.ndarray  #: (n_positive,) index in uniq of each positive-weight row
    counts: np.ndarray  #: (m,) summed weights of each distinct row
    positive: np.ndarray  #: (n,) bool mask of the positive-weight rows
    first: np.ndarray  #: (m,) index among the positive rows of each distinct row's first occurrence


def distinct_rows(x, y, sample_weight) -> DistinctRows:
    """Standardised joint rows [x, y] and their distinct values among positive-weight rows.

    Starts are drawn on the distinct rows (identical rows start in the same
    expert, their weights summed), so that integer weights and repeated rows
    give exactly the same start, and zero-weight rows change nothing.
    Integer labels y are one-hot encoded.  Missing (NaN) coordinates of y and
    absent (±inf) censoring limits take their column's weighted mean, for the
    start only.

    Shapes
    ------
    x (n, d_x); y (n,) or (n, d_y); sample_weight (n,) or None; see :class:`DistinctRows`.
    """
    xs = x.detach().cpu().numpy().astype(float)
    ys = y.detach().cpu().numpy()
    if not np.issubdtype(ys.dtype, np.floating):
        _, codes = np.unique(ys, return_inverse=True)
        ys = np.eye(int(codes.max()) + 1)[codes.reshape(-1)]
    if ys.ndim == 1:
        ys = ys[:, None]
    z = np.hstack([xs, ys.astype(float)])
    sw = np.ones(len(z)) if sample_weight is None else sample_weight.detach().cpu().numpy().astype(float)
    pos = sw > 0
    _impute_missing(z, sw, pos)
    mean = np.average(z[pos], axis=0, weights=sw[pos])
    sd = np.sqrt(np.average((z[pos] - mean) ** 2, axis=0, weights=sw[pos]))
    z = (z - mean) / np.where(sd > 0, sd, 1.0)
    uniq, first, inv = _unique_rows(z[pos])
    counts = np.bincount(inv, weights=sw[pos], minlength=len(uniq))
    return DistinctRows(z, uniq, inv, counts, pos, first)


def _unique_rows(z: np.ndarray):
    """``np.unique(z, axis=0, return_index=True, return_inverse=True)``: the sorted distinct rows, the index of
    each one's first occurrence and every row's index among them.

    Where the first column alone tells every row apart (continuous data: no ties), one stable sort of that
    column orders the rows lexicographically, as ``np.unique`` would, at a fraction of its cost (it sorts whole
    rows: 0.14 s at 1e5 rows of 11 columns, 2.4 s at 1e6); ties fall back to ``np.unique``.

    Shapes
    ------
    z (n, d) -> (m, d), (m,), (n,).
    """
    n = z.shape[0]
    if n > 1 and z.shape[1] > 0:
        order = np.argsort(z[:, 0], kind="stable")
        key = z[order, 0]
        if bool((key[1:] != key[:-1]).all()):
            inv = np.empty(n, dtype=np.intp)
            inv[order] = np.arange(n)
            return z[order], order, inv
    uniq, first, inv = np.unique(z, axis=0, return_index=True, return_inverse=True)
    return uniq, first, inv.reshape(-1)


def _impute_missing(z: np.ndarray, sw: np.ndarray, pos: np.ndarray) -> None:
    """Replace non-finite entries of ``z`` (in place) by their column's weighted mean over the positive-weight rows that have a finite one.

    NaN marks a missing target coordinate (or an interval-censored value),
    ±inf an absent censoring limit: neither may enter a start's arithmetic.

    Shapes
    ------
    z (n, d); sw (n,); pos (n,) bool.
    """
    nan = ~np.isfinite(z)
    if not nan.any():
        return
    for j in np.flatnonzero(nan.any(0)):
        seen = pos & ~nan[:, j]
        z[nan[:, j], j] = np.average(z[seen, j], weights=sw[seen]) if seen.any() else 0.0
