"""Logistic-regression experts: binary (:class:`LogisticExpert`) and multinomial (:class:`SoftmaxExpert`).

Both are generalised linear models fitted by Newton-Raphson (IRLS) on the
weighted log-likelihood.  The statistics a Newton step needs -- the weighted
objective, its gradient and the (observed = expected, canonical link)
information matrix at the current coefficients -- are sums over rows, so they
are additive :class:`~moekit.stats.SuffStats`: in memory they are one chunked
pass over the data, out of core a sum over batches, distributed one
all-reduce.  ``m_step(stats)`` takes exactly one full Newton step;
:func:`moekit._mstep.maximize` iterates and halves the step whenever the
weighted objective would fall, so an M-step never lowers it.

The shared Newton machinery lives in :mod:`moekit.experts.newton` (also
used by :class:`~moekit.experts.poisson.PoissonExpert` and, for the
multinomial statistics, by :class:`~moekit.SoftmaxGate`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Categorical

from .._linalg import weighted_grams
from ..stats import SuffStats
from .newton import NewtonExpert, multinomial_newton_stats

__all__ = ["LogisticExpert", "SoftmaxExpert"]

class _BernoulliValue(Bernoulli):
    """:class:`torch.distributions.Bernoulli` whose ``log_prob`` accepts integer or bool values."""

    def log_prob(self, value):
        return super().log_prob(torch.as_tensor(value, device=self.logits.device).to(self.logits.dtype))


class LogisticExpert(NewtonExpert):
    """Binary logistic regression: ``P(y = 1 | x) = sigmoid(beta^T [1, x])``.

    The weighted M-step is Newton-Raphson (IRLS) with the exact Hessian, from
    additive statistics, with step-halving by
    :func:`~moekit._mstep.maximize`; separable data (no finite maximum) and
    experts without weight never produce NaN.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    l2 : float
        Ridge penalty ``0.5 * l2 * ||beta[1:]||^2`` (the intercept is not
        penalised) subtracted from each expert's weighted log-likelihood.
        ``l2 = 1 / C`` matches scikit-learn's ``LogisticRegression(C=C)``.
    max_m_steps : int
        Newton steps per EM M-step (default one: an ECM step, the fastest way
        to EM's optimum); ``fit_weighted`` on its own (and the initial fit)
        takes up to ``max(max_m_steps, 10)``, stopping early once converged.
    dtype : torch.dtype
        Parameter dtype (float64 by default, as EM wants).
    shared : sequence of int
        Feature indices whose coefficients are common to all experts of the
        stack (one joint Newton step; flexmix's ``FLXMRglmfix(fixed=)``).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per input column.

    Shapes
    ------
    x : (n, d_x); y : (n,) with values in {0, 1} (integer, bool or float).
    ``forward(x)``: a :class:`torch.distributions.Bernoulli` with batch shape
    (n,) [single] or (n, K) [stacked]; ``log_prob(x, y)``: (n,) or (n, K).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    >>> p = torch.sigmoid(0.5 + x @ torch.tensor([2.0, -1.0], dtype=torch.float64))
    >>> y = torch.bernoulli(p, generator=g).long()
    >>> e = LogisticExpert(n_features=2).fit_weighted(x, y)
    >>> e.coef.shape, e(x).batch_shape
    (torch.Size([1, 3]), torch.Size([2000]))
    >>> truth = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    >>> bool((e.coef[0] - truth).abs().max() < 0.3)
    True

    Three experts at once, each with its own weights:

    >>> stack = LogisticExpert(2, n_experts=3)
    >>> w = torch.rand(2000, 3, generator=g, dtype=torch.float64)
    >>> stack.fit_weighted(x, y, w).log_prob(x, y).shape
    torch.Size([2000, 3])
    """

    y_kind = "binary"

    def __init__(
        self,
        n_features: int,
        n_experts: int | None = None,
        l2: float = 0.0,
        max_m_steps: int = 1,
        dtype: torch.dtype = torch.float64,
        shared=(),
    ):
        super().__init__(n_features, n_experts, l2, max_m_steps, shared=shared)
        self.coef = nn.Parameter(torch.zeros(self._k, n_features + 1, dtype=dtype))

    def n_parameters(self) -> int:
        return self.n_features + 1

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) with values in {{0, 1}}, got {tuple(y.shape)}")
        y = y.to(dtype=self.coef.dtype, device=self.coef.device)
        if n and not bool(((y >= 0) & (y <= 1)).all()):
            raise ValueError("y must hold binary labels in {0, 1} for a LogisticExpert; encode the classes as 0/1")
        return y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Log-odds of y = 1: (n,) single or (n, K) stacked."""
        return self._out(self._eta_x(x))

    def forward(self, x: torch.Tensor) -> Bernoulli:
        return _BernoulliValue(logits=self.logits(x), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y * eta - softplus(eta)``: (n,) single or (n, K) stacked."""
        eta = self._eta_x(x)  # (n, K)
        yy = self._prepare_y(y, eta.shape[0])
        return self._out(yy[:, None] * eta - F.softplus(eta))

    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        eta = self._eta(xd, coef, ex)  # (n, K)
        objective = (w * (y[:, None] * eta - F.softplus(eta))).sum()
        mu = torch.sigmoid(eta)
        grad = (w * (y[:, None] - mu)).T @ xd  # (K, p)
        v = w * mu * torch.sigmoid(-eta)  # w mu (1 - mu), accurate in both tails
        return SuffStats(objective=objective, grad=grad, info=weighted_grams(xd, v), sw=w.sum(0))

    def _set_intercept_only(self, y, w) -> None:
        ybar = self._weighted_mean_y(y, w).clamp(1e-6, 1 - 1e-6)
        self.coef.data[:, 0] = torch.log(ybar) - torch.log1p(-ybar)


class SoftmaxExpert(NewtonExpert):
    """Multinomial logistic regression: ``P(y = c | x) = softmax_c(B [1, x])``.

    The last class is the reference: the M-step first shifts every class row
    by the reference row (the probabilities do not change), then takes a
    Newton step on the other C - 1 rows with the exact Hessian, as
    :class:`~moekit.gates.SoftmaxGate` does for soft targets.  For stacked
    experts the information matrix is block-diagonal across experts, so it is
    solved as a batch of K systems of size (C - 1)(d_x + 1).

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_classes : int
        Number of classes C >= 2; y holds integer labels 0, ..., C - 1.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    l2 : float
        Ridge penalty ``0.5 * l2 * ||B[:C-1, 1:] - B[C-1, 1:]||^2`` (the
        non-intercept coefficients relative to the reference class).
    max_m_steps : int
        Newton steps per EM M-step (default one: an ECM step, the fastest way
        to EM's optimum); ``fit_weighted`` on its own (and the initial fit)
        takes up to ``max(max_m_steps, 10)``, stopping early once converged.
    dtype : torch.dtype
        Parameter dtype.
    shared : sequence of int
        Feature indices whose coefficients (one per free class, against the
        last class) are common to all experts of the stack.

    Attributes
    ----------
    coef : Parameter (K, C, d_x + 1)
        One row per class, intercept first.  Only differences to the last row
        matter; after an M-step the last row is zero.

    Shapes
    ------
    x : (n, d_x); y : (n,) integer labels in 0..C-1.
    ``forward(x)``: a :class:`torch.distributions.Categorical` with batch
    shape (n,) [single] or (n, K) [stacked]; ``log_prob(x, y)``: (n,) or (n, K).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(3000, 1, generator=g, dtype=torch.float64)
    >>> logits = torch.cat([2 * x, -x, torch.zeros_like(x)], dim=1)
    >>> y = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    >>> e = SoftmaxExpert(n_features=1, n_classes=3).fit_weighted(x, y)
    >>> e.coef.shape, e(x).batch_shape, e(x).probs.shape
    (torch.Size([1, 3, 2]), torch.Size([3000]), torch.Size([3000, 3]))
    >>> e.n_parameters()
    4
    >>> truth = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    >>> bool((e.coef[0] - truth).abs().max() < 0.3)
    True
    >>> SoftmaxExpert(1, 3, n_experts=2).log_prob(x, y).shape
    torch.Size([3000, 2])
    """

    y_kind = "categorical"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        n_experts: int | None = None,
        l2: float = 0.0,
        max_m_steps: int = 1,
        dtype: torch.dtype = torch.float64,
        shared=(),
    ):
        super().__init__(n_features, n_experts, l2, max_m_steps, shared=shared)
        if not (isinstance(n_classes, int) and n_classes >= 2):
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        self.n_classes = n_classes
        self.coef = nn.Parameter(torch.zeros(self._k, n_classes, n_features + 1, dtype=dtype))

    def extra_repr(self) -> str:
        more = f", shared={self.shared}" if self.shared else ""
        return f"n_features={self.n_features}, n_classes={self.n_classes}, n_experts={self.n_experts}, l2={self.l2}{more}"

    def n_parameters(self) -> int:
        return (self.n_classes - 1) * (self.n_features + 1)

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) with integer labels, got {tuple(y.shape)}")
        y = y.to(device=self.coef.device)
        if y.is_floating_point():
            yl = y.round().long()
            if n and not bool((yl.to(y.dtype) == y).all()):
                raise ValueError("y must hold integer class labels 0..n_classes-1; got non-integer values")
            y = yl
        else:
            y = y.long()
        if n and not bool(((y >= 0) & (y < self.n_classes)).all()):
            raise ValueError(
                f"y must hold class labels in 0..{self.n_classes - 1}, got values in "
                f"[{int(y.min())}, {int(y.max())}]; encode the classes (e.g. sklearn LabelEncoder)"
            )
        return y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised class log-probabilities: (n, C) single or (n, K, C) stacked."""
        eta = self._eta_x(x)  # (n, K, C)
        return self._out(F.log_softmax(eta, dim=-1))

    def forward(self, x: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits(x), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-probability of the observed class: (n,) single or (n, K) stacked."""
        eta = self._eta_x(x)  # (n, K, C)
        yy = self._prepare_y(y, eta.shape[0])
        logp = F.log_softmax(eta, dim=-1)
        idx = yy[:, None, None].expand(-1, eta.shape[1], 1)
        return self._out(logp.gather(-1, idx)[..., 0])

    # ------------------------------------------------- free coefficients
    def _shared_free_positions(self) -> list[int]:
        """The shared features' coefficients of every free class in the (C-1) p free layout."""
        p = self.n_features + 1
        return [c * p + 1 + j for c in range(self.n_classes - 1) for j in self.shared]

    def _normalise(self, coef: torch.Tensor) -> None:
        coef -= coef[:, -1:, :].clone()

    def _free(self, coef: torch.Tensor) -> torch.Tensor:
        ref = coef[:, -1:, :]
        return (coef[:, :-1, :] - ref).reshape(coef.shape[0], -1)

    def _set_free(self, coef: torch.Tensor, free: torch.Tensor) -> None:
        k, c, p = coef.shape
        coef[:, :-1, :] = free.reshape(k, c - 1, p)
        coef[:, -1, :] = 0.0

    def _penalty_mask(self) -> torch.Tensor:
        p = self.n_features + 1
        mask = torch.ones(self.n_classes - 1, p, dtype=self.coef.dtype, device=self.coef.device)
        mask[:, 0] = 0.0
        return mask.reshape(-1)

    def _stats_chunk(self, xd, ex, y, w, coef) -> SuffStats:
        logp = F.log_softmax(self._eta(xd, coef, ex), dim=-1)  # (n, K, C)
        counts = w[:, :, None] * F.one_hot(y, coef.shape[1]).to(xd.dtype)[:, None, :]  # (n, K, C)
        objective, grad, info = multinomial_newton_stats(xd, logp, counts)
        return SuffStats(objective=objective, grad=grad, info=info, sw=w.sum(0))

    def _set_intercept_only(self, y, w) -> None:
        freq = self._weighted_mean_y(F.one_hot(y, self.n_classes).to(w.dtype), w).clamp_min(1e-6)  # (K, C)
        logf = freq.log()
        self.coef.data[:, :, 0] = logf - logf[:, -1:]
