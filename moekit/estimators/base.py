"""The estimator base shared by every conditional-mixture estimator (MoE, HME, MDN)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import is_classifier
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from ..inference import branches, central_interval, find_modes, hdr

__all__ = ["ConditionalMixtureMixin"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64, "float": torch.float32}


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype in (np.float64, np.float32):
        return torch.float64 if dtype is np.float64 else torch.float32
    raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")


def _check_device(device) -> None:
    """Raise a clear error for a device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available here; use device='cpu'")


class ConditionalMixtureMixin:
    """Prediction API shared by every conditional-mixture estimator (MoE, HME, MDN).

    A subclass provides ``model_`` (fitted, with ``forward(x)`` returning a
    :class:`~moekit.distributions.MixtureDistribution` and ``log_prob(x, y)``
    and ``n_parameters()``), ``dtype``, ``device``, ``_y_ndim`` (for regressors)
    and ``_y_tensor(y, n)``.
    """

    # ---------------------------------------------------------- prediction
    def _x(self, X) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return torch.as_tensor(np.array(X, dtype=np.float64), dtype=_torch_dtype(self.dtype), device=self.device)

    def predict_distribution(self, X):
        """The predictive mixture p(y | x) for every row.

        Returns
        -------
        MixtureDistribution
            Batch shape (n,); gives ``mean``, ``variance``/``covariance_matrix``,
            ``sample``, ``log_prob``, and for scalar y ``cdf`` and ``quantiles``.
        """
        x = self._x(X)
        with torch.no_grad():
            return self.model_(x)

    def _y_tensor(self, y, n: int) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def score_samples(self, X, y) -> np.ndarray:
        """Per-row log-density ``log p(y | x)``: (n,)."""
        x = self._x(X)
        yt = self._y_tensor(y, x.shape[0])
        with torch.no_grad():
            return self.model_.log_prob(x, yt).cpu().numpy()

    def _n_parameters(self) -> int:
        check_is_fitted(self, "model_")
        return self.model_.n_parameters()

    def bic(self, X, y) -> float:
        """Bayesian information criterion ``-2 log L + p log n`` (lower is better)."""
        ll = self.score_samples(X, y)
        return float(-2 * ll.sum() + self._n_parameters() * math.log(len(ll)))

    def aic(self, X, y) -> float:
        """Akaike information criterion ``-2 log L + 2 p`` (lower is better)."""
        ll = self.score_samples(X, y)
        return float(-2 * ll.sum() + 2 * self._n_parameters())

    def sample_y(self, X, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Draw y ~ p(y | x) for every row.

        Returns
        -------
        ndarray
            (n, n_samples) for scalar y, (n, d_y, n_samples) for vector y
            (the layout of scikit-learn's ``GaussianProcessRegressor.sample_y``).
            Global random state is left untouched.
        """
        if not (isinstance(n_samples, numbers.Integral) and n_samples >= 1):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        dist = self.predict_distribution(X)
        seed = int(np.random.default_rng(random_state).integers(0, 2**31 - 1))
        devices = [] if str(self.device) == "cpu" else [torch.device(self.device)]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            s = dist.sample((int(n_samples),))  # (S, n, *event)
        s = s.cpu().numpy()
        return np.moveaxis(s, 0, -1)

    def save(self, path) -> None:
        """Save the fitted estimator to ``path`` without pickle (safetensors + JSON).

        Load it back with :func:`moekit.load`; see :mod:`moekit.io`.
        """
        from ..io import save

        save(self, path)

    @available_if(lambda self: not is_classifier(self))
    def predict_quantiles(self, X, q) -> np.ndarray:
        """Quantiles of p(y | x) for scalar y: (n, len(q)).

        ``q``: a level or a sequence of levels strictly between 0 and 1.
        """
        if self._y_ndim != 1:
            raise ValueError("predict_quantiles needs a scalar (1-D) y; this model was fitted on a 2-D y")
        qs = np.atleast_1d(np.asarray(q, dtype=float))
        if qs.ndim != 1 or np.any((qs <= 0) | (qs >= 1)) or not np.all(np.isfinite(qs)):
            raise ValueError(f"q must hold levels strictly between 0 and 1, got {q!r}")
        return self.predict_distribution(X).quantiles(qs).cpu().numpy()

    # ------------------------------------------ branches of inverse problems
    @available_if(lambda self: not is_classifier(self))
    def predict_modes(self, X, max_modes=None, min_weight=0.01, **kwargs):
        """Modes of p(y | x) for every row: every branch of a multi-valued answer.

        Found by a hill-climb of the predictive density from every component
        mean (mean-shift metric, Newton steps near the top), merged where they
        coincide, sorted by probability mass; see
        :func:`moekit.inference.find_modes` for the options ``tol``,
        ``max_iter``, ``merge_tol`` and ``method``.

        Parameters
        ----------
        X : array-like (n, d_x)
        max_modes : int, optional
            At most this many modes per row (exactly this many columns).
        min_weight : float, default=0.01
            Modes with less probability mass are dropped (the heaviest stays).

        Returns
        -------
        Modes
            Unpacks as ``(modes, weights)`` of NumPy arrays; also
            ``covariances``, ``log_density`` and ``n_modes``.

        Shapes
        ------
        modes (n, M) for scalar y, (n, M, d_y) for vector y; weights (n, M);
        NaN where a row has fewer than M modes.  ``modes[:, 0]`` is the top mode.

        Examples
        --------
        >>> import numpy as np
        >>> from moekit import MoERegressor
        >>> rng = np.random.default_rng(0)
        >>> x = rng.uniform(-1, 1, 400)
        >>> y = np.where(rng.random(400) < 0.6, 2 + x, -2 - x) + 0.05 * rng.normal(size=400)
        >>> est = MoERegressor(n_experts=2, gate="constant", n_init=3, random_state=0).fit(x[:, None], y)
        >>> modes, weights = est.predict_modes([[0.0]])
        >>> modes.round(1), weights.round(1)  # both branches; the mean (0.4) is neither
        (array([[ 2., -2.]]), array([[0.6, 0.4]]))
        """
        dist = self.predict_distribution(X)
        return find_modes(dist, max_modes=max_modes, min_weight=min_weight, **kwargs).numpy()

    @available_if(lambda self: not is_classifier(self))
    def predict_branches(self, X):
        """Component means with their mixing weights, heaviest first (the cheap view of the branches).

        Returns
        -------
        means : ndarray (n, K) for scalar y, (n, K, d_y) for vector y
        weights : ndarray (n, K)
        """
        means, w = branches(self.predict_distribution(X))
        return means.cpu().numpy(), w.cpu().numpy()

    @available_if(lambda self: not is_classifier(self))
    def predict_interval(self, X, level=0.9, kind="hdr"):
        """Prediction intervals of scalar y with probability ``level``.

        Parameters
        ----------
        X : array-like (n, d_x)
        level : float, default=0.9
        kind : {"hdr", "central"}, default="hdr"
            "hdr": the highest-density region, a union of intervals where
            p(y | x) is multimodal (the shortest set with that probability);
            "central": the equal-tailed interval between the ``(1 - level)/2``
            and ``(1 + level)/2`` quantiles.

        Returns
        -------
        ndarray (n, J, 2)
            ``[lower, upper]`` of each interval, sorted, NaN padding (J = 1 for
            "central"); use :func:`moekit.inference.in_intervals` and
            :func:`moekit.inference.interval_coverage` with it.
        """
        if self._y_ndim != 1:
            raise ValueError("predict_interval needs a scalar (1-D) y; this model was fitted on a 2-D y")
        if kind not in ("hdr", "central"):
            raise ValueError(f"kind must be 'hdr' or 'central', got {kind!r}")
        dist = self.predict_distribution(X)
        iv = hdr(dist, level)[0] if kind == "hdr" else central_interval(dist, level)
        return iv.cpu().numpy()


