"""Negative-binomial (NB2) regression experts for over-dispersed counts (log link, dispersion estimated per expert)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._linalg import weighted_grams
from ..distributions import SERIES_MIN, NegativeBinomial, inv_pow_diffs, nb2_log_prob
from ..stats import SuffStats
from ._support import RestrictedSupport
from .newton import NewtonExpert
from .poisson import eta_bounds

__all__ = ["ALPHA_BOUNDS", "NegativeBinomialExpert"]

#: Interval in which the dispersion alpha of every expert is kept (its log is the parameter); at the lower
#: end the distribution is, numerically, Poisson.
ALPHA_BOUNDS = (1e-8, 1e6)
#: Largest change of ``log alpha`` in one step.
MAX_LOG_ALPHA_STEP = 2.0
#: Bounds of the starting alpha (method of moments).
_ALPHA_START = (1e-2, 1e2)


def digamma_diffs(y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``digamma(r + y) - digamma(r)`` and ``trigamma(r + y) - trigamma(r)``, accurate for large r too.

    From ``r = 1000`` on, the differences of the asymptotic series are taken
    term by term (nothing cancels); below, the functions directly.

    Shapes
    ------
    y, r : broadcastable, y >= 0, r > 0; returns two tensors of their broadcast shape.
    """
    big = r >= SERIES_MIN  # functions of r alone are evaluated on r's own shape (one value per expert)
    if not bool(big.any()):
        return torch.digamma(r + y) - torch.digamma(r), torch.polygamma(1, r + y) - torch.polygamma(1, r)
    rb = torch.where(big, r, torch.full_like(r, SERIES_MIN))
    d = inv_pow_diffs(rb, y, 9)  # d[m - 1] = (r + y)^-m - r^-m
    d1 = torch.log1p(y / rb) - d[0] / 2 - d[1] / 12 + d[3] / 120 - d[5] / 252 + d[7] / 240
    d2 = d[0] + d[1] / 2 + d[2] / 6 - d[4] / 30 + d[6] / 42 - d[8] / 30
    if bool(big.all()):
        return d1, d2
    rs = torch.where(big, torch.ones_like(r), r)
    direct1 = torch.digamma(rs + y) - torch.digamma(rs)
    direct2 = torch.polygamma(1, rs + y) - torch.polygamma(1, rs)
    return torch.where(big, d1, direct1), torch.where(big, d2, direct2)


class NegativeBinomialExpert(RestrictedSupport, NewtonExpert):
    """NB2 regression with log link: ``E[y | x] = mu = exp(beta^T [1, x])``, ``Var[y | x] = mu + alpha mu^2``.

    The dispersion ``alpha`` is estimated per expert by maximum likelihood,
    on the log scale (the parameter ``log_alpha``), kept in
    ``ALPHA_BOUNDS`` = [1e-8, 1e6]; as alpha tends to 0 the model tends to
    Poisson regression.

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
        to the linear predictor (coefficient fixed at one), such as the log of
        an exposure: ``E[y | x] = exposure * exp(beta^T [1, x])``.
    shared : sequence of int
        Feature indices whose coefficients are common to all experts of the
        stack (a joint Newton step).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per input column.
    log_alpha : Parameter (K,)
        ``log alpha`` per expert; ``alpha`` is the dispersion.

    Shapes
    ------
    x : (n, d_x) or (n, d_x + 1) with an offset; y : (n,) non-negative
    integer counts (integer or float dtype); a row with a negative or
    fractional y has log-probability ``-inf`` (another expert may explain
    it), gets no weight in the initial fit and must have zero weight in a
    weighted fit (else ``ValueError``); NaN or infinite y is a
    ``ValueError``.  ``forward(x)``: a
    :class:`moekit.distributions.NegativeBinomial` (with a ``cdf``) with
    batch shape (n,) [single] or (n, K) [stacked], ``total_count = 1 /
    alpha`` and ``logits = log(alpha mu)``; ``log_prob(x, y)``: (n,) or
    (n, K), the exact log pmf.

    Notes
    -----
    With ``r = 1 / alpha`` the log pmf is
    ``lgamma(y + r) - lgamma(r) - lgamma(y + 1) + r log(r / (r + mu)) + y log(mu / (r + mu))``;
    for fixed alpha it is concave in the linear predictor (second
    derivative ``-(1 + alpha y) mu / (1 + alpha mu)^2``).  The M-step is
    ECM from statistics computed in one pass at the current parameters: a
    Newton step on the coefficients (that exact Hessian) and a safeguarded
    Newton step on ``log alpha`` (its gradient and curvature summed over
    rows; where the curvature is not negative, a step of the gradient's sign;
    at most 2 in ``log alpha``, then kept in ``ALPHA_BOUNDS``).  Each move
    is an ascent direction, so their combination is one, and
    :func:`~moekit._mstep.maximize` halves the joint step until the weighted
    log-likelihood does not decrease: an M-step never lowers it.  The linear
    predictor is clamped as :class:`~moekit.experts.poisson.PoissonExpert`
    clamps it (float64: about [-670, 30]).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> rng = np.random.default_rng(0)
    >>> x = torch.as_tensor(rng.random((5000, 1)))
    >>> mu = np.exp(1.0 + 1.0 * x[:, 0].numpy())
    >>> alpha = 0.5
    >>> y = torch.as_tensor(rng.negative_binomial(1 / alpha, 1 / (1 + alpha * mu)).astype(float))
    >>> e = NegativeBinomialExpert(n_features=1).fit_weighted(x, y)
    >>> [round(v, 1) for v in e.coef[0].tolist()], round(e.alpha.item(), 1)
    ([1.0, 1.0], 0.5)
    >>> d = e(x[:3])
    >>> d.batch_shape, bool((d.cdf(torch.full((3,), 200.0)) > 0.99).all())
    (torch.Size([3]), True)
    >>> NegativeBinomialExpert(1, n_experts=3).log_prob(x, y).shape
    torch.Size([5000, 3])
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
        self.log_alpha = nn.Parameter(torch.zeros(self._k, dtype=dtype))

    # ----------------------------------------------------------- parameters
    @property
    def alpha(self) -> torch.Tensor:
        """The dispersion alpha per expert (``Var = mu + alpha mu^2``): (K,)."""
        return self.log_alpha.exp()

    def n_parameters(self) -> int:
        return self.n_features + 2

    _support_text = "a non-negative integer count (0, 1, 2, ...)"
    _support_fix = ("Remove or correct those rows, give them zero weight, or let another expert explain them "
                    "(e.g. a PointMassExpert at that value)")
    _safe_y = 0.0

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) of counts for a NegativeBinomialExpert, got {tuple(y.shape)}")
        y = y.to(dtype=self.coef.dtype, device=self.coef.device)
        bad = ~torch.isfinite(y)
        if n and bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"y must hold finite non-negative integer counts for a NegativeBinomialExpert; got {int(bad.sum())} "
                f"non-finite value(s), the first y[{i}] = {float(y[i])!r}. Remove those rows or fill in their counts"
            )
        return y

    def _in_support(self, y: torch.Tensor) -> torch.Tensor:
        return (y >= 0) & (y == torch.floor(y))

    # ----------------------------------------------------------- likelihood
    def log_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Clamped linear predictor ``log E[y | x]``: (n,) single or (n, K) stacked."""
        return self._out(self._eta_x(x).clamp(*eta_bounds(self.coef.dtype)))

    def forward(self, x: torch.Tensor) -> NegativeBinomial:
        eta = self._eta_x(x).clamp(*eta_bounds(self.coef.dtype))  # (n, K)
        r = torch.exp(-self.log_alpha).expand_as(eta)
        return NegativeBinomial(total_count=self._out(r), logits=self._out(eta + self.log_alpha), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The exact NB2 log pmf, ``-inf`` off the counts: (n,) single or (n, K) stacked."""
        eta = self._eta_x(x).clamp(*eta_bounds(self.coef.dtype))
        yy, inside = self._y_and_support(y, eta.shape[0])
        lp = nb2_log_prob(yy[:, None], torch.exp(-self.log_alpha), eta + self.log_alpha)
        return self._out(torch.where(inside[:, None], lp, torch.full_like(lp, -math.inf)))

    # --------------------------------------------------------------- M-step
    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        lo, hi = eta_bounds(coef.dtype)
        raw = self._eta(xd, coef, ex)  # (n, K)
        eta = raw.clamp(lo, hi)
        inside = ((raw > lo) & (raw < hi)).to(raw.dtype)  # the clamp's derivative
        la = self.log_alpha.detach()
        r = torch.exp(-la)  # (K,)
        u = eta + la
        yy = y[:, None]
        lp = nb2_log_prob(yy, r, u)
        s = torch.nn.functional.softplus(u)
        sig = torch.sigmoid(u)  # mu / (r + mu)
        d1, d2 = digamma_diffs(yy, r)
        # derivatives in log alpha (r = exp(-log alpha)) of the log pmf, row by row
        g_la = -r * d1 + r * (s - sig) + yy * (1 - sig)
        h_la = r * d1 + r * r * d2 - r * (s - sig) + r * sig * sig - yy * sig * (1 - sig)
        return SuffStats(
            objective=(w * lp).sum(),
            grad=(w * inside * (yy - sig * (r + yy))).T @ xd,  # (K, p)
            info=weighted_grams(xd, w * inside * (r + yy) * sig * (1 - sig)),
            sw=w.sum(0),
            alpha_grad=(w * g_la).sum(0),  # (K,)
            alpha_hess=(w * h_la).sum(0),  # (K,)
        )

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One ECM step: a Newton step on the coefficients and a safeguarded Newton step on ``log alpha``.

        Experts with no weight keep their parameters.
        """
        super().m_step(stats)
        la = self.log_alpha.data
        dt = la.dtype
        sw = stats["sw"].to(dt)
        g = stats["alpha_grad"].to(dt)
        h = -stats["alpha_hess"].to(dt)
        keep = sw > 1e-12 * sw.sum().clamp_min(torch.finfo(dt).tiny)
        newton = g / torch.where(h > 0, h, torch.ones_like(h))
        step = torch.where(h > 0, newton, torch.sign(g) * MAX_LOG_ALPHA_STEP).clamp(-MAX_LOG_ALPHA_STEP, MAX_LOG_ALPHA_STEP)
        new = (la + step).clamp(math.log(ALPHA_BOUNDS[0]), math.log(ALPHA_BOUNDS[1]))
        ok = keep & torch.isfinite(new)
        la.copy_(torch.where(ok, new, la))

    def _set_intercept_only(self, y, w) -> None:
        lo, hi = eta_bounds(self.coef.dtype)
        ybar = self._weighted_mean_y(y, w)  # (K,)
        self.coef.data[:, 0] = ybar.clamp_min(1e-6).log().clamp(lo, hi)
        sw = w.sum(0).clamp_min(torch.finfo(w.dtype).tiny)
        var = (w * (y[:, None] - ybar) ** 2).sum(0) / sw
        m = ybar.clamp_min(1e-6)
        start = ((var - m) / (m * m)).nan_to_num(_ALPHA_START[0]).clamp(*_ALPHA_START)
        self.log_alpha.data.copy_(start.log().to(self.log_alpha.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", alpha=estimated"
