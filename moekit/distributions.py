"""Predictive distributions of conditional mixtures.

:class:`MixtureDistribution` is the distribution of y given x under a mixture
of experts: a batch of n mixtures (one per row of x), each of K components.
It answers the questions users ask of a conditional density: mean, variance or
covariance (law of total variance), sampling, log-density, and for scalar y
the CDF and quantiles.

Also here: :func:`flatten_leaves` (the leaves of a nested mixture, the one
flattener that inference, plotting and the tree routing share) and
:func:`marginal` (the mixture of one target column of vector y).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import numpy as np
import torch
from scipy.special import betainc, stdtr
from torch.distributions import Categorical, Distribution, Independent, MultivariateNormal, Normal, constraints
from torch.distributions import Binomial as _Binomial
from torch.distributions import Poisson as _Poisson
from torch.distributions import StudentT as _StudentT

__all__ = [
    "Binomial",
    "Gamma",
    "LeafGroup",
    "MixtureDistribution",
    "NegativeBinomial",
    "PointMass",
    "Poisson",
    "StudentT",
    "check_scalar",
    "covariance",
    "flatten_leaves",
    "marginal",
]


class StudentT(_StudentT):
    """:class:`torch.distributions.StudentT` with a CDF (not differentiable)."""

    def cdf(self, value):
        z = ((value - self.loc) / self.scale).detach()
        df = self.df.detach().expand_as(z)
        out = stdtr(df.cpu().numpy(), z.cpu().numpy())
        return torch.as_tensor(out, dtype=z.dtype, device=z.device)


class Poisson(_Poisson):
    """:class:`torch.distributions.Poisson` with a CDF; integer counts are accepted by ``log_prob``."""

    def log_prob(self, value):
        return super().log_prob(value.to(self.rate.dtype))

    def cdf(self, value):
        rate, k = torch.broadcast_tensors(self.rate, torch.floor(value).to(self.rate.dtype))
        out = torch.special.gammaincc(k.clamp_min(0) + 1, rate)
        return torch.where(k < 0, torch.zeros_like(out), out)


def _stack_components(components) -> list | Distribution:
    if isinstance(components, Distribution):
        return components
    return list(components)


class MixtureDistribution(Distribution):
    """A batch of finite mixtures ``p(y) = sum_k w_k p_k(y)`` with per-row weights.

    Parameters
    ----------
    log_weights : Tensor
        Log mixing weights, shape (n, K); each row's ``logsumexp`` is 0.
    components : Distribution or list of Distribution
        Either one distribution with batch shape (n, K) (stacked experts) or a
        list of K distributions with batch shape (n,) (experts of any families
        with the same event shape).

    Shapes
    ------
    batch_shape (n,); event_shape () for scalar y or (d_y,) for vector y.
    ``mean`` (n, *event), ``variance`` (n, *event), ``covariance_matrix`` (n, d, d),
    ``component_means`` (n, K, *event), ``weights`` (n, K).

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> lw = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    >>> comps = Normal(torch.tensor([[-1.0, 1.0]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))
    >>> m = MixtureDistribution(lw, comps)
    >>> m.mean, m.variance
    (tensor([0.], dtype=torch.float64), tensor([2.], dtype=torch.float64))
    >>> q = m.quantiles([0.25, 0.5])
    >>> round(m.cdf(q[:, 0]).item(), 9), abs(q[0, 1].item()) < 1e-9
    (0.25, True)
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, log_weights: torch.Tensor, components, validate_args=False):
        self.log_weights = log_weights
        self.components = _stack_components(components)
        n, k = log_weights.shape
        if isinstance(self.components, Distribution):
            ev = self.components.event_shape
            if tuple(self.components.batch_shape) != (n, k):
                raise ValueError(
                    f"stacked components must have batch shape ({n}, {k}), got {tuple(self.components.batch_shape)}"
                )
        else:
            if len(self.components) != k:
                raise ValueError(f"expected {k} components, got {len(self.components)}")
            ev = self.components[0].event_shape
        super().__init__(batch_shape=torch.Size([n]), event_shape=ev, validate_args=False)

    # ------------------------------------------------------------ structure
    @property
    def n_components(self) -> int:
        return self.log_weights.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """Mixing weights (n, K)."""
        return self.log_weights.exp()

    @property
    def support(self):
        c = self.components if isinstance(self.components, Distribution) else self.components[0]
        return c.support

    def _per_component(self, attr: str) -> torch.Tensor:
        """Stack ``attr`` of every component along axis 1: (n, K, ...)."""
        if isinstance(self.components, Distribution):
            return getattr(self.components, attr)
        return torch.stack([getattr(c, attr) for c in self.components], dim=1)

    def _per_component_or(self, attr: str, default: torch.Tensor) -> torch.Tensor:
        """``attr`` of every component (n, K), or ``default`` where a component has none."""
        comps = [self.components] if isinstance(self.components, Distribution) else self.components
        if all(hasattr(c, attr) for c in comps):
            return self._per_component(attr).expand_as(default)
        return default

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p_k(y) for every row and component: (n, K)."""
        if isinstance(self.components, Distribution):
            return self.components.log_prob(value.unsqueeze(len(value.shape) - len(self.event_shape)))
        return torch.stack([c.log_prob(value) for c in self.components], dim=-1)

    @property
    def component_means(self) -> torch.Tensor:
        return self._per_component("mean")

    @property
    def component_variances(self) -> torch.Tensor:
        return self._per_component("variance")

    @property
    def component_covariances(self) -> torch.Tensor:
        """(n, K, d, d) for vector y, (n, K) variances for scalar y."""
        if len(self.event_shape) == 0:
            return self.component_variances
        if isinstance(self.components, Distribution):
            return covariance(self.components)
        return torch.stack([covariance(c) for c in self.components], dim=1)

    # -------------------------------------------------------------- moments
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(self.log_weights + self.component_log_prob(value), dim=-1)

    def _wexp(self, t: torch.Tensor) -> torch.Tensor:
        w = self.weights
        return (w.reshape(w.shape + (1,) * (t.dim() - 2)) * t).sum(1)

    @property
    def probs(self) -> torch.Tensor:
        """Class probabilities for categorical/Bernoulli experts: (n, C) or (n,)."""
        return self._wexp(self._per_component("probs"))

    @property
    def mean(self) -> torch.Tensor:
        return self._wexp(self.component_means)

    @property
    def variance(self) -> torch.Tensor:
        mu = self.component_means
        second = self._wexp(self.component_variances + mu**2)
        return (second - self.mean**2).clamp_min(0)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Law of total covariance: E[Cov_k] + Cov[E_k]: (n, d, d)."""
        if len(self.event_shape) == 0:
            return self.variance[:, None, None]
        mu = self.component_means  # (n, K, d)
        outer = mu[..., :, None] * mu[..., None, :]
        m = self.mean
        return self._wexp(self.component_covariances + outer) - m[:, :, None] * m[:, None, :]

    @property
    def stddev(self) -> torch.Tensor:
        return self.variance.sqrt()

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        idx = Categorical(logits=self.log_weights, validate_args=False).sample(sample_shape)  # (*S, n)
        if isinstance(self.components, Distribution):
            comp = self.components.sample(sample_shape)  # (*S, n, K, *ev)
        else:
            comp = torch.stack([c.sample(sample_shape) for c in self.components], dim=len(sample_shape) + 1)
        ev = len(self.event_shape)
        index = idx.unsqueeze(-1)
        for _ in range(ev):
            index = index.unsqueeze(-1)
        index = index.expand(*idx.shape, 1, *self.event_shape)
        return comp.gather(len(sample_shape) + 1, index).squeeze(len(sample_shape) + 1)

    # ---------------------------------------------------- CDF and quantiles
    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """P(Y <= y) for each row (scalar y). ``value``: (n,) or (m, n)."""
        check_scalar(self, "cdf")
        if isinstance(self.components, Distribution):
            c = self.components.cdf(value.unsqueeze(-1))
        else:
            c = torch.stack([comp.cdf(value) for comp in self.components], dim=-1)
        return (self.weights * c).sum(-1)

    def _is_discrete(self) -> bool:
        """Whether every component lives on the integers (then quantiles are integers)."""
        comps = [self.components] if isinstance(self.components, Distribution) else list(self.components)
        return all(_integer_support(c.support) for c in comps)

    @torch.no_grad()
    def icdf(self, q) -> torch.Tensor:
        """Quantile function for scalar y: ``q`` a float or (n,) tensor -> (n,)."""
        check_scalar(self, "icdf")
        lw = self.log_weights
        n = lw.shape[0]
        q = torch.as_tensor(q, dtype=lw.dtype, device=lw.device).expand(n)
        if ((q <= 0) | (q >= 1)).any():
            raise ValueError("quantile levels q must lie strictly between 0 and 1")
        # bracket from each component's centre and spread; heavy tails (Student-t with
        # df <= 2) have no variance, df <= 1 no mean: use their location and scale
        mu = self.component_means
        mu = torch.where(torch.isfinite(mu), mu, self._per_component_or("loc", torch.zeros_like(mu)))
        sd = self.component_variances.clamp_min(0).sqrt()
        sd = torch.where(torch.isfinite(sd), sd, self._per_component_or("scale", torch.ones_like(sd)))
        lo = (mu - 10 * sd).min(1).values
        hi = (mu + 10 * sd).max(1).values
        width = (hi - lo).clamp_min(1.0)
        for _ in range(200):  # widen until the bracket holds q
            bad_lo = self.cdf(lo) > q
            bad_hi = self.cdf(hi) < q
            if not (bad_lo.any() or bad_hi.any()):
                break
            lo = torch.where(bad_lo, lo - width, lo)
            hi = torch.where(bad_hi, hi + width, hi)
            width = width * 2
        if self._is_discrete():
            lo = torch.floor(lo).clamp_min(-1)
            hi = torch.ceil(hi)
            # smallest integer k with F(k) >= q
            for _ in range(200):
                if bool(((hi - lo) <= 1).all()):
                    break
                mid = torch.floor((lo + hi) / 2)
                ge = self.cdf(mid) >= q
                hi = torch.where(ge, mid, hi)
                lo = torch.where(ge, lo, mid)
            return hi
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < q
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def quantiles(self, q: Sequence[float] | float) -> torch.Tensor:
        """Quantiles for several levels at once: (n, len(q))."""
        qs = np.atleast_1d(np.asarray(q, dtype=float))
        return torch.stack([self.icdf(float(v)) for v in qs], dim=1)

    def __repr__(self) -> str:
        return f"MixtureDistribution(n={self.batch_shape[0]}, K={self.n_components}, event_shape={tuple(self.event_shape)})"


def _integer_support(sup) -> bool:
    return isinstance(sup, (constraints._IntegerGreaterThan, constraints._IntegerInterval)) or sup is constraints.nonnegative_integer


def check_scalar(dist: Distribution, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``dist`` is over scalar y (event shape ())."""
    if len(dist.event_shape) != 0:
        raise ValueError(f"{what} is defined for scalar y only; this mixture has event shape {tuple(dist.event_shape)}")


def covariance(d: Distribution) -> torch.Tensor:
    """Covariance matrices of a distribution over vector y: ``covariance_matrix``, else ``diag(variance)``."""
    if hasattr(d, "covariance_matrix"):
        return d.covariance_matrix
    return torch.diag_embed(d.variance)


# ------------------------------------------------------------ nested leaves
class LeafGroup(NamedTuple):
    """Leaves of a (nested) mixture that share one distribution object.

    Attributes
    ----------
    log_weights : Tensor (n, Kb)
        Log weight of each leaf in the whole mixture: the sum of the log
        mixing weights along its path.
    dist : Distribution
        Batch (n, Kb) when ``stacked`` (one object for Kb leaves), else batch
        (n,) and Kb = 1.
    stacked : bool
    """

    log_weights: torch.Tensor
    dist: Distribution
    stacked: bool

    def attr(self, name: str) -> torch.Tensor:
        """``dist.<name>`` with the leaf axis at position 1: (n, Kb, ...)."""
        t = getattr(self.dist, name)
        return t if self.stacked else t.unsqueeze(1)


def flatten_leaves(mix: MixtureDistribution) -> list[LeafGroup]:
    """The leaves of a (possibly nested) mixture, in depth-first order, as groups.

    A component that is itself a :class:`MixtureDistribution` (a node of a
    hierarchical mixture) is replaced by its leaves, whose log-weights add the
    parent's log-weight.  Stacked components (batch (n, K)) stay one group,
    so that callers can keep working on them batched.  Concatenating the
    groups' ``log_weights`` along axis 1 gives the (n, L) leaf log-weights.

    Shapes
    ------
    mix: batch (n,); each group's ``log_weights`` (n, Kb), the Kb summing to
    the number of leaves L.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> half = torch.full((1, 2), 0.5).log()
    >>> inner = MixtureDistribution(half, Normal(torch.zeros(1, 2), torch.ones(1, 2)))
    >>> outer = MixtureDistribution(half, [inner, Normal(torch.zeros(1), torch.ones(1))])
    >>> [(g.log_weights.exp().tolist(), g.stacked) for g in flatten_leaves(outer)]
    [([[0.25, 0.25]], True), ([[0.5]], False)]
    """
    lw = mix.log_weights
    if isinstance(mix.components, Distribution):
        return [LeafGroup(lw, mix.components, True)]
    out = []
    for k, c in enumerate(mix.components):
        if isinstance(c, MixtureDistribution):
            for lw2, d2, st in flatten_leaves(c):
                out.append(LeafGroup(lw[:, k : k + 1] + lw2, d2, st))
        else:
            out.append(LeafGroup(lw[:, k : k + 1], c, False))
    return out


# ---------------------------------------------------------------- marginals
def _marginal_component(c: Distribution, j: int) -> Distribution:
    if isinstance(c, MixtureDistribution):
        return _marginal(c, j)
    if isinstance(c, MultivariateNormal):
        return Normal(c.loc[..., j], c.covariance_matrix[..., j, j].sqrt(), validate_args=False)
    if isinstance(c, Independent) and c.reinterpreted_batch_ndims == 1:
        b = c.base_dist
        if isinstance(b, Normal):
            return Normal(b.loc[..., j], b.scale[..., j], validate_args=False)
        if isinstance(b, _StudentT):
            return StudentT(b.df[..., j], b.loc[..., j], b.scale[..., j], validate_args=False)
    raise TypeError(
        f"the marginal of one target column is available for Gaussian and Student-t components, "
        f"not for {type(c).__name__}"
    )


def _marginal(dist: MixtureDistribution, j: int) -> MixtureDistribution:
    """The mixture of the marginal distributions of target column ``j`` (scalar y)."""
    if len(dist.event_shape) == 0:
        return dist
    comps = dist.components
    if isinstance(comps, Distribution):
        return MixtureDistribution(dist.log_weights, _marginal_component(comps, j))
    return MixtureDistribution(dist.log_weights, [_marginal_component(c, j) for c in comps])


def marginal(dist: MixtureDistribution, target: int = 0) -> MixtureDistribution:
    """The predictive mixture of one target column (for vector y); scalar mixtures are returned as they are.

    Exact for Gaussian (``MultivariateNormal``, ``Independent(Normal)``) and
    Student-t components, and for nested mixtures of them; other families
    raise ``TypeError``.  ``target`` may count from the end (-1 is the last
    column).

    Shapes
    ------
    dist: batch (n,), event (d_y,) -> batch (n,), event ().

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import MultivariateNormal
    >>> cov = torch.tensor([[[[1.0, 0.5], [0.5, 4.0]]]])
    >>> mix = MixtureDistribution(torch.zeros(1, 1), MultivariateNormal(torch.zeros(1, 1, 2), cov))
    >>> marginal(mix, 1).variance
    tensor([4.])
    """
    if len(dist.event_shape) == 0:
        return dist
    n = dist.event_shape[0]
    if not (isinstance(target, numbers.Integral) and not isinstance(target, bool) and -n <= target < n):
        raise ValueError(f"target must be an integer index into the {n} target columns, got {target!r}")
    return _marginal(dist, int(target) % n)


def log_mean_exp(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(mean(exp(t)))`` along ``dim``, stably."""
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


class Binomial(_Binomial):
    """:class:`torch.distributions.Binomial` with a CDF; integer counts are accepted by ``log_prob``.

    ``log_prob`` is the exact log pmf (binomial coefficient included), ``-inf``
    outside ``0..total_count``; ``cdf`` is ``P(Y <= floor(y))``, the regularised
    incomplete beta function ``I_{1-p}(n - k, k + 1)`` (scipy; not
    differentiable), with ``1 - p`` computed from the logits so that it stays
    accurate when p is close to one.

    Shapes
    ------
    batch shape: that of ``total_count`` and ``logits`` / ``probs`` broadcast;
    ``cdf(value)``: ``value`` broadcast against the batch shape.

    Examples
    --------
    >>> import torch
    >>> d = Binomial(torch.tensor([4.0, 10.0]), logits=torch.zeros(2))
    >>> d.mean.tolist(), d.cdf(torch.tensor([2.0, 10.0])).tolist()
    ([2.0, 5.0], [0.6875, 1.0])
    """

    def log_prob(self, value):
        value = torch.as_tensor(value, device=self.logits.device).to(self.logits.dtype)
        n = self.total_count
        safe = torch.minimum(value.clamp_min(0), n)  # keeps the lgamma terms finite outside the support
        lp = (safe * self.logits - n * torch.nn.functional.softplus(self.logits)
              + torch.lgamma(n + 1) - torch.lgamma(safe + 1) - torch.lgamma(n - safe + 1))
        inside = (value >= 0) & (value <= n) & (value == torch.floor(value))
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        value = torch.as_tensor(value, device=self.logits.device).to(self.logits.dtype)
        k, n, logits = torch.broadcast_tensors(torch.floor(value).detach(), self.total_count.detach(), self.logits.detach())
        q = torch.sigmoid(-logits)  # 1 - p, accurate near p = 1
        inner = (k >= 0) & (k < n)
        kk = torch.where(inner, k, torch.zeros_like(k))
        nk = torch.where(inner, n - k, torch.ones_like(n))
        out = betainc(nk.cpu().numpy(), kk.cpu().numpy() + 1.0, q.cpu().numpy())
        out = torch.as_tensor(out, dtype=k.dtype, device=k.device)
        return torch.where(inner, out, (k >= n).to(k.dtype))


class PointMass(Distribution):
    """A degenerate distribution: y equals ``value`` with probability one.

    The component of a zero-inflated model (a point mass at zero mixed with a
    count distribution).  ``log_prob`` is 0 at ``value`` and ``-inf``
    elsewhere (never NaN), ``cdf`` the step ``1[y >= value]``, ``icdf`` and
    ``sample`` the value itself; mean ``value``, variance 0.  The support is
    the single integer ``value`` when every value is an integer (so a mixture
    whose first component is a point mass at 0 is discrete, as a
    zero-inflated count model is), else the real line.

    Parameters
    ----------
    value : Tensor
        The location, one per batch element.

    Shapes
    ------
    batch shape ``value.shape``, event shape ().

    Examples
    --------
    >>> import torch
    >>> d = PointMass(torch.zeros(3, dtype=torch.float64))
    >>> d.log_prob(torch.tensor([0.0, 1.0, 0.0])).tolist(), d.cdf(torch.tensor([-1.0, 0.0, 2.0])).tolist()
    ([0.0, -inf, 0.0], [0.0, 1.0, 1.0])
    >>> d.mean.tolist(), d.variance.tolist(), d.sample((2,)).shape
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], torch.Size([2, 3]))
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, value: torch.Tensor, validate_args=False):
        self.value = torch.as_tensor(value)
        super().__init__(batch_shape=self.value.shape, event_shape=torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return PointMass(self.value.expand(torch.Size(batch_shape)))

    @property
    def support(self):
        v = self.value
        if v.numel() and bool((v == torch.floor(v)).all()):
            return constraints.integer_interval(v, v)
        return constraints.real

    @property
    def mean(self) -> torch.Tensor:
        return self.value

    @property
    def mode(self) -> torch.Tensor:
        return self.value

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.value)

    def entropy(self) -> torch.Tensor:
        return torch.zeros_like(self.value)

    def _as_values(self, value) -> torch.Tensor:
        return torch.as_tensor(value, device=self.value.device).to(self.value.dtype)

    def log_prob(self, value) -> torch.Tensor:
        """0 where ``value`` equals the location, ``-inf`` elsewhere (NaN values included)."""
        value = self._as_values(value)
        hit = value == self.value
        return torch.where(hit, torch.zeros_like(hit, dtype=self.value.dtype),
                           torch.full_like(hit, -math.inf, dtype=self.value.dtype))

    def cdf(self, value) -> torch.Tensor:
        value = self._as_values(value)
        return (value >= self.value).to(self.value.dtype)

    def icdf(self, value) -> torch.Tensor:
        value = self._as_values(value)
        return self.value.expand(torch.broadcast_shapes(value.shape, self.value.shape)).clone()

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.value.expand(torch.Size(sample_shape) + self.batch_shape).clone()


# ------------------------------------------------- Gamma and negative binomial (GLM experts with a dispersion)
#: From this argument on, differences of lgamma are taken from their asymptotic (Stirling) series,
#: which keeps ``lgamma(r + y) - lgamma(r)`` accurate when r is large (a nearly Poisson negative binomial).
SERIES_MIN = 1e3


def inv_pow_diffs(z0: torch.Tensor, y: torch.Tensor, m_max: int) -> list[torch.Tensor]:
    """``(z0 + y)^-m - z0^-m`` for m = 1..m_max, without cancellation.

    With ``a = 1 / (z0 + y)`` and ``b = 1 / z0``: ``a^m - b^m = (a - b) S_m``,
    ``a - b = -y a b``, ``S_1 = 1``, ``S_{m+1} = a S_m + b^m`` (a few products
    per order, no powers).

    Shapes
    ------
    z0, y : broadcastable, z0 > 0, y >= 0; a list of m_max tensors of their broadcast shape.
    """
    a = 1.0 / (z0 + y)
    b = 1.0 / z0
    first = -y * a * b
    out, s, bm = [], torch.ones_like(first), torch.ones_like(first)
    for _ in range(m_max):
        out.append(first * s)
        bm = bm * b
        s = a * s + bm
    return out


def lgamma_ratio(y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``lgamma(r + y) - lgamma(r)``, accurate for large ``r`` too (differentiable).

    For ``r >= 1000`` the difference of Stirling's series is used
    (``(r - 1/2) log1p(y / r) + y log(r + y) - y`` plus the Bernoulli terms up
    to ``z^-7``), so that nothing cancels; below, ``torch.lgamma`` directly.

    Shapes
    ------
    y, r : broadcastable; y >= 0, r > 0.  Returns their broadcast shape.

    Examples
    --------
    >>> import torch
    >>> r = torch.tensor([2.0, 1e9], dtype=torch.float64)
    >>> y = torch.tensor([3.0, 2.0], dtype=torch.float64)
    >>> v = lgamma_ratio(y, r)
    >>> round(v[0].item(), 12), abs(v[1].item() - math.log(1e9 * (1e9 + 1))) < 1e-12
    (3.178053830348, True)
    """
    # each function of r alone is evaluated on r's own shape (one value per expert), not per row
    big = r >= SERIES_MIN
    if not bool(big.any()):
        return torch.lgamma(r + y) - torch.lgamma(r)
    rb = torch.where(big, r, torch.full_like(r, SERIES_MIN))
    d = inv_pow_diffs(rb, y, 7)
    series = (rb - 0.5) * torch.log1p(y / rb) + y * torch.log(rb + y) - y
    series = series + d[0] / 12 - d[2] / 360 + d[4] / 1260 - d[6] / 1680
    if bool(big.all()):
        return series
    rs = torch.where(big, torch.ones_like(r), r)
    return torch.where(big, series, torch.lgamma(rs + y) - torch.lgamma(rs))


class Gamma(torch.distributions.Gamma):
    """:class:`torch.distributions.Gamma` whose ``log_prob`` and ``cdf`` are defined on the whole real line.

    ``log_prob`` is ``-inf`` for ``y <= 0`` (never NaN; the support is
    ``y > 0``), ``cdf`` is 0 there.  A Gamma GLM expert with mean ``mu`` and
    shape ``nu`` is ``Gamma(concentration=nu, rate=nu / mu)``: variance
    ``mu^2 / nu``.

    Shapes
    ------
    batch shape: that of ``concentration`` and ``rate`` broadcast; ``value`` broadcast against it.

    Examples
    --------
    >>> import torch
    >>> d = Gamma(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]))
    >>> d.log_prob(torch.tensor([0.0, -1.0])).tolist(), d.cdf(torch.tensor([-1.0, 0.0])).tolist()
    ([-inf, -inf], [0.0, 0.0])
    >>> round(d.cdf(torch.tensor([1.0, 2.0]))[1].item(), 6)
    0.593994
    """

    def log_prob(self, value):
        value = torch.as_tensor(value, device=self.rate.device).to(self.rate.dtype)
        pos = value > 0
        lp = super().log_prob(torch.where(pos, value, torch.ones_like(value)))
        return torch.where(pos, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        value = torch.as_tensor(value, device=self.rate.device).to(self.rate.dtype)
        return torch.special.gammainc(self.concentration, self.rate * value.clamp_min(0))


def nb2_log_prob(value: torch.Tensor, total_count: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Negative-binomial log pmf in torch's parametrisation, accurate when ``total_count`` is large.

    ``lgamma_ratio(k, r) - lgamma(k + 1) - r softplus(logits) + k logsigmoid(logits)``
    (``r`` = total_count); ``-inf`` for negative ``k`` (never NaN).  With NB2's
    mean ``mu`` and dispersion ``alpha``: ``r = 1 / alpha``, ``logits = log(alpha mu)``.

    Shapes
    ------
    value, total_count, logits : broadcastable; returns their broadcast shape.
    """
    k = value.to(logits.dtype)
    kk = k.clamp_min(0)
    ratio = lgamma_ratio(kk, total_count)
    ratio = torch.where(kk == 0, torch.zeros_like(ratio), ratio)  # 0 also where total_count is 0
    softplus = torch.nn.functional.softplus(logits)
    lp = ratio - torch.lgamma(kk + 1) - total_count * softplus + kk * (logits - softplus)
    return torch.where(k < 0, torch.full_like(lp, -math.inf), lp)


class NegativeBinomial(torch.distributions.NegativeBinomial):
    """:class:`torch.distributions.NegativeBinomial` with an accurate ``log_prob`` and a CDF.

    Torch's parametrisation: ``total_count`` r and the log-odds ``logits`` of
    "success"; mean ``r exp(logits)``, variance ``mean / sigmoid(-logits)``.
    An NB2 regression with mean ``mu`` and dispersion ``alpha`` (variance
    ``mu + alpha mu^2``) is ``NegativeBinomial(1 / alpha, logits=log(alpha mu))``.
    ``log_prob`` is :func:`nb2_log_prob` (accurate as r grows, where the
    distribution tends to the Poisson; ``-inf`` for negative values);
    ``cdf(k) = P(Y <= floor(k)) = I_{1-p}(r, floor(k) + 1)``, the regularised
    incomplete beta function (scipy; not differentiable), with ``1 - p =
    sigmoid(-logits)``.

    Shapes
    ------
    batch shape: that of ``total_count`` and ``logits`` broadcast; ``value`` broadcast against it.

    Examples
    --------
    >>> import torch
    >>> mu, alpha = torch.tensor([3.0], dtype=torch.float64), 0.5
    >>> d = NegativeBinomial(torch.tensor([1 / alpha], dtype=torch.float64), logits=(alpha * mu).log())
    >>> [round(v, 12) for v in (d.mean.item(), d.variance.item())]
    [3.0, 7.5]
    >>> ks = torch.arange(0.0, 4.0, dtype=torch.float64)
    >>> bool(torch.isclose(d.log_prob(ks[:, None]).exp().sum(), d.cdf(torch.tensor([3.0], dtype=torch.float64))[0]))
    True
    """

    def log_prob(self, value):
        value = torch.as_tensor(value, device=self.logits.device)
        return nb2_log_prob(value, self.total_count, self.logits)

    def cdf(self, value):
        value = torch.as_tensor(value, device=self.logits.device).to(self.logits.dtype)
        k, r, u = torch.broadcast_tensors(torch.floor(value).detach(), self.total_count.detach(), self.logits.detach())
        inside = k >= 0
        kk = torch.where(inside, k, torch.zeros_like(k))
        out = betainc(r.cpu().numpy(), kk.cpu().numpy() + 1.0, torch.sigmoid(-u).cpu().numpy())
        out = torch.as_tensor(out, dtype=k.dtype, device=k.device)
        return torch.where(inside, out, torch.zeros_like(out))
