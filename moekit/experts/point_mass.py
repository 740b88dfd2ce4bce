"""Point-mass experts: y equals a known constant with probability one (the zeros of a zero-inflated model)."""

from __future__ import annotations

import math

import torch

from ..distributions import PointMass
from ..stats import SuffStats
from .base import Expert

__all__ = ["PointMassExpert"]


class PointMassExpert(Expert):
    """``P(y = value | x) = 1``: a degenerate expert without parameters.

    Mixed with a count expert under a covariate gate it makes a zero-inflated
    model: ``MixtureOfExperts(SoftmaxGate(d, 2), [PointMassExpert(0.0),
    PoissonExpert(d)])`` is a zero-inflated Poisson regression whose
    probability of a structural zero depends on x.  The expert ignores x (any
    width); ``log_prob`` is 0 where y equals ``value`` and ``-inf`` elsewhere
    (never NaN), so in EM the rows with ``y != value`` get responsibility
    exactly 0 from it (``logsumexp`` handles ``-inf``).  Its statistics are
    only the total weight ``sw`` (K,), its M-step does nothing, and it has no
    free parameters.

    Parameters
    ----------
    value : float
        The value y takes (default 0).
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts (all at ``value``).
    dtype : torch.dtype
        The dtype of its distributions and log-probabilities.

    Attributes
    ----------
    value : buffer (K,)
        The location of each expert of the stack.

    Shapes
    ------
    x : (n, d_x) for any d_x (only n is read); y : (n,) or (n, 1).
    ``forward(x)``: a :class:`moekit.distributions.PointMass` with batch
    shape (n,) [single] or (n, K) [stacked]; ``log_prob(x, y)``: (n,) or (n, K).

    Examples
    --------
    >>> import torch
    >>> e = PointMassExpert(0.0)
    >>> x = torch.zeros(3, 5, dtype=torch.float64)
    >>> e.log_prob(x, torch.tensor([0.0, 2.0, 0.0])).tolist()
    [0.0, -inf, 0.0]
    >>> d = e(x)
    >>> d.batch_shape, d.mean.tolist(), d.variance.tolist(), e.n_parameters()
    (torch.Size([3]), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 0)

    A zero-inflated Poisson regression is a two-expert mixture:

    >>> from moekit import MixtureOfExperts, PoissonExpert, SoftmaxGate
    >>> zip_ = MixtureOfExperts(SoftmaxGate(1, 2), [PointMassExpert(0.0), PoissonExpert(1)])
    >>> zip_(torch.zeros(4, 1, dtype=torch.float64)).cdf(torch.zeros(4, dtype=torch.float64)).tolist()  # 0.5 + 0.5 e^-1
    [0.6839397205857212, 0.6839397205857212, 0.6839397205857212, 0.6839397205857212]
    """

    m_step_exact = True
    has_suff_stats = True

    def __init__(self, value: float = 0.0, n_experts: int | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(n_experts)
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1
        ):
            raise TypeError(f"value must be a number (the value y takes), got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"value must be a finite number, got {value!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("value", torch.full((self._k,), value, dtype=dtype))
        self.y_kind = "count" if value == math.floor(value) else "continuous"

    def extra_repr(self) -> str:
        return f"value={float(self.value[0]) if self.value.numel() else None}, n_experts={self.n_experts}"

    def n_parameters(self) -> int:
        return 0

    def input_slopes(self) -> torch.Tensor:
        """Nothing multiplies x: an empty view (any rescaling of x is absorbed)."""
        return self.value[:0]

    def _prepare_y(self, y, n: int | None = None) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.value.device)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1 or (n is not None and y.shape[0] != n):
            want = "(n,)" if n is None else f"({n},)"
            raise ValueError(f"y must have shape {want} (scalar targets) for a PointMassExpert, got {tuple(y.shape)}")
        return y.to(dtype=self.value.dtype)

    def forward(self, x: torch.Tensor) -> PointMass:
        n = x.shape[0]
        return PointMass(self._out(self.value.expand(n, self._k)))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """0 where y equals ``value``, ``-inf`` elsewhere: (n,) single or (n, K) stacked."""
        yy = self._prepare_y(y, x.shape[0])
        hit = yy[:, None] == self.value[None, :]  # (n, K)
        zero = torch.zeros_like(hit, dtype=self.value.dtype)
        return self._out(torch.where(hit, zero, torch.full_like(zero, -math.inf)))

    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """The total weight of each expert, ``sw`` (K,): nothing else is estimated."""
        yy = self._prepare_y(y, x.shape[0])
        w = self._weight_nk(weight, yy.shape[0], self.value)
        return SuffStats(sw=w.sum(0))

    def m_step(self, stats: SuffStats) -> None:
        """Nothing to update: the expert has no parameters."""

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Nothing to fit (the inputs are checked); returns self."""
        self.suff_stats(x, y, weight)
        return self
