"""Intervals of scalar y under a conditional mixture.

* :func:`hdr` - the highest-density region, a union of intervals when
  p(y | x) is multimodal (the shortest set with the requested coverage).
* :func:`central_interval` - the equal-tailed interval.
* :func:`in_intervals` and :func:`interval_length` - to use either.

Both interval functions return the layout (n, J, 2) ``[lower, upper]`` with
NaN padding.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.distributions import Independent

from ..distributions import check_scalar, flatten_leaves
from .modes import check_continuous

__all__ = ["central_interval", "hdr", "in_intervals", "interval_length"]


def _check_level(level) -> float:
    if not (isinstance(level, numbers.Real) and 0 < float(level) < 1):
        raise ValueError(f"level must be a probability strictly between 0 and 1 (e.g. 0.9), got {level!r}")
    return float(level)


def central_interval(mix, level: float = 0.9) -> torch.Tensor:
    """Central (equal-tailed) interval of scalar y: ``[F^{-1}((1-a)/2), F^{-1}((1+a)/2)]``.

    Parameters
    ----------
    mix : MixtureDistribution
        Batch (n,), scalar y (components with an inverse CDF).
    level : float, default=0.9
        Probability mass ``a`` of the interval, strictly between 0 and 1.

    Returns
    -------
    Tensor (n, 1, 2)
        One interval per row, in the layout of :func:`hdr` (J = 1).

    Shapes
    ------
    mix: batch (n,), event shape (); returns (n, 1, 2) ``[lower, upper]``.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> m = MixtureDistribution(torch.zeros(1, 1), Normal(torch.zeros(1, 1), torch.ones(1, 1)))
    >>> central_interval(m, 0.95).round(decimals=3)
    tensor([[[-1.9600,  1.9600]]])
    """
    level = _check_level(level)
    check_scalar(mix, "central_interval")
    lo = mix.icdf((1 - level) / 2)
    hi = mix.icdf((1 + level) / 2)
    return torch.stack([lo, hi], -1)[:, None, :]


def _component_grid(mix, per_component: int, width: float) -> torch.Tensor | None:
    """Points mu_k + s_k * linspace(-width, width) for every component: (n, K * G) or None."""
    try:
        leaves = flatten_leaves(mix)
        mu = torch.cat([g.attr("mean") for g in leaves], dim=1)
        sd = torch.cat([g.attr("stddev") for g in leaves], dim=1)
        lw = torch.cat([g.log_weights for g in leaves], dim=1)
    except (NotImplementedError, AttributeError):
        return None
    for _, d, _ in leaves:  # heavy tails: use the scale, the grid of the mixture covers the rest
        base = d.base_dist if isinstance(d, Independent) else d
        if hasattr(base, "df") and hasattr(base, "scale"):
            return None
    ok = torch.isfinite(mu) & torch.isfinite(sd) & (sd > 0) & torch.isfinite(lw)
    z = torch.linspace(-width, width, per_component, dtype=mu.dtype, device=mu.device)
    pts = mu[..., None] + sd[..., None] * z  # (n, K, G)
    # invalid components: repeat the first valid mean (harmless duplicates)
    fill = torch.where(ok, mu, torch.full_like(mu, math.nan)).nan_to_num(nan=0.0)
    pts = torch.where(ok[..., None], pts, fill.amax(1, keepdim=True)[..., None].expand_as(pts))
    return pts.reshape(mu.shape[0], -1)


def _on_grid(fn, grid: torch.Tensor, chunk_cols: int = 4096) -> torch.Tensor:
    """``fn`` (a mixture's ``log_prob`` or ``cdf``, taking (m, n)) at per-row points grid (n, G) -> (n, G).

    ``cdf`` raises NotImplementedError when a component has no CDF.
    """
    outs = []
    for s in range(0, grid.shape[1], chunk_cols):
        g = grid[:, s : s + chunk_cols]
        outs.append(fn(g.T.contiguous()).T)
    return torch.cat(outs, dim=1)


def hdr(mix, level: float = 0.9, *, grid_size: int = 512, max_intervals: int | None = None):
    """Highest-density region of scalar y: ``{y : p(y) >= f_a}`` holding mass ``level``.

    For a multimodal p(y | x) the region is a union of intervals, one around
    each sufficiently heavy mode; it is the shortest set with that coverage.

    The density is evaluated on a grid adapted to the mixture (a uniform grid
    between the ``1e-4 (1 - level)`` tail quantiles plus, for each component,
    points within 8 standard deviations of its mean), the threshold ``f_a`` is
    found by bisection on the mass of the superlevel set (trapezoidal
    integration of the density), and each end point is then refined by
    bisection on the exact density.

    Parameters
    ----------
    mix : MixtureDistribution
        Batch (n,), scalar y, continuous components.
    level : float, default=0.9
        Probability mass of the region.
    grid_size : int, default=512
        Uniform grid points per row (plus 64 per component).
    max_intervals : int, optional
        Number of columns J of the output, for a fixed layout; a row needing
        more intervals raises ValueError (nothing is dropped silently).
        Default: as many as the row with the most intervals needs.

    Returns
    -------
    intervals : Tensor (n, J, 2)
        ``[lower, upper]`` of each interval, sorted by lower end, NaN padding.
    mass : Tensor (n,)
        Probability of the returned region (``level`` up to the grid
        accuracy, typically within 1e-6).

    Shapes
    ------
    intervals (n, J, 2); mass (n,).

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> lw = torch.tensor([[0.5, 0.5]], dtype=torch.float64).log()
    >>> mix = MixtureDistribution(lw, Normal(torch.tensor([[-5.0, 5.0]], dtype=torch.float64),
    ...                                      torch.ones(1, 2, dtype=torch.float64)))
    >>> iv, mass = hdr(mix, 0.95)
    >>> iv.round(decimals=3), round(float(mass), 6)
    (tensor([[[-6.9600, -3.0400],
             [ 3.0400,  6.9600]]], dtype=torch.float64), 0.95)
    """
    level = _check_level(level)
    check_scalar(mix, "hdr")
    check_continuous(mix)
    if not (isinstance(grid_size, numbers.Integral) and grid_size >= 16):
        raise ValueError(f"grid_size must be an integer >= 16, got {grid_size!r}")
    if max_intervals is not None and not (isinstance(max_intervals, numbers.Integral) and max_intervals >= 1):
        raise ValueError(f"max_intervals must be None or a positive integer, got {max_intervals!r}")
    n = mix.log_weights.shape[0]
    with torch.no_grad():
        eps = max(1e-4 * (1 - level), 1e-12)
        lo = mix.icdf(eps)
        hi = mix.icdf(1 - eps)
        u = torch.linspace(0, 1, int(grid_size), dtype=lo.dtype, device=lo.device)
        grid = lo[:, None] + (hi - lo)[:, None] * u
        comp = _component_grid(mix, 64, 8.0)
        if comp is not None:
            grid = torch.cat([grid, comp.to(grid.dtype)], 1)
        grid = torch.sort(grid, dim=1).values
        logp = _on_grid(mix.log_prob, grid)
        p = logp.exp()
        dx = grid[:, 1:] - grid[:, :-1]
        try:  # exact mass of whole grid segments from the CDF where the family has one
            seg = _on_grid(mix.cdf, grid)
            seg = seg[:, 1:] - seg[:, :-1]
            exact = True
        except NotImplementedError:
            seg = 0.5 * (p[:, 1:] + p[:, :-1]) * dx
            exact = False

        a_p, b_p = p[:, :-1], p[:, 1:]
        slope = b_p - a_p
        slope = torch.where(slope == 0, torch.full_like(slope, 1e-300), slope)

        def superlevel_mass(logf):  # whole segments inside {p >= f}, plus linear end pieces
            f = logf.exp()[:, None]
            ina, inb = a_p >= f, b_p >= f
            t = ((f - a_p) / slope).clamp(0, 1)  # where p (linear on the segment) crosses f
            m = seg * (ina & inb) + (0.5 * dx) * ((f + b_p) * (1 - t) * (~ina & inb) + (a_p + f) * t * (ina & ~inb))
            return m.sum(1)

        if exact:
            target = torch.full((n,), level, dtype=p.dtype, device=p.device)
        else:  # normalise by the grid's total (removes most of the quadrature error)
            target = level * superlevel_mass(torch.full((n,), -math.inf, dtype=p.dtype, device=p.device))
        # bracket: counting whole segments only, sorted by their lower end value, the cumulative
        # mass first reaches the target at f0; the threshold lies in [f0, max p]
        mseg = torch.minimum(a_p, b_p)
        ms, order = torch.sort(mseg, dim=1, descending=True)
        cm = torch.cumsum(seg.gather(1, order), dim=1)
        j0 = torch.searchsorted(cm, target[:, None]).clamp_max(cm.shape[1] - 1)
        lo_f = ms.gather(1, j0)[:, 0].clamp_min(1e-300).log()
        hi_f = logp.max(1).values
        lo_f = torch.minimum(lo_f, hi_f)
        for _ in range(40):
            mid = 0.5 * (lo_f + hi_f)
            enough = superlevel_mass(mid) >= target
            lo_f = torch.where(enough, mid, lo_f)
            hi_f = torch.where(enough, hi_f, mid)
        logf = lo_f
        above = logp >= logf[:, None]
        # end points: segments where `above` changes; refine by bisection on the exact density
        ch = above[:, 1:] != above[:, :-1]
        starts_edge = above[:, 0]
        ends_edge = above[:, -1]
        n_cross = ch.sum(1)
        jmax = int(n_cross.max()) if n > 0 else 0
        pos = torch.argsort((~ch).to(torch.int8), dim=1, stable=True)[:, :jmax]  # crossing segment indices
        has = torch.arange(jmax, device=p.device)[None, :] < n_cross[:, None]
        a_pt = grid.gather(1, pos)
        b_pt = grid.gather(1, pos + 1)
        a_in = above.gather(1, pos)
        for _ in range(50):
            mid = 0.5 * (a_pt + b_pt)
            lm = _on_grid(mix.log_prob, mid) if jmax > 0 else mid
            mid_in = lm >= logf[:, None]
            same = mid_in == a_in
            a_pt = torch.where(same, mid, a_pt)
            b_pt = torch.where(same, b_pt, mid)
        ends = 0.5 * (a_pt + b_pt)
        if exact and jmax > 0:
            ends, logf = _polish_threshold(mix, ends, has, a_in, logf, level, grid, starts_edge, ends_edge)
        ends = torch.where(has, ends, torch.full_like(ends, math.nan))
        # assemble: edges + crossings alternate start/end
        pts = torch.cat([torch.where(starts_edge, grid[:, 0], torch.full_like(grid[:, 0], math.nan))[:, None], ends,
                         torch.where(ends_edge, grid[:, -1], torch.full_like(grid[:, 0], math.nan))[:, None]], 1)
        finite = torch.isfinite(pts)
        order = torch.argsort((~finite).to(torch.int8), dim=1, stable=True)
        pts = pts.gather(1, order)
        n_pts = finite.sum(1)
        j = int((n_pts.max() // 2).item()) if n > 0 else 0
        j = max(j, 1)
        pts = pts[:, : 2 * j]
        if pts.shape[1] < 2 * j:
            pts = torch.cat([pts, torch.full((n, 2 * j - pts.shape[1]), math.nan, dtype=pts.dtype, device=pts.device)], 1)
        iv = pts.reshape(n, j, 2)
        if max_intervals is not None:
            if j > max_intervals:
                raise ValueError(
                    f"some rows' highest-density region has {j} intervals but max_intervals={max_intervals}; "
                    "raise max_intervals (or leave it None)"
                )
            iv = torch.cat([iv, torch.full((n, max_intervals - j, 2), math.nan, dtype=iv.dtype, device=iv.device)], 1)
        mass = _interval_mass(mix, iv, grid, p)
    return iv, mass


def _polish_threshold(mix, ends, has, a_in, logf, level, grid, starts_edge, ends_edge, steps: int = 3):
    """Newton steps on the density threshold with exact masses (CDF) and moving end points.

    The mass of ``{p >= f}`` is ``sum_e sign_e F(e)`` over its end points
    (sign +1 where p falls through f, -1 where it rises); moving ``log f`` by
    ``t`` moves each end point by ``t / (d log p / dy)``.  Shapes: ends (n, J).
    """
    sign = torch.where(a_in, 1.0, -1.0).to(ends.dtype)
    sign = torch.where(has, sign, torch.zeros_like(sign))
    base = torch.where(starts_edge, -mix.cdf(grid[:, 0]), torch.zeros_like(logf))
    base = base + torch.where(ends_edge, mix.cdf(grid[:, -1]), torch.zeros_like(logf))
    width = (grid[:, -1] - grid[:, 0])[:, None]
    for _ in range(steps):
        e = torch.where(has, ends, grid[:, :1].expand_as(ends))
        cdf = mix.cdf(e.T.contiguous()).T
        mass = base + (sign * cdf).sum(1)
        hstep = 1e-7 * width
        slope = (_on_grid(mix.log_prob, e + hstep) - _on_grid(mix.log_prob, e - hstep)) / (2 * hstep)
        ok_slope = has & torch.isfinite(slope) & (slope.abs() > 1e-12)
        f = logf.exp()
        dm = torch.where(ok_slope, sign * f[:, None] / slope, torch.zeros_like(slope)).sum(1)
        dlog = torch.where(dm < 0, (level - mass) / dm, torch.zeros_like(dm))
        dlog = dlog.clamp(-0.05, 0.05)  # small corrections only: the grid solution is close
        logf = logf + dlog
        ends = torch.where(ok_slope, ends + dlog[:, None] / slope, ends)
    return ends, logf


def _interval_mass(mix, iv, grid, p):
    """Probability of a union of intervals (n, J, 2): CDF differences, else trapezoid."""
    try:
        lo = iv[..., 0].nan_to_num(nan=0.0)
        hi = iv[..., 1].nan_to_num(nan=0.0)
        ok = torch.isfinite(iv[..., 0])
        cols = []
        for jj in range(iv.shape[1]):
            cols.append(mix.cdf(hi[:, jj]) - mix.cdf(lo[:, jj]))
        m = torch.stack(cols, 1)
        return torch.where(ok, m, torch.zeros_like(m)).sum(1)
    except NotImplementedError:
        inside = in_intervals(grid.T, iv).T  # (n, G)
        pm = torch.where(inside, p, torch.zeros_like(p))
        return (0.5 * (pm[:, 1:] + pm[:, :-1]) * (grid[:, 1:] - grid[:, :-1])).sum(1)


def in_intervals(y, intervals):
    """Whether y lies in any of each row's intervals.

    Parameters
    ----------
    y : array or Tensor (n,) or (m, n)
    intervals : (n, J, 2) or (n, 2), NaN padding allowed

    Returns
    -------
    bool array / Tensor of y's shape (NumPy in, NumPy out).

    Shapes
    ------
    y (n,) or (m, n) (any leading dimensions, last one n); intervals
    (n, J, 2) or (n, 2) (read as J = 1) -> bool of y's shape, (n,) or (m, n).

    Examples
    --------
    >>> import numpy as np
    >>> iv = np.array([[[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [np.nan, np.nan]]])
    >>> in_intervals(np.array([2.5, 2.5]), iv)
    array([ True, False])
    """
    is_np = not isinstance(y, torch.Tensor)
    ivt = (torch.as_tensor(np.asarray(intervals, dtype=float), device="cpu") if not isinstance(intervals, torch.Tensor)
           else intervals)
    yt = torch.as_tensor(np.asarray(y, dtype=float), device=ivt.device) if is_np else y.to(ivt.device)
    if ivt.dim() == 2:
        ivt = ivt[:, None, :]
    if ivt.dim() != 3 or ivt.shape[-1] != 2:
        raise ValueError(f"intervals must have shape (n, J, 2) or (n, 2), got {tuple(ivt.shape)}")
    if yt.shape[-1] != ivt.shape[0]:
        raise ValueError(f"y has {yt.shape[-1]} rows but intervals has {ivt.shape[0]}; pass one row of intervals per y")
    yy = yt[..., None].to(ivt.dtype)
    res = ((yy >= ivt[..., 0]) & (yy <= ivt[..., 1])).any(-1)
    return res.cpu().numpy() if is_np else res


def interval_length(intervals):
    """Total length of each row's union of intervals (NaN padding ignored): (n,).

    Parameters
    ----------
    intervals : array or Tensor (n, J, 2) or (n, 2)
        ``[lower, upper]`` pairs, as returned by :func:`hdr` or
        :func:`central_interval`; NaN padding counts as length 0.  The
        intervals of a row are assumed disjoint (their lengths are summed).

    Returns
    -------
    array or Tensor (n,)
        NumPy in, NumPy out.

    Shapes
    ------
    intervals (n, J, 2) or (n, 2) -> (n,).

    Examples
    --------
    >>> import numpy as np
    >>> interval_length(np.array([[[0.0, 1.0], [2.0, 2.5]]]))
    array([1.5])
    """
    is_np = not isinstance(intervals, torch.Tensor)
    iv = torch.as_tensor(np.asarray(intervals, dtype=float), device="cpu") if is_np else intervals
    if iv.dim() == 2:
        iv = iv[:, None, :]
    ln = (iv[..., 1] - iv[..., 0]).nan_to_num(nan=0.0).sum(-1)
    return ln.numpy() if is_np else ln
