"""Robust linear regression experts with Student-t noise (scalar or vector y)."""

from __future__ import annotations

import math

import torch
from scipy.optimize import brentq
from scipy.special import digamma
from torch import nn
from torch.distributions import Independent

from .._linalg import add_intercept, solve_spd, weighted_grams
from ..distributions import StudentT
from ..stats import SuffStats
from .base import Expert

__all__ = ["StudentTExpert"]

_DF_INIT = 10.0


class StudentTExpert(Expert):
    """Linear regression with Student-t noise: ``y | x ~ t_nu(B^T [1, x], sigma^2)``.

    The heavy tails make the fit robust to gross outliers: a point with a
    large standardised residual gets a small latent precision weight
    ``u = (nu + 1) / (nu + r^2 / sigma^2)`` and hardly moves the line.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_outputs : int or None
        ``None`` for a scalar target (event shape ``()``), otherwise d_y.  A
        vector target is modelled as d_y *independent* Student-t coordinates
        with their own regression and scale but one degrees-of-freedom
        parameter per expert (``Independent(StudentT, 1)``), not as a
        multivariate t: each coordinate then has its own latent weight, so an
        outlier in one output does not down-weight the others.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    df : float or None
        ``None``: the degrees of freedom nu are estimated per expert (a
        parameter ``log_df``, starting at 10 clipped to ``df_bounds``).  A
        positive float fixes nu (a buffer ``log_df``); ``df=1e6`` is,
        numerically, Gaussian regression.
    df_bounds : (float, float)
        Interval in which an estimated nu is kept (``0 < lo < hi``).
    var_floor : float
        Lower bound on every squared scale sigma^2, in y's units squared.
    max_m_steps : int
        ECM iterations per call of :meth:`fit_weighted` (the driver stops
        earlier once the weighted log-likelihood stops improving).  Inside
        EM a few are enough; a stand-alone fit to full precision may need
        more (nu converges slowly when the tails are light).
    dtype : torch.dtype
        Parameter dtype (float64 by default, as EM wants).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1, d_y)
        Regression coefficients; row 0 is the intercept.
    log_scale : Parameter (K, d_y)
        ``log sigma`` per expert and output.
    log_df : Parameter or buffer (K,)
        ``log nu`` per expert (a buffer when ``df`` is fixed).

    Shapes
    ------
    forward(x): x (n, d_x) -> distribution with batch shape (n,) [single] or
    (n, K) [stacked] and event shape () [scalar y] or (d_y,).
    log_prob(x, y): y (n,) or (n, d_y) -> (n,) single, (n, K) stacked.

    Notes
    -----
    The M-step is ECM (Liu & Rubin, 1995) on the scale-mixture
    representation ``y | u ~ N(mu, sigma^2 / u)``, ``u ~ Gamma(nu/2, nu/2)``.
    At the current parameters, :meth:`suff_stats` computes the expected
    precision weights ``u_i = (nu + 1) / (nu + r_i^2 / sigma^2)`` and
    ``E[log u_i] = psi((nu + 1)/2) - log((nu + r_i^2/sigma^2)/2)``, and sums
    ``w u x x^T``, ``w u x y``, ``w u y^2``, ``w``, ``w u`` and
    ``w (E log u - u)`` over rows (additive, so they can be summed over
    batches or ranks).  :meth:`m_step` then sets the coefficients by
    weighted least squares with weights ``w u``, ``sigma^2 = sum w u r^2 /
    sum w``, and nu as the root in ``df_bounds`` of the expected
    complete-data equation

    ``log(nu/2) - psi(nu/2) + 1 + sum w (E log u - u) / (d_y sum w) = 0``,

    whose left side decreases in nu, so the root (or the nearer bound) is
    the maximiser over the interval.  Each step is therefore an exact EM step
    for the latent weights and never lowers the weighted t log-likelihood;
    ``stats["objective"]`` holds that log-likelihood so that
    :func:`~moekit._mstep.maximize` can iterate and check it.  Experts with
    no weight keep their parameters.

    Examples
    --------
    Data from a line with t(3) noise:

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> n = 500
    >>> x = torch.rand(n, 1, generator=g, dtype=torch.float64)
    >>> z = torch.randn(n, generator=g, dtype=torch.float64)
    >>> chi2 = (torch.randn(n, 3, generator=g, dtype=torch.float64) ** 2).sum(1)
    >>> y = 1 + 2 * x[:, 0] + 0.1 * z / (chi2 / 3).sqrt()
    >>> e = StudentTExpert(n_features=1, max_m_steps=500)
    >>> _ = e.init_from_responsibilities(x, y, torch.ones(n, dtype=torch.float64))
    >>> [round(v, 1) for v in e.coef[0, :, 0].tolist()], round(e.df.tolist()[0], 1)
    ([1.0, 2.0], 3.0)
    >>> e(x).batch_shape, e.log_prob(x, y).shape
    (torch.Size([500]), torch.Size([500]))

    Stacked experts (one module, K of them) and vector targets:

    >>> s = StudentTExpert(n_features=1, n_outputs=2, n_experts=3, df=4.0)
    >>> s.coef.shape, s.log_scale.shape, s.log_df.shape
    (torch.Size([3, 2, 2]), torch.Size([3, 2]), torch.Size([3]))
    >>> d = s(x)
    >>> d.batch_shape, d.event_shape
    (torch.Size([500, 3]), torch.Size([2]))
    >>> s.log_prob(x, torch.zeros(n, 2, dtype=torch.float64)).shape
    torch.Size([500, 3])
    """

    m_step_exact = False
    max_m_steps = 25

    def __init__(
        self,
        n_features: int,
        n_outputs: int | None = None,
        n_experts: int | None = None,
        df: float | None = None,
        df_bounds: tuple[float, float] = (1.0, 200.0),
        var_floor: float = 1e-6,
        max_m_steps: int = 25,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__(n_experts)
        if not (isinstance(n_features, int) and n_features >= 0):
            raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
        if n_outputs is not None and not (isinstance(n_outputs, int) and n_outputs >= 1):
            raise ValueError(f"n_outputs must be None (scalar y) or a positive int, got {n_outputs!r}")
        if not var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {var_floor!r}")
        try:
            lo, hi = (float(b) for b in df_bounds)
        except (TypeError, ValueError):
            raise ValueError(f"df_bounds must be a pair (lo, hi) of floats, got {df_bounds!r}") from None
        if not (0 < lo < hi < math.inf):
            raise ValueError(f"df_bounds must satisfy 0 < lo < hi < inf, got {df_bounds!r}")
        if df is not None and not (isinstance(df, (int, float)) and 0 < df < math.inf):
            raise ValueError(f"df must be None (estimated) or a positive finite float, got {df!r}")
        if not (isinstance(max_m_steps, int) and max_m_steps >= 1):
            raise ValueError(f"max_m_steps must be a positive int, got {max_m_steps!r}")
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.df_bounds = (lo, hi)
        self.var_floor = float(var_floor)
        self.max_m_steps = max_m_steps
        self.fixed_df = df is not None
        k, p, d = self._k, n_features + 1, self._d
        self.coef = nn.Parameter(torch.zeros(k, p, d, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(k, d, dtype=dtype))
        if self.fixed_df:
            self.register_buffer("log_df", torch.full((k,), math.log(float(df)), dtype=dtype))
        else:
            start = min(max(_DF_INIT, lo), hi)
            self.log_df = nn.Parameter(torch.full((k,), math.log(start), dtype=dtype))

    @property
    def _d(self) -> int:
        return 1 if self.n_outputs is None else self.n_outputs

    def extra_repr(self) -> str:
        df = "estimated" if not self.fixed_df else f"{float(self.log_df[0].exp()):g}"
        return (
            f"n_features={self.n_features}, n_outputs={self.n_outputs}, "
            f"n_experts={self.n_experts}, df={df}"
        )

    # ----------------------------------------------------------- parameters
    @property
    def df(self) -> torch.Tensor:
        """Degrees of freedom nu per expert: (K,)."""
        return self.log_df.exp()

    def scale(self) -> torch.Tensor:
        """Noise scales sigma, floored at ``sqrt(var_floor)``: (K, d_y)."""
        return self.log_scale.exp().clamp_min(math.sqrt(self.var_floor))

    # ----------------------------------------------------------- likelihood
    def input_slopes(self) -> torch.Tensor:
        """The coefficients of x: ``coef[:, 1:, :]`` (row 0 holds the intercepts)."""
        return self.coef.data[:, 1:, :]

    def _loc(self, x: torch.Tensor) -> torch.Tensor:
        """Locations: (n, K, d_y)."""
        xd = add_intercept(x.to(self.coef.dtype))
        n = xd.shape[0]
        return (xd @ self.coef.permute(1, 0, 2).reshape(xd.shape[1], -1)).reshape(n, self._k, self._d)

    def _y2d(self, y: torch.Tensor) -> torch.Tensor:
        """Targets as (n, d_y) in the parameter dtype, with a shape check."""
        if self.n_outputs is None:
            if y.dim() == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.dim() != 1:
                raise ValueError(f"y must have shape (n,) for a scalar-target expert, got {tuple(y.shape)}")
            y = y[:, None]
        elif y.dim() != 2 or y.shape[1] != self.n_outputs:
            raise ValueError(f"y must have shape (n, {self.n_outputs}), got {tuple(y.shape)}")
        return y.to(self.coef.dtype)

    def forward(self, x: torch.Tensor):
        loc = self._loc(x)  # (n, K, d)
        n = loc.shape[0]
        scale = self.scale().expand(n, -1, -1)
        df = self.df[None, :, None].expand(n, -1, self._d)
        if self.n_outputs is None:
            loc, scale, df = loc[..., 0], scale[..., 0], df[..., 0]
        if not self.stacked:
            loc, scale, df = loc[:, 0], scale[:, 0], df[:, 0]
        dist = StudentT(df, loc, scale, validate_args=False)
        if self.n_outputs is None:
            return dist
        return Independent(dist, 1, validate_args=False)

    def _log_prob_nkd(self, x: torch.Tensor, y2: torch.Tensor):
        """Per-coordinate log-densities (n, K, d) and squared standardised residuals (n, K, d)."""
        scale = self.scale()  # (K, d)
        nu = self.df[:, None]  # (K, 1)
        z = (y2[:, None, :] - self._loc(x)) / scale
        delta = z * z
        const = (
            torch.lgamma(0.5 * (nu + 1))
            - torch.lgamma(0.5 * nu)
            - 0.5 * torch.log(nu)
            - 0.5 * math.log(math.pi)
            - torch.log(scale)
        )  # (K, d)
        lp = const - 0.5 * (nu + 1) * torch.log1p(delta / nu)
        return lp, delta

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-density of y under each expert: (n,) single or (n, K) stacked."""
        lp, _ = self._log_prob_nkd(x, self._y2d(y))
        return self._out(lp.sum(-1))

    # --------------------------------------------------------------- M-step
    @torch.no_grad()
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """ECM statistics at the current parameters (additive over rows).

        Parameters
        ----------
        x : Tensor (n, d_x)
        y : Tensor (n,) or (n, d_y)
        weight : Tensor (n,) or (n, K), optional
            Non-negative row weights (EM passes weight times responsibility).

        Returns
        -------
        SuffStats
            ``sw`` (K,) sum of w; ``xux`` (K, d_y, p, p) sum of ``w u x x^T``;
            ``xuy`` (K, d_y, p) sum of ``w u x y``; ``yuy`` (K, d_y) sum of
            ``w u y^2``; ``swu`` (K, d_y) sum of ``w u``; ``elogu_u`` (K,) sum
            over rows and outputs of ``w (E log u - u)``; ``loglik`` (K,) the
            weighted t log-likelihood of each expert and ``objective`` () its
            total.  Here p = d_x + 1.  ``swu`` is not needed by the M-step;
            it is a convergence diagnostic (``swu == sw`` wherever sigma is
            at its maximiser above the floor).

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) or (n, K).
        """
        x = x.to(self.coef.dtype)
        y2 = self._y2d(y)
        xd = add_intercept(x)
        n, p = xd.shape
        k, d = self._k, self._d
        w = self._weight_nk(weight, n, xd)  # (n, K)
        lp, delta = self._log_prob_nkd(x, y2)  # (n, K, d)
        nu = self.df[None, :, None]  # (1, K, 1)
        u = (nu + 1) / (nu + delta)
        elogu = torch.digamma(0.5 * (nu + 1)) - torch.log(0.5 * (nu + delta))
        wu = w[:, :, None] * u  # (n, K, d)
        loglik = (w * lp.sum(-1)).sum(0)
        return SuffStats(
            sw=w.sum(0),
            xux=weighted_grams(xd, wu.reshape(n, k * d)).reshape(k, d, p, p),
            xuy=torch.einsum("nkd,np,nd->kdp", wu, xd, y2),
            yuy=torch.einsum("nkd,nd->kd", wu, y2 * y2),
            swu=wu.sum(0),
            elogu_u=(w[:, :, None] * (elogu - u)).sum((0, 2)),
            loglik=loglik,
            objective=loglik.sum(),
        )

    def _keep(self, sw: torch.Tensor) -> torch.Tensor:
        total = sw.sum()
        return sw > 1e-12 * total.clamp_min(torch.finfo(sw.dtype).tiny)

    def _update_regression(self, stats: SuffStats, keep: torch.Tensor) -> None:
        """Weighted least squares (weights ``w u``) and ``sigma^2 = sum w u r^2 / sum w``."""
        sw = stats["sw"]
        xuy = stats["xuy"][..., None]  # (K, d, p, 1)
        beta = solve_spd(stats["xux"], xuy)  # (K, d, p, 1)
        rss = stats["yuy"] - (xuy * beta).sum((-2, -1))  # (K, d)
        var = rss / sw.clamp_min(torch.finfo(sw.dtype).tiny)[:, None]
        var = torch.nan_to_num(var, nan=self.var_floor).clamp_min(self.var_floor)
        coef = beta[..., 0].transpose(1, 2)  # (K, p, d)
        ok = keep & torch.isfinite(coef).all(2).all(1)
        self.coef.data[ok] = coef[ok].to(self.coef.dtype)
        self.log_scale.data[ok] = 0.5 * var[ok].log().to(self.log_scale.dtype)

    def _update_df(self, stats: SuffStats, keep: torch.Tensor) -> None:
        """nu: root in ``df_bounds`` of the expected complete-data score equation."""
        lo, hi = self.df_bounds
        sw = stats["sw"].detach().cpu().double()
        c = (stats["elogu_u"].detach().cpu().double() / (self._d * sw.clamp_min(1e-300))).tolist()
        new = self.log_df.detach().clone()
        for j, kj in enumerate(keep.tolist()):
            cj = c[j]
            if not kj or not math.isfinite(cj):
                continue

            def f(nu, cj=cj):
                return math.log(0.5 * nu) - float(digamma(0.5 * nu)) + 1.0 + cj

            if f(lo) <= 0:
                nu = lo
            elif f(hi) >= 0:
                nu = hi
            else:
                nu = brentq(f, lo, hi, xtol=1e-13, rtol=1e-14, maxiter=200)
            new[j] = math.log(nu)
        self.log_df.data.copy_(new)

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One ECM cycle: coefficients and scales, then nu (if estimated); zero-weight experts are kept."""
        keep = self._keep(stats["sw"])
        if not bool(keep.any()):
            return
        self._update_regression(stats, keep)
        if not self.fixed_df:
            self._update_df(stats, keep)

    @torch.no_grad()
    def init_from_responsibilities(self, x, y, weight):
        """Start from a weighted Gaussian least-squares fit, then run the ECM M-step.

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) single or (n, K) stacked.
        """
        # With log_df temporarily huge, u = 1 and the regression step is plain WLS.
        saved = self.log_df.detach().clone()
        self.log_df.data.fill_(math.log(1e12))
        try:
            stats = self.suff_stats(x, y, weight)
            self._update_regression(stats, self._keep(stats["sw"]))
        finally:
            self.log_df.data.copy_(saved)
        return self.fit_weighted(x, y, weight)
