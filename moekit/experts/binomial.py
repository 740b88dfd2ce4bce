"""Binomial-regression experts: y successes out of n trials (logit link)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._linalg import weighted_grams
from ..distributions import Binomial
from ..stats import SuffStats
from .newton import NewtonExpert

__all__ = ["BinomialExpert"]


def _log_choose(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``log C(n, k)`` for integer-valued float tensors with ``0 <= k <= n``."""
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


class BinomialExpert(NewtonExpert):
    """Binomial regression with logit link: ``y | x, n ~ Binomial(n, sigmoid(beta^T [1, x] + offset))``.

    y counts the successes out of n trials; the number of trials n is known
    per row and travels as the LAST column of x (after the features and the
    offset, if any), so it follows every row slice, chunk and batch.  With
    n = 1 on every row this is logistic regression.  The weighted M-step is
    Newton-Raphson (IRLS) with the exact Hessian (the canonical link: observed
    = expected information), from additive statistics, with step-halving by
    :func:`~moekit._mstep.maximize`, so it never lowers the weighted
    log-likelihood.  ``log_prob`` is the exact log pmf, the log binomial
    coefficient included (as statsmodels' GLM log-likelihood).  The logit link
    needs no clamp: ``softplus`` and ``sigmoid`` are evaluated stably for any
    finite linear predictor.

    Parameters
    ----------
    n_features : int
        Number of feature columns d_x (x has ``d_x + 1`` columns, or ``d_x + 2``
        with ``offset=True``).
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    max_m_steps : int
        Newton steps per EM M-step (default one: an ECM step); ``fit_weighted``
        on its own (and the initial fit) takes up to ``max(max_m_steps, 10)``,
        stopping early once converged.
    l2 : float
        Ridge penalty ``0.5 * l2 * ||beta[1:]||^2`` (intercept not penalised).
    dtype : torch.dtype
        Parameter dtype.
    offset : bool
        Whether x carries an offset column (before the trials column): a known
        term added to the linear predictor (the log-odds), coefficient one.
    shared : sequence of int
        Feature indices whose coefficients are common to all experts of the
        stack (a joint Newton step, flexmix's ``FLXMRglmfix(fixed=)``).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per feature.

    Shapes
    ------
    x : (n, d_x + 1) ``[features, trials]`` or (n, d_x + 2) ``[features,
    offset, trials]``; y : (n,) integer successes with ``0 <= y <= trials``.
    ``forward(x)``: a :class:`moekit.distributions.Binomial` (mean
    ``trials * p``, with a ``cdf``) with batch shape (n,) [single] or (n, K)
    [stacked]; ``log_prob(x, y)``: (n,) or (n, K).

    Raises
    ------
    ValueError
        When y is not integer, negative or above the trials, or the trials
        are not positive integers.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(3000, 1, generator=g, dtype=torch.float64)
    >>> trials = torch.randint(1, 20, (3000,), generator=g).to(torch.float64)
    >>> p = torch.sigmoid(-0.5 + 1.5 * z[:, 0])
    >>> y = torch.binomial(trials, p, generator=g)
    >>> x = torch.cat([z, trials[:, None]], dim=1)  # the trials are the last column
    >>> e = BinomialExpert(n_features=1).fit_weighted(x, y)
    >>> truth = torch.tensor([-0.5, 1.5], dtype=torch.float64)
    >>> bool((e.coef[0] - truth).abs().max() < 0.1)
    True
    >>> d = e(x[:3])
    >>> d.batch_shape, bool(torch.allclose(d.mean, trials[:3] * torch.sigmoid(e.logits(x[:3]))))
    (torch.Size([3]), True)
    >>> BinomialExpert(1, n_experts=2).log_prob(x, y).shape
    torch.Size([3000, 2])
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
        extras = ("offset", "trials") if offset else ("trials",)
        super().__init__(n_features, n_experts, l2, max_m_steps, extras=extras, shared=shared)
        self.coef = nn.Parameter(torch.zeros(self._k, n_features + 1, dtype=dtype))

    def n_parameters(self) -> int:
        return self.n_features + 1

    # ------------------------------------------------------------- inputs
    def _prepare_x(self, x: torch.Tensor) -> torch.Tensor:
        """x checked as the base class does, and its trials column: positive integers."""
        xx = super()._prepare_x(x)
        t = xx[:, -1]
        if xx.shape[0] and not bool(((t >= 1) & (t == torch.floor(t)) & torch.isfinite(t)).all()):
            bad = int((~((t >= 1) & (t == torch.floor(t)) & torch.isfinite(t))).nonzero()[0, 0])
            raise ValueError(
                f"trials (the last column of x for a BinomialExpert) must hold positive integers, got "
                f"{float(t[bad])!r} at row {bad}; pass the number of trials of each row (ones for binary y)"
            )
        return xx

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) of success counts, got {tuple(y.shape)}")
        y = y.to(dtype=self.coef.dtype, device=self.coef.device)
        ok = (y >= 0) & (y == torch.floor(y))
        if n and not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"y must hold non-negative integer success counts for a BinomialExpert, got {float(y[bad])!r} "
                f"at row {bad}; pass the number of successes out of the trials (not a proportion)"
            )
        return y

    @staticmethod
    def _check_within_trials(y: torch.Tensor, trials: torch.Tensor) -> None:
        over = y > trials
        if bool(over.any()):
            bad = int(over.nonzero()[0, 0])
            raise ValueError(
                f"y must not exceed trials (the last column of x): row {bad} has y={float(y[bad])!r} successes "
                f"out of {float(trials[bad])!r} trials; pass the successes and the number of trials of each row"
            )

    def _prepared(self, x, y):
        """x and y checked, and y <= trials on every row."""
        xx = self._prepare_x(x)
        yy = self._prepare_y(y, xx.shape[0])
        self._check_within_trials(yy, xx[:, -1])
        return xx, yy

    # ---------------------------------------------------------- the model
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Log-odds of a success, offset included: (n,) single or (n, K) stacked."""
        return self._out(self._eta_x(x))

    def forward(self, x: torch.Tensor) -> Binomial:
        xx = self._prepare_x(x)
        xd, ex = self._design(xx)
        eta = self._eta(xd, self.coef, ex)  # (n, K)
        trials = ex["trials"][:, None].expand_as(eta)
        return Binomial(total_count=self._out(trials), logits=self._out(eta), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y * eta - n * softplus(eta) + log C(n, y)``: (n,) single or (n, K) stacked."""
        xx, yy = self._prepared(x, y)
        xd, ex = self._design(xx)
        eta = self._eta(xd, self.coef, ex)  # (n, K)
        n = ex["trials"][:, None]
        y1 = yy[:, None]
        return self._out(y1 * eta - n * F.softplus(eta) + _log_choose(n, y1))

    # --------------------------------------------------------- statistics
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """Newton statistics (see :meth:`NewtonExpert.suff_stats`), after checking ``y <= trials``."""
        xx, yy = self._prepared(x, y)
        return super().suff_stats(xx, yy, weight)

    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        eta = self._eta(xd, coef, ex)  # (n, K)
        n = ex["trials"][:, None]
        yy = y[:, None]
        objective = (w * (yy * eta - n * F.softplus(eta) + _log_choose(n, yy))).sum()
        mu = n * torch.sigmoid(eta)
        grad = (w * (yy - mu)).T @ xd  # (K, p)
        v = w * mu * torch.sigmoid(-eta)  # w n p (1 - p), accurate in both tails
        return SuffStats(objective=objective, grad=grad, info=weighted_grams(xd, v), sw=w.sum(0))

    def init_from_responsibilities(self, x, y, weight):
        """Initial fit: the intercept-only maximum likelihood (pooled success rate), then Newton steps."""
        xx, yy = self._prepared(x, y)
        w = self._weight_nk(weight, xx.shape[0], xx)
        with torch.no_grad():
            self.coef.data.zero_()
            sw = w.T @ xx[:, -1]  # (K,) weighted trials
            rate = (w.T @ yy) / sw.clamp_min(torch.finfo(sw.dtype).tiny)
            rate = rate.clamp(1e-6, 1 - 1e-6)
            self.coef.data[:, 0] = torch.log(rate) - torch.log1p(-rate)
        return self.fit_weighted(xx, yy, w)
