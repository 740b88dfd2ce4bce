"""Censored Gaussian (Tobit) experts: a linear-Gaussian latent y observed exactly, below, above or within limits.

Each row of y is ``[y, lower, upper]`` (±inf for no limit):

* ``lower < y < upper``: y observed exactly (the Gaussian log-density);
* ``y == lower`` (finite): left-censored, the latent is at most ``lower``: ``log Phi((lower - mu) / sigma)``;
* ``y == upper`` (finite): right-censored, the latent is at least ``upper``: ``log Phi((mu - upper) / sigma)``;
* ``y`` NaN: interval-censored, the latent lies in ``(lower, upper)``:
  ``log(Phi(b) - Phi(a))`` with ``a, b = (lower - mu) / sigma, (upper - mu) / sigma``
  (one limit may be infinite: NaN with ``lower`` finite and ``upper = inf`` is censored above ``lower``).

The weighted M-step is the EM of the censored-data model: the statistics hold
the truncated-normal moments ``E[y*]``, ``E[y*^2]`` of every censored row at
the current parameters, then weighted least squares gives the coefficients and
the expected residual sum of squares the variance.  Each such step never lowers
the observed (censored) log-likelihood.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from .._linalg import add_intercept, affine, chunk_rows, solve_spd, weighted_grams
from ..stats import SuffStats
from .base import Expert

__all__ = ["CensoredGaussianExpert", "LatentNormal", "censored_log_prob", "check_censored_y", "point_values"]

#: Most SQUAREM cycles (of three EM steps) of ``fit_weighted`` (a weighted fit of its own, or the initial fit);
#: it stops earlier once converged.  Inside EM of a mixture the M-step takes ``max_m_steps`` plain EM steps.
FIT_CYCLES = 300

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_LN2 = math.log(2.0)


# ------------------------------------------------------------------------ y
def _rows(mask: torch.Tensor, limit: int = 5) -> str:
    idx = torch.nonzero(mask.reshape(-1)).reshape(-1)[:limit].tolist()
    more = ", ..." if int(mask.sum()) > limit else ""
    return f"{idx}{more}"


def check_censored_y(y: torch.Tensor, n: int) -> torch.Tensor:
    """y as an (n, 3) tensor ``[y, lower, upper]``, checked; a 1-D y (nothing censored) gains infinite limits.

    Raises
    ------
    ValueError
        Wrong shape; a NaN limit; ``lower >= upper``; an infinite y; y outside ``[lower, upper]``; NaN y
        with no finite limit; NaN in a 1-D y.

    Shapes
    ------
    y : (n,), (n, 1) or (n, 3) -> (n, 3).

    Examples
    --------
    >>> check_censored_y(torch.tensor([0.5, 1.0]), 2).tolist()
    [[0.5, -inf, inf], [1.0, -inf, inf]]
    >>> check_censored_y(torch.tensor([[2.0, 0.0, 1.0]]), 1)
    Traceback (most recent call last):
    ...
    ValueError: the censoring limits must bracket y (lower <= y <= upper), got y=2.0 with lower=0.0, upper=1.0 in rows [0]; a left-censored row holds y == lower, a right-censored row y == upper, an interval-censored row y = NaN
    """
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() == 1:
        if y.shape[0] != n:
            raise ValueError(f"y must have {n} rows (one per row of x), got shape {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            bad = ~torch.isfinite(y)
            raise ValueError(
                f"y holds NaN or infinite values (rows {_rows(bad)}); a censored row needs its limits: pass y as "
                "(n, 3) columns [y, lower, upper] (y NaN for an interval-censored row, ±inf for no limit)"
            )
        inf = torch.full_like(y, math.inf)
        return torch.stack([y, -inf, inf], 1)
    if y.dim() != 2 or y.shape != (n, 3):
        raise ValueError(
            f"y must have shape ({n},) (nothing censored) or ({n}, 3) with columns [y, lower, upper], "
            f"got {tuple(y.shape)}"
        )
    yv, lo, hi = y[:, 0], y[:, 1], y[:, 2]
    if bool(lo.isnan().any() | hi.isnan().any()):
        raise ValueError(
            f"the censoring limits lower/upper (columns 1 and 2 of y) hold NaN in rows {_rows(lo.isnan() | hi.isnan())}; "
            "use -inf (no lower limit) or inf (no upper limit)"
        )
    bad = lo >= hi
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"lower must be < upper in every row, got lower={float(lo[i])!r} >= upper={float(hi[i])!r} in rows "
            f"{_rows(bad)}; swap or correct the limits (an exact observation needs no limits: -inf, inf)"
        )
    if bool(yv.isinf().any()):
        raise ValueError(
            f"y holds infinite values in rows {_rows(yv.isinf())}; a censored row holds y equal to its limit "
            "(or NaN for an interval), with the limit in lower/upper"
        )
    outside = (yv < lo) | (yv > hi)
    if bool(outside.any()):
        i = int(torch.nonzero(outside)[0])
        raise ValueError(
            f"the censoring limits must bracket y (lower <= y <= upper), got y={float(yv[i])!r} with "
            f"lower={float(lo[i])!r}, upper={float(hi[i])!r} in rows {_rows(outside)}; a left-censored row holds "
            "y == lower, a right-censored row y == upper, an interval-censored row y = NaN"
        )
    loose = yv.isnan() & lo.isinf() & hi.isinf()
    if bool(loose.any()):
        raise ValueError(
            f"y is NaN with no finite limit in rows {_rows(loose)}: an interval-censored row needs a finite lower "
            "or upper limit; drop rows whose y is unknown"
        )
    return y


class _Rows:
    """Row indices of each kind of observation, and the limits of the censored ones.

    ``exact`` rows observed exactly (values ``y``); ``below`` rows with only an upper limit ``u`` (left-censored,
    or NaN below ``upper``); ``above`` rows with only a lower limit ``l`` (right-censored, or NaN above
    ``lower``); ``between`` rows with both limits ``(bl, bu)`` (interval-censored).
    """

    __slots__ = ("n", "exact", "y", "below", "u", "above", "l", "between", "bl", "bu", "order")

    def __init__(self, y3: torch.Tensor):
        yv, lo, hi = y3[:, 0], y3[:, 1], y3[:, 2]
        nan = yv.isnan()
        left = ~nan & (yv == lo)
        right = ~nan & (yv == hi)
        exact = ~nan & ~left & ~right
        below = left | (nan & lo.isinf())
        above = right | (nan & hi.isinf())
        between = nan & ~lo.isinf() & ~hi.isinf()
        self.n = y3.shape[0]
        idx = [torch.nonzero(m).reshape(-1) for m in (exact, below, above, between)]
        self.exact, self.below, self.above, self.between = idx
        self.y = yv[self.exact]
        self.u = torch.where(left, lo, hi)[self.below]  # a left-censored row's limit is lower (y == lower)
        self.l = torch.where(right, hi, lo)[self.above]  # a right-censored row's limit is upper (y == upper)
        self.bl, self.bu = lo[self.between], hi[self.between]
        self.order = torch.cat(idx)  # parts are concatenated in this order, then put back in row order

    def scatter(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The four parts (exact, below, above, between), each (rows, K), as one (n, K) tensor in row order."""
        vals = torch.cat(parts, 0)
        return vals.new_zeros((self.n,) + vals.shape[1:]).index_copy(0, self.order, vals)


def point_values(y: torch.Tensor) -> torch.Tensor:
    """One finite value per row of censored y, for starts and plots: y itself, or the midpoint of an interval.

    A censored row's y is its limit already; an interval row (NaN y) gets the midpoint of its limits, or its
    finite limit when the other is infinite.  Not an estimate of the latent: only a place to start from.

    Shapes
    ------
    y : (n, 3) ``[y, lower, upper]`` checked by :func:`check_censored_y`, or (n,) -> (n,).

    Examples
    --------
    >>> inf = float("inf")
    >>> y = torch.tensor([[1.0, -inf, inf], [0.0, 0.0, inf], [float("nan"), 2.0, 3.0], [float("nan"), 4.0, inf]])
    >>> point_values(y).tolist()
    [1.0, 0.0, 2.5, 4.0]
    """
    if y.dim() == 1:
        return y
    yv, lo, hi = y[:, 0], y[:, 1], y[:, 2]
    lo_f = torch.where(lo.isinf(), hi, lo)
    hi_f = torch.where(hi.isinf(), lo, hi)
    return torch.where(yv.isnan(), 0.5 * (lo_f + hi_f), yv)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(d))`` for ``d < 0``, stable at both ends (each branch on safe inputs: no NaN gradient)."""
    near = d > -_LN2
    d1 = torch.where(near, d, torch.full_like(d, -1.0))
    d2 = torch.where(near, torch.full_like(d, -1.0), d)
    return torch.where(near, torch.log(-torch.expm1(d1)), torch.log1p(-torch.exp(d2)))


def _log_prob_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(Phi(b) - Phi(a))`` for finite ``a < b``, stable everywhere.

    Both in the lower tail: ``log Phi(b) + log(1 - Phi(a) / Phi(b))`` from ``log_ndtr``; both in the upper
    tail: the same mirrored; straddling zero: ``P = (erf(b / sqrt 2) + erf(-a / sqrt 2)) / 2`` or, where P
    is above 1/2, ``log1p(-(Phi(a) + Phi(-b)))`` (sums of positive terms, no cancellation).  Every branch
    is evaluated on inputs that are safe for it, so neither the value nor the gradient of an unused branch
    is NaN.
    """
    one = torch.ones_like(a)
    lower_tail = b <= 0
    upper_tail = a >= 0
    middle = ~lower_tail & ~upper_tail
    tiny = torch.finfo(a.dtype).tiny
    al, bl = torch.where(lower_tail, a, -2 * one), torch.where(lower_tail, b, -one)
    lb = torch.special.log_ndtr(bl)
    low = lb + _log1mexp((torch.special.log_ndtr(al) - lb).clamp_max(-tiny))
    au, bu = torch.where(upper_tail, a, one), torch.where(upper_tail, b, 2 * one)
    la = torch.special.log_ndtr(-au)
    up = la + _log1mexp((torch.special.log_ndtr(-bu) - la).clamp_max(-tiny))
    am, bm = torch.where(middle, a, -one), torch.where(middle, b, one)
    p_mid = 0.5 * (torch.erf(bm / math.sqrt(2)) + torch.erf(-am / math.sqrt(2)))
    q_mid = 0.5 * (torch.erfc(-am / math.sqrt(2)) + torch.erfc(bm / math.sqrt(2)))
    small = q_mid >= 0.5
    half = torch.full_like(a, 0.5)
    mid = torch.where(small, torch.log(torch.where(small, p_mid, half)), torch.log1p(-torch.where(small, half, q_mid)))
    return torch.where(lower_tail, low, torch.where(upper_tail, up, mid))


def _z(limit: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``(limit - loc) / scale`` on the given rows: (rows, K)."""
    return (limit[:, None] - loc[rows]) / scale[rows]


def _log_prob_parts(r: _Rows, loc: torch.Tensor, scale: torch.Tensor):
    """The log-likelihood of each kind of row, and the standardised limits: (z, b, a, (a2, b2))."""
    z = _z(r.y, loc, scale, r.exact)
    b = _z(r.u, loc, scale, r.below)
    a = _z(r.l, loc, scale, r.above)
    a2, b2 = _z(r.bl, loc, scale, r.between), _z(r.bu, loc, scale, r.between)
    parts = [
        -0.5 * z * z - torch.log(scale[r.exact]) - _LOG_SQRT_2PI,
        torch.special.log_ndtr(b),  # P(z < b)
        torch.special.log_ndtr(-a),  # P(z > a)
        _log_prob_between(a2, b2),
    ]
    return parts, (z, b, a, a2, b2)


def censored_log_prob(y3: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The censored-Gaussian log-likelihood of each row under each latent ``N(loc, scale^2)``.

    Each kind of row is computed on its own rows only (exact: the log-density; one limit: ``log_ndtr``;
    two limits: :func:`_log_prob_between`), so no infinite limit or NaN y ever enters a computation and
    the gradients are never NaN.

    Parameters
    ----------
    y3 : Tensor (n, 3)
        ``[y, lower, upper]`` rows, already checked by :func:`check_censored_y`.
    loc : Tensor (n, K)
    scale : Tensor (K,) or (n, K)

    Returns
    -------
    Tensor (n, K)
        Finite wherever the probabilities are representable.

    Shapes
    ------
    y3 (n, 3); loc (n, K); scale (K,) or (n, K) -> (n, K).

    Examples
    --------
    >>> inf = float("inf")
    >>> y3 = torch.tensor([[0.0, 0.0, inf], [float("nan"), -1.0, 1.0]], dtype=torch.float64)
    >>> lp = censored_log_prob(y3, torch.zeros(2, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    >>> [round(v, 6) for v in lp[:, 0].exp().tolist()]  # P(y* <= 0), P(-1 < y* < 1)
    [0.5, 0.682689]
    """
    r = _Rows(y3)
    parts, _ = _log_prob_parts(r, loc, scale.expand_as(loc))
    return r.scatter(parts)


def _ratio(log_num: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_num - logp)


@torch.no_grad()
def _latent_moments(y3: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
    """Each row's log-likelihood and the latent's ``E[y*]`` and ``Var[y*]`` given the row (truncated-normal moments).

    Exact rows: (y, 0).  Censored rows with z-limits (a, b) and ``P = Phi(b) - Phi(a)``:
    ``E[z] = (phi(a) - phi(b)) / P``, ``E[z^2] = 1 + (a phi(a) - b phi(b)) / P``; the density ratios
    (inverse Mills ratios) are taken in log space, and ``phi(a) - phi(b)`` of a two-sided interval as
    ``phi(near) (1 - exp(-d))`` with ``d = (far^2 - near^2) / 2 >= 0`` (no cancellation for narrow
    intervals).  ``Var[z]`` is clipped to [0, 1] (a truncated normal is never wider than the normal).

    Shapes
    ------
    y3 (n, 3); loc (n, K); scale (K,) -> three (n, K) tensors.
    """
    r = _Rows(y3)
    s = scale.expand_as(loc)
    parts, (z, b, a, a2, b2) = _log_prob_parts(r, loc, s)
    _, lp_b, lp_a, lp_2 = parts
    # one limit above: E[z] = -phi(b)/Phi(b), E[z^2] = 1 - b phi(b)/Phi(b); below: mirrored
    rb = _ratio(-0.5 * b * b - _LOG_SQRT_2PI, lp_b)
    ra = _ratio(-0.5 * a * a - _LOG_SQRT_2PI, lp_a)
    ez_b, ez2_b = -rb, 1.0 - b * rb
    ez_a, ez2_a = ra, 1.0 + a * ra
    # two limits
    a_near = a2.abs() <= b2.abs()
    near = torch.where(a_near, a2, b2)
    d = (torch.maximum(a2.abs(), b2.abs()) - near.abs()) * (a2.abs() + b2.abs()) * 0.5
    diff = _ratio(-0.5 * near * near - _LOG_SQRT_2PI + _log1mexp((-d).clamp_max(-torch.finfo(d.dtype).tiny)), lp_2)
    ez_2 = torch.where(a_near, diff, -diff)
    ez2_2 = 1.0 + a2 * _ratio(-0.5 * a2 * a2 - _LOG_SQRT_2PI, lp_2) - b2 * _ratio(-0.5 * b2 * b2 - _LOG_SQRT_2PI, lp_2)
    ez = torch.cat([ez_b, ez_a, ez_2], 0)
    vz = (torch.cat([ez2_b, ez2_a, ez2_2], 0) - ez * ez).clamp(0.0, 1.0)
    cens = torch.cat([r.below, r.above, r.between])
    sc, lc = s[cens], loc[cens]
    mean = r.scatter([r.y[:, None].expand(-1, loc.shape[1]), lc + sc * ez])
    var = r.scatter([torch.zeros_like(z), sc * sc * vz])
    return r.scatter(parts), mean, var


# ------------------------------------------------------------ distribution
class LatentNormal(Normal):
    """The latent Normal of a censored-Gaussian expert; its ``log_prob`` also reads ``[y, lower, upper]`` rows.

    A value whose last axis has length 3 and whose other axes match the batch shape (the first axis equal,
    the rest broadcastable) is read as censored observations ``[y, lower, upper]`` and scored by
    :func:`censored_log_prob`; any other value is scored as by :class:`torch.distributions.Normal` (the
    latent's density, as predictions use it).

    Shapes
    ------
    batch (n,) or (n, K); log_prob: a value of the batch shape (or sampled / broadcast against it) ->
    the broadcast shape; censored rows (n, 3) or (n, 1, 3) -> the batch shape.

    Examples
    --------
    >>> import torch
    >>> d = LatentNormal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    >>> rows = torch.tensor([[0.0, float("-inf"), float("inf")], [0.0, 0.0, float("inf")]], dtype=torch.float64)
    >>> [round(v, 6) for v in d.log_prob(rows).tolist()]  # exact at 0; left-censored at 0: log(1/2)
    [-0.918939, -0.693147]
    """

    def _is_censored(self, value: torch.Tensor) -> bool:
        bs = tuple(self.batch_shape)
        if value.dim() != len(bs) + 1 or value.shape[-1] != 3 or not bs or value.shape[0] != bs[0]:
            return False
        try:
            return torch.broadcast_shapes(tuple(value.shape[:-1]), bs) == bs
        except RuntimeError:
            return False

    def log_prob(self, value):
        if not self._is_censored(value):
            return super().log_prob(value)
        y3 = check_censored_y(value.reshape(value.shape[0], -1, 3)[:, 0].to(self.loc.dtype), value.shape[0])
        loc = self.loc.reshape(self.loc.shape[0], -1)
        scale = self.scale.reshape(self.scale.shape[0], -1)
        return censored_log_prob(y3, loc, scale).reshape(self.batch_shape)


# ------------------------------------------------------------------ expert
class CensoredGaussianExpert(Expert):
    """Linear regression with Gaussian noise observed under censoring (Tobit): ``y* | x ~ N(beta^T [1, x], sigma^2)``.

    y is either (n,), every row observed exactly (then exactly
    :class:`~moekit.experts.gaussian.LinearGaussianExpert`'s likelihood), or
    (n, 3) columns ``[y, lower, upper]`` with ±inf for no limit:

    * ``lower < y < upper``: observed exactly;
    * ``y == lower``: left-censored at ``lower`` (the latent is at most ``lower``);
    * ``y == upper``: right-censored at ``upper`` (the latent is at least ``upper``);
    * ``y`` NaN: interval-censored, the latent lies between ``lower`` and ``upper`` (at least one finite).

    The limits must bracket y (``lower <= y <= upper``, ``lower < upper``):
    anything else is a ``ValueError`` naming the rows and the fix.  Predictions
    (``forward``) are of the latent y*.

    The M-step is EM for the censored-data model: statistics at the current
    parameters hold each row's truncated-normal moments ``E[y*]`` and
    ``Var[y*]`` (exact rows: y and 0), then exact weighted least squares gives
    beta and the expected residual sum of squares sigma^2 (floored at
    ``var_floor``).  Each step never lowers the weighted censored
    log-likelihood (and :func:`~moekit._mstep.maximize` checks it); with no
    censored row one step is the exact least-squares solution.

    Parameters
    ----------
    n_features : int
        Number of feature columns d_x.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    var_floor : float
        Lower bound on sigma^2, in y's units squared.
    dtype : torch.dtype
        Parameter dtype.
    offset : bool
        Whether x carries one more column, last, holding a known offset added to the latent mean
        (coefficient fixed at one).
    max_m_steps : int
        EM steps per M-step inside a mixture's EM (default 5; each is a pass over the expert's weighted
        data, stopping early once converged); ``fit_weighted`` on its own (and the initial fit) iterates
        to convergence, EM accelerated by SQUAREM (at most ``FIT_CYCLES`` = 300 cycles of three steps).

    Attributes
    ----------
    coef : Parameter (K, d_x + 1)
        Intercept first, then one coefficient per feature.
    log_scale : Parameter (K,)
        ``log sigma`` (sigma is floored at ``sqrt(var_floor)``).

    Shapes
    ------
    x : (n, d_x) or (n, d_x + 1) with ``offset``; y : (n,) or (n, 3).
    ``forward(x)``: a :class:`LatentNormal` with batch shape (n,) [single] or (n, K) [stacked];
    ``log_prob(x, y)``: (n,) or (n, K).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4000, 1, generator=g, dtype=torch.float64)
    >>> latent = 1.0 + 2.0 * x[:, 0] + 0.5 * torch.randn(4000, generator=g, dtype=torch.float64)
    >>> lower = torch.full_like(latent, 1.5)  # a detection limit: values below 1.5 read as 1.5
    >>> y = torch.stack([latent.clamp_min(1.5), lower, torch.full_like(latent, float("inf"))], 1)
    >>> e = CensoredGaussianExpert(n_features=1).fit_weighted(x, y)
    >>> [round(v, 1) for v in e.coef[0].tolist()], round(float(e.scale()[0]), 1)
    ([1.0, 2.0], 0.5)
    >>> e(x[:3]).batch_shape
    torch.Size([3])
    """

    m_step_exact = False

    def __init__(
        self,
        n_features: int,
        n_experts: int | None = None,
        var_floor: float = 1e-6,
        dtype: torch.dtype = torch.float64,
        offset: bool = False,
        max_m_steps: int = 5,
    ):
        super().__init__(n_experts)
        if not (isinstance(n_features, int) and n_features >= 0):
            raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
        if not (isinstance(var_floor, (int, float)) and math.isfinite(var_floor) and var_floor > 0):
            raise ValueError(f"var_floor must be a finite number > 0, got {var_floor!r}")
        if not isinstance(offset, bool):
            raise TypeError(f"offset must be True or False, got {offset!r}")
        if not (isinstance(max_m_steps, int) and max_m_steps >= 1):
            raise ValueError(f"max_m_steps must be a positive int, got {max_m_steps!r}")
        self.n_features = n_features
        self.var_floor = float(var_floor)
        self.offset = offset
        self.max_m_steps = max_m_steps
        self.coef = nn.Parameter(torch.zeros(self._k, n_features + 1, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(self._k, dtype=dtype))

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_experts={self.n_experts}, offset={self.offset}"

    # ----------------------------------------------------------- parameters
    def input_slopes(self) -> torch.Tensor:
        """The coefficients of the features: ``coef[:, 1:]`` (the intercept comes first; the offset has none)."""
        return self.coef.data[:, 1:]

    def scale(self) -> torch.Tensor:
        """sigma of each expert, floored at ``sqrt(var_floor)``: (K,)."""
        return self.log_scale.exp().clamp_min(math.sqrt(self.var_floor))

    def n_parameters(self) -> int:
        return self.n_features + 2

    # --------------------------------------------------------------- inputs
    def _prepare_x(self, x: torch.Tensor) -> torch.Tensor:
        width = self.n_features + int(self.offset)
        if x.dim() != 2 or x.shape[1] != width:
            more = f" ({self.n_features} features, then the offset)" if self.offset else ""
            raise ValueError(f"x must have shape (n, {width}){more} for this expert, got {tuple(x.shape)}")
        return x.to(dtype=self.coef.dtype, device=self.coef.device)

    def _prepare_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.coef.device)
        if not y.is_floating_point():
            y = y.to(self.coef.dtype)
        return check_censored_y(y.to(dtype=self.coef.dtype, device=self.coef.device), n)

    def _loc(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Latent means (offset included) for prepared x: (n, K)."""
        d = self.n_features
        loc = affine(x[:, :d], coef)
        if self.offset:
            loc = loc + x[:, d, None]
        return loc

    # ----------------------------------------------------------- likelihood
    def forward(self, x: torch.Tensor) -> LatentNormal:
        xx = self._prepare_x(x)
        loc = self._loc(xx, self.coef)
        scale = self.scale().expand_as(loc)
        return LatentNormal(self._out(loc), self._out(scale), validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The censored log-likelihood of each row: (n,) single or (n, K) stacked."""
        xx = self._prepare_x(x)
        y3 = self._prepare_y(y, xx.shape[0])
        return self._out(censored_log_prob(y3, self._loc(xx, self.coef), self.scale()))

    # --------------------------------------------------------------- M-step
    def _chunks(self, x, y, weight):
        xx = self._prepare_x(x)
        y3 = self._prepare_y(y, xx.shape[0])
        w = self._weight_nk(weight, xx.shape[0], xx)
        rows = chunk_rows(self._k * (self.n_features + 4))
        n = xx.shape[0]
        for i in range(0, max(n, 1), rows):
            yield xx[i : i + rows], y3[i : i + rows], w[i : i + rows]

    @staticmethod
    def _weighted_sum(w: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        return torch.where(w > 0, w * lp, torch.zeros_like(lp)).sum()  # a zero weight never meets -inf

    @torch.no_grad()
    def weighted_log_likelihood(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted censored log-likelihood ``sum_ik w_ik log p_k(y_i | x_i)`` (a scalar), the M-step's objective.

        (Not named ``objective``: the EM driver would then evaluate it at every trial point besides the
        statistics; an EM step never needs halving, so one pass of :meth:`suff_stats` per step is cheaper.)
        """
        coef, scale = self.coef.detach(), self.scale().detach()
        return sum(
            self._weighted_sum(w, censored_log_prob(y3, self._loc(xx, coef), scale)) for xx, y3, w in self._chunks(x, y, weight)
        )

    @torch.no_grad()
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """EM statistics at the current parameters (additive over rows).

        With ``t = E[y* | row] - offset`` and ``v = Var[y* | row]`` (exact rows: ``y - offset`` and 0):
        ``sw`` (K,) total weights, ``xwx`` (K, p, p) ``sum w x x^T``, ``xwy`` (K, p) ``sum w x t``,
        ``ywy`` (K,) ``sum w (t^2 + v)`` and ``objective`` () the weighted censored log-likelihood.

        Shapes
        ------
        x : (n, d_x [+ 1]); y : (n,) or (n, 3); weight : (n,) single or (n, K) stacked.
        """
        coef, scale = self.coef.detach(), self.scale().detach()
        d = self.n_features
        out = []
        for xx, y3, w in self._chunks(x, y, weight):
            loc = self._loc(xx, coef)
            logp, mean, var = _latent_moments(y3, loc, scale)
            t = mean - xx[:, d, None] if self.offset else mean
            xd = add_intercept(xx[:, :d])
            out.append(
                SuffStats(
                    sw=w.sum(0),
                    xwx=weighted_grams(xd, w),
                    xwy=(w * t).T.contiguous() @ xd,
                    ywy=(w * (t * t + var)).sum(0),
                    objective=self._weighted_sum(w, logp),
                )
            )
        return sum(out)

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One EM step: weighted least squares on the expected latents, then the expected residual variance.

        Experts with no weight are left as they are.
        """
        sw = stats["sw"]
        keep = sw > 1e-12 * sw.sum().clamp_min(torch.finfo(sw.dtype).tiny)
        if not bool(keep.any()):
            return
        xwy = stats["xwy"]
        beta = solve_spd(stats["xwx"], xwy[..., None])[..., 0]  # (K, p)
        rss = stats["ywy"] - (xwy * beta).sum(-1)  # the expected residual sum of squares at the new beta
        var = (rss / sw.clamp_min(torch.finfo(sw.dtype).tiny)).clamp_min(self.var_floor)
        keep = keep & torch.isfinite(beta).all(-1) & torch.isfinite(var)
        self.coef.data[keep] = beta[keep].to(self.coef.dtype)
        self.log_scale.data[keep] = 0.5 * var[keep].log().to(self.coef.dtype)

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Weighted fit to convergence: EM accelerated by SQUAREM; never lowers ``sum_ik w_ik log p_k(y_i | x_i)``.

        Plain EM converges slowly when most rows are censored (about 900 steps at 90 %); SQUAREM
        (Varadhan & Roland 2008) extrapolates along two EM steps and keeps the extrapolated point only where
        one EM step from it beats the plain steps, so every cycle still raises the objective.  At most
        ``FIT_CYCLES`` cycles of three EM steps.

        Shapes
        ------
        x : (n, d_x [+ 1]); y : (n,) or (n, 3); weight : (n,) single or (n, K) stacked.
        """
        xx = self._prepare_x(x)
        y3 = self._prepare_y(y, xx.shape[0])
        w = self._weight_nk(weight, xx.shape[0], xx)
        self._squarem(lambda: self.suff_stats(xx, y3, w), lambda: float(self.weighted_log_likelihood(xx, y3, w)))
        return self

    @torch.no_grad()
    def _squarem(self, stats_fn, objective_fn, cycles: int | None = None) -> None:
        """SQUAREM-accelerated EM (scheme S3, step length at least one), monotone by a check at every cycle."""
        coef, log_scale = self.coef.data, self.log_scale.data
        nc = coef.numel()

        def get():
            return torch.cat([coef.reshape(-1), log_scale.reshape(-1)])

        def put(v):
            coef.copy_(v[:nc].reshape(coef.shape))
            log_scale.copy_(v[nc:].reshape(log_scale.shape))

        def em() -> float:  # one EM step; the objective before it
            stats = stats_fn()
            self.m_step(stats)
            return float(stats["objective"])

        for _ in range(FIT_CYCLES if cycles is None else cycles):
            t0 = get()
            f0 = em()
            t1 = get()
            f1 = em()
            t2 = get()
            f2 = objective_fn()
            if not f2 >= f1 - 1e-12 * (1 + abs(f1)):  # rounding only: EM never lowers the objective
                put(t1)
                break
            best, f_best = t2, f2
            r, v = t1 - t0, t2 - 2 * t1 + t0
            nr, nv = float(r.norm()), float(v.norm())
            if nv > 0 and math.isfinite(nr) and math.isfinite(nv):
                alpha = -max(1.0, nr / nv)
                put(t0 - 2 * alpha * r + alpha * alpha * v)
                f_ext = em()
                f3 = objective_fn()
                if math.isfinite(f_ext) and f3 == f3 and f3 > f2:
                    best, f_best = get(), f3
            put(best)
            still = float((best - t0).abs().max()) <= 1e-13 * (1.0 + float(t0.abs().max()))
            if still or not f_best > f0:  # converged: the parameters stay, or the objective no longer rises
                break

    @torch.no_grad()
    def init_from_responsibilities(self, x, y, weight):
        """Initial fit: least squares with each censored row at its limit (an interval at its midpoint), then EM.

        Shapes
        ------
        x : (n, d_x [+ 1]); y : (n,) or (n, 3); weight : (n,) single or (n, K) stacked.
        """
        xx = self._prepare_x(x)
        y3 = self._prepare_y(y, xx.shape[0])
        w = self._weight_nk(weight, xx.shape[0], xx)
        filled = point_values(y3)
        inf = torch.full_like(filled, math.inf)
        self.coef.data.zero_()
        self.log_scale.data.zero_()
        self.m_step(self.suff_stats(xx, torch.stack([filled, -inf, inf], 1), w))
        return self.fit_weighted(xx, y3, w)
