"""Experts that wrap a scikit-learn regressor: ``y | x ~ N(f(x), sigma^2)``.

Any regressor whose ``fit`` accepts ``sample_weight`` can be an expert: its
weighted refit is the M-step for the mean function, and the noise variance is
the weighted mean squared residual.  The expert mixes freely with the other
families in a list of experts (``MixtureOfExperts(gate, [SklearnExpert(...),
LinearGaussianExpert(1)])``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import has_fit_parameter
from torch.distributions import Normal

from .base import Expert

__all__ = ["SklearnExpert"]


def _to_numpy(t) -> np.ndarray:
    """A float64 numpy *copy* (the caller's data is never shared with the estimator)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.array(t, dtype=np.float64, copy=True)


class SklearnExpert(Expert):
    """A scikit-learn regressor as a Gaussian expert: ``y | x ~ N(f(x), sigma^2)``.

    The M-step refits a clone of ``estimator`` with ``sample_weight`` equal to
    the expert's weights (rows whose weight is at most ``min_weight`` are left
    out), then sets ``sigma^2`` to the weighted mean squared residual, floored
    at ``var_floor``.  The estimator passed in is never fitted itself; the
    fitted clone is ``estimator_``.

    Parameters
    ----------
    estimator : scikit-learn regressor
        Unfitted template.  Its ``fit`` must accept ``sample_weight`` (e.g.
        ``LinearRegression``, ``Ridge``, ``DecisionTreeRegressor``,
        ``RandomForestRegressor``, ``GradientBoostingRegressor``,
        ``HistGradientBoostingRegressor``, ``SVR``).  Weights are passed as
        they are (not normalised), so penalties such as Ridge's ``alpha`` act
        on the expert's weighted sum of squares.
    n_features : int
        Number of input columns d_x.
    var_floor : float
        Lower bound on the noise variance, in y's units squared.
    min_weight : float
        Rows with weight ``<= min_weight`` are not passed to ``fit``.
    monotone : bool
        If True (default), a refit is kept only when its weighted mean squared
        residual is no larger than that of the previous fit on the same
        weighted data; otherwise the previous function is kept and only the
        variance is re-estimated.  See Notes.
    n_params : int, optional
        Number of free parameters to report from :meth:`n_parameters` (for
        BIC/AIC).  By default it is counted for linear models (``coef_`` and
        ``intercept_``) and trees (number of leaves), plus one for the variance.
    dtype : torch.dtype
        Dtype of the returned distributions.

    Attributes
    ----------
    estimator_ : estimator or None
        The fitted clone (``None`` before the first fit).
    log_scale : Tensor (1,)
        Buffer, ``log sigma``; the leading axis of length 1 is the expert axis.

    Notes
    -----
    *Monotonicity.*  For a fixed variance, the weighted Gaussian
    log-likelihood of the mean function is maximised exactly when the fit
    minimises the weighted sum of squared residuals over the estimator's
    function class, and the variance update is then exact too.  That holds
    for (weighted) least squares, ``LinearRegression``, so EM is an exact EM.
    Greedy or randomised learners (trees, forests, boosting) only
    *approximately* minimise the weighted squared error, so a refit can be
    worse than the previous fit on the new weights.  With ``monotone=True``
    such a refit is rejected, which makes every M-step a generalised-EM step
    whose log-likelihood never decreases for any regressor; with
    ``monotone=False`` the refit is always kept and the EM log-likelihood
    may then fall from one iteration to the next (with trees and forests it
    does, by up to about 0.1 nat per sample in our tests).  The price of the
    guarantee: with randomised learners (forests without a fixed
    ``random_state``) rejected refits can make EM stop early at a lower
    likelihood; fix ``random_state`` or use ``monotone=False`` and more
    iterations if that happens.  The class
    attribute ``m_step_exact`` is True because the M-step is one call (no
    inner iterations), not a claim that every estimator maximises exactly.

    *Gradients.*  The mean is computed by ``estimator_.predict`` in numpy and
    turned into a constant tensor: nothing flows back into the estimator, and
    the expert has no trainable parameters (``log_scale`` is a buffer), so
    gradient-based training such as ``fit_gradient`` cannot train it; use
    :func:`~moekit.fit_em`.  Only a scalar y is supported.

    Shapes
    ------
    forward(x): x (n, d_x) -> Normal with batch shape (n,).
    log_prob(x, y): y (n,) or (n, 1) -> (n,).
    fit_weighted(x, y, weight): weight (n,).

    Examples
    --------
    >>> import torch
    >>> from sklearn.tree import DecisionTreeRegressor
    >>> x = torch.linspace(0, 1, 100, dtype=torch.float64)[:, None]
    >>> y = (x[:, 0] > 0.5).double()
    >>> e = SklearnExpert(DecisionTreeRegressor(max_depth=1), n_features=1)
    >>> _ = e.fit_weighted(x, y, torch.ones(100, dtype=torch.float64))
    >>> e(x[[0, -1]]).mean
    tensor([0., 1.], dtype=torch.float64)
    >>> round(e(x).stddev[0].item(), 9)  # a perfect fit: the floor sqrt(var_floor)
    0.001

    The estimator must accept ``sample_weight``:

    >>> from sklearn.neighbors import KNeighborsRegressor
    >>> SklearnExpert(KNeighborsRegressor(), 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: KNeighborsRegressor() does not accept sample_weight in fit(), ...
    """

    has_suff_stats = False
    m_step_exact = True

    def __init__(
        self,
        estimator,
        n_features: int,
        var_floor: float = 1e-6,
        min_weight: float = 1e-12,
        *,
        monotone: bool = True,
        n_params: int | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(None)
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise TypeError(
                f"estimator must be a scikit-learn regressor with fit() and predict(), got {estimator!r}"
            )
        if isinstance(estimator, type):
            raise TypeError(f"pass an estimator instance, e.g. {estimator.__name__}(), not the class")
        if is_classifier(estimator):
            raise TypeError(
                f"{estimator!r} is a classifier; SklearnExpert wraps regressors (Gaussian y). "
                "Use MLPExpert(head='categorical') for class labels"
            )
        if not has_fit_parameter(estimator, "sample_weight"):
            raise TypeError(
                f"{estimator!r} does not accept sample_weight in fit(), which the EM M-step needs. "
                "Use a regressor whose fit() takes sample_weight (e.g. LinearRegression, Ridge, "
                "DecisionTreeRegressor, RandomForestRegressor, HistGradientBoostingRegressor), "
                "or wrap it in a class whose fit(X, y, sample_weight=None) honours the weights"
            )
        if not (isinstance(n_features, int) and n_features >= 1):
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if not var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {var_floor!r}")
        if not min_weight >= 0:
            raise ValueError(f"min_weight must be >= 0, got {min_weight!r}")
        if n_params is not None and not (isinstance(n_params, int) and n_params >= 0):
            raise ValueError(f"n_params must be None or a non-negative int, got {n_params!r}")
        self.estimator = estimator
        self.estimator_ = None
        self.n_features = n_features
        self.var_floor = float(var_floor)
        self.min_weight = float(min_weight)
        self.monotone = bool(monotone)
        self.n_params = n_params
        self.register_buffer("log_scale", torch.full((1,), 0.5 * math.log(1.0), dtype=dtype))

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, n_features={self.n_features}, fitted={self.estimator_ is not None}"

    @classmethod
    def stack(cls, experts):
        raise TypeError(
            "SklearnExpert cannot be stacked (each expert holds its own fitted estimator); "
            "pass a list of experts to MixtureOfExperts instead"
        )

    # ----------------------------------------------------------- helpers
    def _x_numpy(self, x) -> np.ndarray:
        xs = _to_numpy(x)
        if xs.ndim != 2 or xs.shape[1] != self.n_features:
            raise ValueError(f"x must have shape (n, {self.n_features}) for this expert, got {xs.shape}")
        return xs

    @staticmethod
    def _y_numpy(y) -> np.ndarray:
        ys = _to_numpy(y)
        if ys.ndim == 2 and ys.shape[1] == 1:
            ys = ys[:, 0]
        if ys.ndim != 1:
            raise ValueError(
                f"SklearnExpert models a scalar y, got y of shape {ys.shape}; use one expert per output "
                "column, or MLPExpert / LinearGaussianExpert with n_outputs for a vector target"
            )
        return ys

    def _check_fitted(self) -> None:
        if self.estimator_ is None:
            raise NotFittedError(
                f"this SklearnExpert({self.estimator!r}) is not fitted yet; call "
                "fit_weighted(x, y, weight) or fit the mixture with moekit.fit_em first"
            )

    def _predict(self, xs: np.ndarray, estimator=None) -> np.ndarray:
        est = self.estimator_ if estimator is None else estimator
        return np.asarray(est.predict(xs), dtype=np.float64).reshape(xs.shape[0])

    @property
    def variance(self) -> torch.Tensor:
        """Noise variance sigma^2, shape (1,)."""
        return (2 * self.log_scale).exp()

    # -------------------------------------------------------- likelihood
    def forward(self, x: torch.Tensor) -> Normal:
        self._check_fitted()
        mean = self._predict(self._x_numpy(x))
        ref = self.log_scale
        loc = torch.as_tensor(mean, dtype=ref.dtype, device=ref.device)
        scale = ref.exp().clamp_min(math.sqrt(self.var_floor)).expand(loc.shape[0])
        return Normal(loc, scale, validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gaussian log-density of y: (n,).

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, 1) -> (n,).
        """
        dist = self(x)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            self._y_numpy(y)  # raises the scalar-y error
        return dist.log_prob(y.to(dtype=dist.loc.dtype, device=dist.loc.device))

    def n_parameters(self) -> int:
        """Free parameters: ``n_params`` if given, else counted for linear models and trees (+1 variance).

        Raises
        ------
        NotFittedError
            Before the first fit, when ``n_params`` was not given.
        NotImplementedError
            For other estimators when ``n_params`` was not given.
        """
        if self.n_params is not None:
            return self.n_params
        self._check_fitted()
        est = self.estimator_
        if hasattr(est, "coef_"):
            n = int(np.size(est.coef_))
            if getattr(est, "fit_intercept", True):
                n += int(np.size(getattr(est, "intercept_", 0.0)))
            return n + 1
        if hasattr(est, "get_n_leaves"):
            return int(est.get_n_leaves()) + 1
        raise NotImplementedError(
            f"cannot count the parameters of {self.estimator!r}; pass n_params=... to SklearnExpert "
            "(e.g. an effective number of degrees of freedom)"
        )

    # ------------------------------------------------------------ M-step
    @torch.no_grad()
    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Weighted refit of the regressor, then the noise variance.

        Fits ``clone(estimator)`` on the rows with weight > ``min_weight``
        (``sample_weight`` = those weights), then sets the variance to
        ``sum(w r^2) / sum(w)`` over all rows (floored).  Experts with no
        weight are left as they are.  The caller's arrays are not modified.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, 1); weight : (n,) or None (all ones).
        """
        xs = self._x_numpy(x)
        ys = self._y_numpy(y)
        n = xs.shape[0]
        if ys.shape[0] != n:
            raise ValueError(f"x has {n} rows but y has {ys.shape[0]}; they must have the same length")
        if weight is None:
            w = np.ones(n)
        else:
            w = _to_numpy(weight)
            if w.ndim == 2 and w.shape[1] == 1:
                w = w[:, 0]
            if w.shape != (n,):
                raise ValueError(f"weight must have shape ({n},) for a single expert, got {w.shape}")
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError("weight must be finite and non-negative")
        rows = w > self.min_weight
        if not rows.any():
            if self.estimator_ is None:
                raise ValueError(
                    f"no row has weight > min_weight={self.min_weight:g}; cannot make the first fit of "
                    f"SklearnExpert({self.estimator!r})"
                )
            return self
        est = clone(self.estimator)
        est.fit(xs[rows], ys[rows], sample_weight=w[rows])
        sw = w.sum()
        mse = float(np.sum(w * (ys - self._predict(xs, est)) ** 2) / sw)
        if self.monotone and self.estimator_ is not None:
            mse_old = float(np.sum(w * (ys - self._predict(xs)) ** 2) / sw)
            if not mse <= mse_old:  # the refit is worse on this weighted data: keep the old function
                est, mse = self.estimator_, mse_old
        self.estimator_ = est
        var = max(mse, self.var_floor)
        self.log_scale.fill_(0.5 * math.log(var))
        return self
