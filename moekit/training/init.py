"""Initial responsibilities for EM."""

from __future__ import annotations

import numpy as np
import torch


def initial_responsibilities(
    x: torch.Tensor,
    y: torch.Tensor,
    n_experts: int,
    init="kmeans",
    random_state: int | None = None,
    sample_weight: torch.Tensor | None = None,
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

    Shapes
    ------
    Returns (n, K), rows summing to one, in x's dtype.
    """
    n = x.shape[0]
    dtype, device = x.dtype, x.device
    if isinstance(init, str):
        if init == "random":
            rng = np.random.default_rng(random_state)
            labels = rng.integers(0, n_experts, size=n)
        elif init == "kmeans":
            labels = _kmeans_labels(x, y, n_experts, random_state, sample_weight)
        else:
            raise ValueError(f"init must be 'kmeans', 'random' or an (n, K) array, got {init!r}")
        r = np.zeros((n, n_experts))
        r[np.arange(n), labels] = 1.0
        return torch.as_tensor(r, dtype=dtype, device=device)
    r = torch.as_tensor(np.asarray(init, dtype=float), dtype=dtype, device=device)
    if r.shape != (n, n_experts):
        raise ValueError(f"init responsibilities must have shape ({n}, {n_experts}), got {tuple(r.shape)}")
    if not torch.isfinite(r).all() or (r < 0).any() or (r.sum(1) <= 0).any():
        raise ValueError("init responsibilities must be finite, non-negative, with a positive sum in every row")
    return r / r.sum(1, keepdim=True)


def _kmeans_labels(x, y, k, random_state, sample_weight):
    from sklearn.cluster import KMeans

    xs = x.detach().cpu().numpy()
    ys = y.detach().cpu().numpy()
    if not np.issubdtype(ys.dtype, np.floating):
        classes, inv = np.unique(ys, return_inverse=True)
        ys = np.eye(len(classes))[inv]
    if ys.ndim == 1:
        ys = ys[:, None]
    z = np.hstack([xs, ys]).astype(float)
    sd = z.std(0)
    z = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)
    sw = None if sample_weight is None else sample_weight.detach().cpu().numpy()
    n_distinct = len(np.unique(z, axis=0))
    if n_distinct < k:
        raise ValueError(
            f"k-means initialisation needs at least n_experts={k} distinct rows of [X, y], "
            f"got {n_distinct}; use fewer experts or init='random'"
        )
    km = KMeans(n_clusters=k, n_init=1, random_state=random_state)
    return km.fit_predict(z, sample_weight=sw)
