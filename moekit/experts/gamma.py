"""Gamma-regression experts for positive continuous targets (log link, shape estimated per expert)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._linalg import weighted_grams
from ..distributions import Gamma
from ..stats import SuffStats
from ._support import RestrictedSupport
from .newton import NewtonExpert

__all__ = ["GammaExpert", "SHAPE_BOUNDS", "eta_bounds", "log_ratio_max"]

#: Interval in which the shape nu = 1 / dispersion of every expert is kept (its log is the parameter).
SHAPE_BOUNDS = (1e-6, 1e10)


def eta_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Range of the linear predictor (log mean): float64 [-250, 250], float32 about [-35, 35].

    The mean, and the variance ``mu^2 / nu`` for any shape in ``SHAPE_BOUNDS``, stay finite.
    """
    b = min(250.0, 0.4 * math.log(torch.finfo(dtype).max))
    return -b, b


def log_ratio_max(dtype: torch.dtype) -> float:
    """Cap of ``log(y / mu)`` (float64 300, float32 about 40): ``nu y / mu`` never overflows however far mu is from y."""
    return min(300.0, 0.45 * math.log(torch.finfo(dtype).max))


#: From this shape on, ``nu log nu - nu - lgamma(nu)`` and ``log nu - digamma(nu)`` come from their series.
_SERIES_MIN = 100.0
_BISECTIONS = 80


def shape_normaliser(nu: torch.Tensor) -> torch.Tensor:
    """``nu log nu - nu - lgamma(nu)`` without cancellation at large nu (Stirling's series from nu = 100)."""
    big = nu >= _SERIES_MIN
    nb = torch.where(big, nu, torch.full_like(nu, _SERIES_MIN))
    series = 0.5 * torch.log(nb / (2 * math.pi)) - 1 / (12 * nb) + 1 / (360 * nb**3) - 1 / (1260 * nb**5) + 1 / (1680 * nb**7)
    ns = torch.where(big, torch.ones_like(nu), nu)
    direct = ns * torch.log(ns) - ns - torch.lgamma(ns)
    return torch.where(big, series, direct)


def _log_minus_digamma(nu: torch.Tensor) -> torch.Tensor:
    """``log nu - digamma(nu)`` (positive, decreasing), by its series from nu = 100."""
    big = nu >= _SERIES_MIN
    nb = torch.where(big, nu, torch.full_like(nu, _SERIES_MIN))
    series = 1 / (2 * nb) + 1 / (12 * nb**2) - 1 / (120 * nb**4) + 1 / (252 * nb**6)
    ns = torch.where(big, torch.ones_like(nu), nu)
    return torch.where(big, series, torch.log(ns) - torch.digamma(ns))


def solve_shape(c: torch.Tensor) -> torch.Tensor:
    """``log nu`` maximising ``nu log nu - lgamma(nu) - nu (1 + c)``: the root of ``log nu - digamma(nu) = c`` in ``SHAPE_BOUNDS``.

    The left side decreases from +inf to 0, so bisection on ``log nu`` finds
    the root (or the nearer bound: c <= 0, a perfect fit, gives the upper
    bound) to machine precision.

    Shapes
    ------
    c : (K,) -> (K,)
    """
    lo = torch.full_like(c, math.log(SHAPE_BOUNDS[0]))
    hi = torch.full_like(c, math.log(SHAPE_BOUNDS[1]))
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        right = _log_minus_digamma(mid.exp()) > c  # the root lies above mid
        lo = torch.where(right, mid, lo)
        hi = torch.where(right, hi, mid)
    return 0.5 * (lo + hi)


class GammaExpert(RestrictedSupport, NewtonExpert):
    """Gamma regression with log link: ``y | x ~ Gamma(shape nu, mean exp(beta^T [1, x]))``.

    The variance is ``mu^2 / nu``: the dispersion ``phi = 1 / nu`` (the
    squared coefficient of variation) is estimated per expert by maximum
    likelihood, on the log scale (the parameter ``log_shape``), kept in
    ``SHAPE_BOUNDS`` = [1e-6, 1e10].

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    max_m_steps : int
        ECM steps per EM M-step (default one); ``fit_weighted`` on its own
        (and the initial fit) takes up to ``max(max_m_steps, 10)``, stopping
        early once converged.
    l2 : float
        Ridge penalty ``0.5 * l2 * ||beta[1:]||^2`` (intercept not penalised)
        subtracted from each expert's weighted log-likelihood.
    dtype : torch.dtype
        Parameter dtype.
    offset : bool
        Whether x carries one more column, last, holding a known offset added
        to the linear predictor (coefficient fixed at one), e.g. the log of an
        exposure: ``E[y | x] = exposure * exp(beta^T [1, x])``.
    shared : sequence of int
        Feature indices whose coefficients are common to all experts of the
        stack (a joint Newton step).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per input column.
    log_shape : Parameter (K,)
        ``log nu`` per expert; ``shape`` is ``nu``, ``dispersion`` ``1 / nu``.

    Shapes
    ------
    x : (n, d_x) or (n, d_x + 1) with an offset; y : (n,) positive.  A row
    with y <= 0 has log-density ``-inf`` (another expert, e.g. a point mass
    at 0, may explain it: a hurdle model), gets no weight in the initial
    fit and must have zero weight in a weighted fit (else ``ValueError``);
    NaN or infinite y is a ``ValueError``.
    ``forward(x)``: a :class:`moekit.distributions.Gamma` (with a ``cdf``)
    with batch shape (n,) [single] or (n, K) [stacked]; ``log_prob(x, y)``:
    (n,) or (n, K).

    Notes
    -----
    With ``t = y / mu`` the log-density is
    ``nu log nu - lgamma(nu) + nu (log t - t) - log y``: for fixed nu it is
    concave in the linear predictor, and for fixed coefficients concave in
    nu.  The M-step is ECM from statistics computed in one pass at the
    current parameters: a Newton step on the coefficients (the exact
    Hessian ``nu t x x^T``, positive definite) and the exact maximiser of nu
    given the current coefficients, the root of
    ``log nu - digamma(nu) = -sum w (log t - t + 1) / sum w`` (bisection).
    Both moves are ascent directions, so their combination is one:
    :func:`~moekit._mstep.maximize` halves the joint step until the weighted
    log-likelihood does not decrease, so an M-step never lowers it.  The
    linear predictor is clamped to :func:`eta_bounds` (float64: [-250, 250]) and
    ``log(y / mu)`` to at most :func:`log_ratio_max` (float64: 300), so nothing overflows; the model,
    ``log_prob`` and the statistics use the same clamps.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> rng = np.random.default_rng(0)
    >>> x = torch.as_tensor(rng.random((4000, 1)))
    >>> mu = torch.exp(1.0 + 2.0 * x[:, 0])
    >>> y = torch.as_tensor(rng.gamma(4.0, mu.numpy() / 4.0))  # shape 4: dispersion 0.25
    >>> e = GammaExpert(n_features=1).fit_weighted(x, y)
    >>> [round(v, 1) for v in e.coef[0].tolist()], round(e.dispersion.item(), 2)
    ([1.0, 2.0], 0.25)
    >>> d = e(x[:3])
    >>> d.batch_shape, bool((d.cdf(torch.full((3,), 1e4)) > 0.99).all())
    (torch.Size([3]), True)
    >>> GammaExpert(1, n_experts=3).log_prob(x, y).shape
    torch.Size([4000, 3])
    """

    y_kind = "continuous"

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
        self.log_shape = nn.Parameter(torch.zeros(self._k, dtype=dtype))

    # ----------------------------------------------------------- parameters
    @property
    def shape(self) -> torch.Tensor:
        """The shape nu per expert: (K,)."""
        return self.log_shape.exp()

    @property
    def dispersion(self) -> torch.Tensor:
        """The dispersion ``1 / nu`` (squared coefficient of variation) per expert: (K,)."""
        return (-self.log_shape).exp()

    def n_parameters(self) -> int:
        return self.n_features + 2

    _support_text = "positive (> 0)"
    _support_fix = ("Remove or correct those rows, give them zero weight, or let another expert explain them "
                    "(e.g. a mixture with a PointMassExpert at 0 for zeros)")

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) of positive values for a GammaExpert, got {tuple(y.shape)}")
        y = y.to(dtype=self.coef.dtype, device=self.coef.device)
        bad = ~torch.isfinite(y)
        if n and bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"y must be finite and positive (> 0) for a GammaExpert; got {int(bad.sum())} non-finite value(s), "
                f"the first y[{i}] = {float(y[i])!r}. Remove those rows or fill in their values"
            )
        return y

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return y > 0

    # ----------------------------------------------------------- likelihood
    def _terms(self, eta_raw: torch.Tensor, y: torch.Tensor, log_shape: torch.Tensor):
        """Clamped ``log(y / mu)`` (n, K), the per-row log-densities (n, K) and the clamps' derivative (n, K)."""
        lo, hi = eta_bounds(eta_raw.dtype)
        cap = log_ratio_max(eta_raw.dtype)
        eta = eta_raw.clamp(lo, hi)
        lt_raw = torch.log(y)[:, None] - eta
        lt = lt_raw.clamp_max(cap)
        nu = log_shape.exp()
        lp = shape_normaliser(nu) + nu * (lt - torch.expm1(lt)) - torch.log(y)[:, None]
        moving = ((eta_raw > lo) & (eta_raw < hi) & (lt_raw < cap)).to(eta.dtype)
        return lt, lp, moving

    def log_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped linear predictor ``log E[y | x]``: (n,) single or (n, K) stacked."""
        return self._out(self._eta_x(x).clamp(*eta_bounds(self.coef.dtype)))

    def forward(self, x: torch.Tensor) -> Gamma:
        eta = self._eta_x(x).clamp(*eta_bounds(self.coef.dtype))  # (n, K)
        nu = self.shape.expand_as(eta)
        return Gamma(concentration=self._out(nu), rate=self._out(nu * torch.exp(-eta)), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``nu log nu - lgamma(nu) + nu (log t - t) - log y`` with ``t = y / mu``; ``-inf`` for y <= 0: (n,) or (n, K)."""
        eta = self._eta_x(x)
        yy, inside = self._y_and_support(y, eta.shape[0])
        lp = self._terms(eta, yy, self.log_shape)[1]
        return self._out(torch.where(inside[:, None], lp, torch.full_like(lp, -math.inf)))

    # --------------------------------------------------------------- M-step
    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        log_shape = self.log_shape.detach()
        lt, lp, moving = self._terms(self._eta(xd, coef, ex), y, log_shape)
        nu = log_shape.exp()
        t = lt.exp()
        return SuffStats(
            objective=(w * lp).sum(),
            grad=(w * moving * nu * torch.expm1(lt)).T @ xd,  # (K, p)
            info=weighted_grams(xd, w * moving * nu * t),
            sw=w.sum(0),
            dev=(w * (lt - torch.expm1(lt))).sum(0),  # (K,) <= 0: the shape's statistic
        )

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One ECM step: a Newton step on the coefficients, and nu's maximiser at the current coefficients.

        Experts with no weight keep their parameters.
        """
        super().m_step(stats)
        self._update_shape(stats["sw"], stats["dev"])

    def _update_shape(self, sw: torch.Tensor, dev: torch.Tensor) -> None:
        dt = self.log_shape.dtype
        sw, dev = sw.to(dt), dev.to(dt)
        keep = sw > 1e-12 * sw.sum().clamp_min(torch.finfo(dt).tiny)
        c = -dev / sw.clamp_min(torch.finfo(dt).tiny)
        new = solve_shape(torch.where(keep & torch.isfinite(c), c, torch.ones_like(c)))
        ok = keep & torch.isfinite(c) & torch.isfinite(new)
        self.log_shape.data.copy_(torch.where(ok, new, self.log_shape.data))

    def _set_intercept_only(self, y, w) -> None:
        ybar = self._weighted_mean_y(y, w)
        dt = self.coef.dtype
        self.coef.data[:, 0] = ybar.clamp_min(torch.finfo(ybar.dtype).tiny).log().clamp(*eta_bounds(dt))
        lt = (torch.log(y)[:, None] - self.coef.data[:, 0]).clamp_max(log_ratio_max(dt))
        self._update_shape(w.sum(0), (w * (lt - torch.expm1(lt))).sum(0))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", shape=estimated"
