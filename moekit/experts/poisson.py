"""Poisson-regression experts for count targets (log link)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._linalg import weighted_grams
from ..distributions import Poisson
from ..stats import SuffStats
from .newton import NewtonExpert

__all__ = ["PoissonExpert", "eta_bounds"]


def eta_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Range of a log link's linear predictor (Poisson, negative binomial): exp(eta) neither overflows nor
    underflows to zero."""
    fi = torch.finfo(dtype)
    return 0.9 * math.log(fi.tiny), min(30.0, 0.5 * math.log(fi.max))


class PoissonExpert(NewtonExpert):
    """Poisson regression with log link: ``y | x ~ Poisson(exp(beta^T [1, x]))``.

    The weighted M-step is Newton-Raphson (IRLS) with the exact Hessian, from
    additive statistics, with step-halving by :func:`~moekit._mstep.maximize`,
    so it never lowers the weighted log-likelihood.  The linear predictor is
    clamped to ``[0.9 log(tiny), 30]`` (float64: about [-670, 30], rates up
    to ``exp(30) ~ 1e13``) so that ``exp`` never overflows; the model,
    ``log_prob`` and the M-step's objective all use the clamped predictor, so
    they stay consistent, and no input produces NaN.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    max_m_steps : int
        Newton steps per EM M-step (default one: an ECM step, the fastest way
        to EM's optimum); ``fit_weighted`` on its own (and the initial fit)
        takes up to ``max(max_m_steps, 10)``, stopping early once converged.
    l2 : float
        Ridge penalty ``0.5 * l2 * ||beta[1:]||^2`` (intercept not penalised)
        subtracted from each expert's weighted log-likelihood.  With unit
        weights, ``l2 = n * alpha`` matches scikit-learn's
        ``PoissonRegressor(alpha=alpha)``.
    dtype : torch.dtype
        Parameter dtype.
    offset : bool
        Whether x carries one more column, last, holding a known offset
        added to the linear predictor (coefficient fixed at one), such as
        the log of an exposure: ``E[y | x] = exposure * exp(beta^T [1, x])``.
    shared : sequence of int
        Feature indices whose coefficients are common to all experts of the
        stack (a joint Newton step).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per input column.

    Shapes
    ------
    x : (n, d_x); y : (n,) non-negative counts (integer or float).
    ``forward(x)``: a :class:`moekit.distributions.Poisson` (with a ``cdf``)
    with batch shape (n,) [single] or (n, K) [stacked]; ``log_prob(x, y)``:
    (n,) or (n, K), the exact log pmf including ``-lgamma(y + 1)``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(2000, 1, generator=g, dtype=torch.float64)
    >>> y = torch.poisson(torch.exp(1.0 + 2.0 * x[:, 0]), generator=g)
    >>> e = PoissonExpert(n_features=1).fit_weighted(x, y)
    >>> truth = torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> bool((e.coef[0] - truth).abs().max() < 0.2)
    True
    >>> d = e(x[:3])
    >>> d.batch_shape, bool((d.cdf(torch.full((3,), 100.0)) > 0.99).all())
    (torch.Size([3]), True)
    >>> PoissonExpert(1, n_experts=4).log_prob(x, y).shape
    torch.Size([2000, 4])
    """

    y_kind = "count"

    def __init__(
        self,
        n_features: int,
        n_experts: int | None = None,
        max_m_steps: int = 1,
        l2: float = 0.0,
        dtype: torch.dtype = torch.float64,
        offset: bool = False,
        shared=(),
    ):
        super().__init__(n_features, n_experts, l2, max_m_steps, extras=("offset",) if offset else (), shared=shared)
        self.coef = nn.Parameter(torch.zeros(self._k, n_features + 1, dtype=dtype))

    def n_parameters(self) -> int:
        return self.n_features + 1

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) of counts, got {tuple(y.shape)}")
        y = y.to(dtype=self.coef.dtype, device=self.coef.device)
        if n and not bool((y >= 0).all()):
            raise ValueError("y must hold non-negative counts for a PoissonExpert; got negative values")
        return y

    def log_rate(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped linear predictor ``log E[y | x]``: (n,) single or (n, K) stacked."""
        lo, hi = eta_bounds(self.coef.dtype)
        return self._out(self._eta_x(x).clamp(lo, hi))

    def forward(self, x: torch.Tensor) -> Poisson:
        return Poisson(rate=self.log_rate(x).exp(), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y * eta - exp(eta) - lgamma(y + 1)``: (n,) single or (n, K) stacked."""
        lo, hi = eta_bounds(self.coef.dtype)
        eta = self._eta_x(x).clamp(lo, hi)  # (n, K)
        yy = self._prepare_y(y, eta.shape[0])[:, None]
        return self._out(yy * eta - eta.exp() - torch.lgamma(yy + 1))

    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        lo, hi = eta_bounds(coef.dtype)
        raw = self._eta(xd, coef, ex)  # (n, K)
        eta = raw.clamp(lo, hi)
        inside = ((raw > lo) & (raw < hi)).to(raw.dtype)  # the clamp's derivative
        mu = eta.exp()
        yy = y[:, None]
        objective = (w * (yy * eta - mu - torch.lgamma(yy + 1))).sum()
        grad = (w * inside * (yy - mu)).T @ xd  # (K, p)
        info = weighted_grams(xd, w * inside * mu)
        return SuffStats(objective=objective, grad=grad, info=info, sw=w.sum(0))

    def _set_intercept_only(self, y, w) -> None:
        lo, hi = eta_bounds(self.coef.dtype)
        ybar = self._weighted_mean_y(y, w)
        self.coef.data[:, 0] = ybar.clamp_min(1e-6).log().clamp(lo, hi)
