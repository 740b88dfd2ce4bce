"""Modes and branches of conditional mixtures (inverse problems).

* :func:`find_modes` - the modes of every row's mixture, found by a vectorised
  hill-climb started from every component mean (the fixed-point / mean-shift
  iteration, by default safeguarded and accelerated as a trust-region Newton
  method in the mean-shift metric), merged when they coincide; each mode with
  its probability mass and a local covariance.  Returned as NaN-padded arrays so
  that users can vectorise: ``modes, weights = find_modes(mix)``.
* :func:`branches` - the cheap variant: component means with their weights.

Supported components
--------------------
Mode finding is exact (closed-form gradient and Hessian, fixed-point and
Newton steps) for components that are ``Normal``, ``MultivariateNormal``,
``Independent(Normal, 1)``, ``StudentT`` (scalar) and ``Independent(StudentT,
1)`` (independent t coordinates), stacked (batch (n, K)) or in a list of
per-expert distributions (batch (n,)), and for nested mixtures of these (a
hierarchical mixture of experts is flattened into its leaves).  For any
other *continuous* family the documented fallback is preconditioned gradient
ascent on ``log_prob`` with autograd, from the same starts, with a
finite-difference Hessian; discrete families (Poisson, categorical) have no
modes in this sense and raise ``TypeError``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, constraints
from torch.distributions import StudentT as _TorchStudentT

from ..distributions import flatten_leaves

__all__ = ["Modes", "branches", "find_modes"]

_LOG_2PI = math.log(2 * math.pi)
# elements of the largest (rows x starts x components x d x d) work tensor per chunk
_CHUNK_ELEMS = 4_000_000


# =============================================================== result types
class Modes(tuple):
    """The pair ``(modes, weights)`` with more fields as attributes.

    Unpacks as a pair, ``modes, weights = find_modes(mix)``; the attributes
    hold everything else.

    Attributes
    ----------
    modes : (n, M) for scalar y, (n, M, d_y) for vector y
        Mode locations sorted by decreasing mass; NaN where a row has fewer
        than M modes.
    weights : (n, M)
        Probability mass of each mode (the summed mixing weights of the
        components whose means climb to it); NaN padding.
    covariances : (n, M) for scalar y, (n, M, d_y, d_y)
        Local covariance at each mode: ``(-H)^{-1}`` with H the Hessian of
        ``log p`` at the mode (the Laplace approximation of the peak); where
        H is not negative definite (a flat top) the precision-weighted
        harmonic mean of the component covariances there.  NaN padding.
    log_density : (n, M)
        ``log p(mode)``; NaN padding.
    n_modes : (n,)
        Number of modes kept in each row (integers).

    Parameters
    ----------
    modes, weights, covariances, log_density, n_modes : Tensor or ndarray
        The fields above, in that order (built by :func:`find_modes`).

    Shapes
    ------
    modes (n, M) or (n, M, d_y); weights (n, M); covariances (n, M) or
    (n, M, d_y, d_y); log_density (n, M); n_modes (n,).  M is the number of
    mode columns (the most modes kept in any row).

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> from moekit.inference import find_modes
    >>> mix = MixtureDistribution(torch.zeros(3, 1), Normal(torch.zeros(3, 1), torch.ones(3, 1)))
    >>> res = find_modes(mix)
    >>> res
    Modes(n=3, M=1, event_shape=())
    >>> modes, weights = res
    >>> tuple(modes.shape), tuple(res.covariances.shape), res.n_modes.tolist()
    ((3, 1), (3, 1), [1, 1, 1])
    """

    def __new__(cls, modes, weights, covariances, log_density, n_modes):
        self = tuple.__new__(cls, (modes, weights))
        self.modes = modes
        self.weights = weights
        self.covariances = covariances
        self.log_density = log_density
        self.n_modes = n_modes
        return self

    def __getnewargs__(self):
        return (self.modes, self.weights, self.covariances, self.log_density, self.n_modes)

    def _map(self, fn) -> Modes:
        return Modes(fn(self.modes), fn(self.weights), fn(self.covariances), fn(self.log_density), fn(self.n_modes))

    def numpy(self) -> Modes:
        """The same result with NumPy arrays."""
        return self._map(lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t))

    def __repr__(self) -> str:
        return f"Modes(n={len(self.n_modes)}, M={self.weights.shape[1]}, event_shape={tuple(self.modes.shape[2:])})"


# ============================================================ canonical form
def _is_discrete(d: Distribution) -> bool:
    try:
        sup = d.support
    except NotImplementedError:
        return False
    if isinstance(sup, constraints.independent):
        sup = sup.base_constraint
    return isinstance(
        sup,
        (constraints._IntegerGreaterThan, constraints._IntegerInterval, constraints._Boolean,
         constraints._Simplex, constraints._OneHot),
    )


def _t_log_const(df: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Log normalising constant of the univariate Student-t density."""
    return torch.lgamma(0.5 * (df + 1)) - torch.lgamma(0.5 * df) - 0.5 * torch.log(df * math.pi) - torch.log(scale)


class _Block:
    """Components of one family with parameters aligned to rows: leading dims (R, Kb)."""

    def gather(self, rows: torch.Tensor) -> _Block:  # pragma: no cover - abstract
        raise NotImplementedError


class _MVTBlock(_Block):
    """Multivariate t components; ``df = inf`` are Gaussians.

    loc (R, Kb, d); prec (R, Kb, d, d); logc (R, Kb) log normalising constant;
    df (R, Kb) (inf for Gaussian).
    """

    def __init__(self, loc, prec, logc, df):
        self.loc, self.prec, self.logc, self.df = loc, prec, logc, df
        self.gauss = torch.isinf(df)
        self.all_gauss = bool(self.gauss.all())
        self.df_safe = torch.where(self.gauss, torch.ones_like(df), df)

    def gather(self, rows):
        return _MVTBlock(self.loc[rows], self.prec[rows], self.logc[rows], self.df[rows])

    @property
    def k(self):
        return self.loc.shape[1]

    def _maha(self, x):
        diff = x[:, :, None, :] - self.loc[:, None, :, :]  # (R, S, K, d)
        pd = torch.einsum("rkij,rskj->rski", self.prec, diff)
        return diff, pd, torch.einsum("rski,rski->rsk", diff, pd)

    def _logp_u(self, delta):
        d = self.loc.shape[-1]
        if self.all_gauss:
            return self.logc[:, None, :] - 0.5 * delta, None
        nu = self.df_safe[:, None, :]
        lt = self.logc[:, None, :] - 0.5 * (nu + d) * torch.log1p(delta / nu)
        lg = self.logc[:, None, :] - 0.5 * delta
        g = self.gauss[:, None, :]
        logp = torch.where(g, lg, lt)
        u = torch.where(g, torch.ones_like(delta), (nu + d) / (nu + delta))
        return logp, u

    def logp(self, x):
        return self._logp_u(self._maha(x)[2])[0]

    def prepare(self, x):
        _, pd, delta = self._maha(x)
        logp, u = self._logp_u(delta)
        return logp, (pd, u)

    def accumulate(self, cache, r):
        pd, u = cache
        d = self.loc.shape[-1]
        if u is None:
            g = -pd
            ru = r
            c = r
        else:
            g = -u[..., None] * pd
            ru = r * u
            c2 = torch.where(self.gauss, torch.zeros_like(self.df_safe), 2.0 / (self.df_safe + d))
            c = r * (1 + c2[:, None, :])
        R, S, K, d = g.shape
        grad = (r[..., None, :] @ g)[..., 0, :]
        a = (ru @ self.prec.reshape(R, K, d * d)).reshape(R, S, d, d)
        gw = g * c.sqrt()[..., None]
        q = gw.transpose(-1, -2) @ gw
        return grad, a, q


class _ProdTBlock(_Block):
    """Products of independent univariate t coordinates (``Independent(StudentT, 1)``).

    loc, scale, df: (R, Kb, d); logc (R, Kb, d) per-coordinate log constants.
    """

    def __init__(self, loc, scale, df):
        self.loc, self.scale, self.df = loc, scale, df
        self.logc = _t_log_const(df, scale)

    def gather(self, rows):
        return _ProdTBlock(self.loc[rows], self.scale[rows], self.df[rows])

    @property
    def k(self):
        return self.loc.shape[1]

    def _parts(self, x):
        diff = x[:, :, None, :] - self.loc[:, None]  # (R, S, K, d)
        s2 = self.scale[:, None] ** 2
        z2 = diff * diff / s2
        nu = self.df[:, None]
        logp = (self.logc[:, None] - 0.5 * (nu + 1) * torch.log1p(z2 / nu)).sum(-1)
        return diff, s2, z2, nu, logp

    def logp(self, x):
        return self._parts(x)[-1]

    def prepare(self, x):
        diff, s2, z2, nu, logp = self._parts(x)
        return logp, (diff, s2, z2, nu)

    def accumulate(self, cache, r):
        diff, s2, z2, nu = cache
        u = (nu + 1) / (nu + z2)
        g = -u * diff / s2  # (R, S, K, d)
        grad = torch.einsum("rsk,rski->rsi", r, g)
        a = torch.diag_embed(torch.einsum("rsk,rski->rsi", r, u / s2))
        extra = torch.diag_embed(torch.einsum("rsk,rski->rsi", r, 2.0 / (nu + 1) * g * g))
        q = torch.einsum("rsk,rski,rskj->rsij", r, g, g) + extra
        return grad, a, q


def _canonical(dist: Distribution, stacked: bool, dtype):
    """A :class:`_Block` for a supported family, else None.  Batch (n, Kb) after unsqueezing."""

    def b(t):  # to (n, Kb, ...) float64
        t = t.to(dtype)
        return t if stacked else t.unsqueeze(1)

    batch = tuple(dist.batch_shape)
    if isinstance(dist, Normal):
        loc = b(dist.loc.expand(batch))[..., None]
        sc = b(dist.scale.expand(batch))
        prec = (1.0 / sc**2)[..., None, None]
        logc = -torch.log(sc) - 0.5 * _LOG_2PI
        return _MVTBlock(loc, prec, logc, torch.full_like(logc, math.inf))
    if isinstance(dist, _TorchStudentT):
        loc = b(dist.loc.expand(batch))[..., None]
        sc = b(dist.scale.expand(batch))
        df = b(dist.df.expand(batch))
        prec = (1.0 / sc**2)[..., None, None]
        return _MVTBlock(loc, prec, _t_log_const(df, sc), df)
    if isinstance(dist, MultivariateNormal):
        tril = dist._unbroadcasted_scale_tril.to(dtype)
        d = tril.shape[-1]
        prec = torch.cholesky_inverse(tril) if tril.dim() == 2 else _batched_cholesky_inverse(tril)
        logc = -tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * d * _LOG_2PI
        loc = dist.loc.to(dtype).expand(batch + (d,))
        prec = prec.expand(batch + (d, d))
        logc = logc.expand(batch)
        if not stacked:
            loc, prec, logc = loc.unsqueeze(1), prec.unsqueeze(1), logc.unsqueeze(1)
        return _MVTBlock(loc, prec, logc, torch.full_like(logc, math.inf))
    if isinstance(dist, Independent) and dist.reinterpreted_batch_ndims == 1:
        base = dist.base_dist
        full = batch + tuple(dist.event_shape)
        if isinstance(base, Normal):
            loc = b(base.loc.expand(full))
            sc = b(base.scale.expand(full))
            prec = torch.diag_embed(1.0 / sc**2)
            logc = (-torch.log(sc) - 0.5 * _LOG_2PI).sum(-1)
            return _MVTBlock(loc, prec, logc, torch.full_like(logc, math.inf))
        if isinstance(base, _TorchStudentT):
            return _ProdTBlock(b(base.loc.expand(full)), b(base.scale.expand(full)), b(base.df.expand(full)))
    return None


def _batched_cholesky_inverse(tril: torch.Tensor) -> torch.Tensor:
    shape = tril.shape
    flat = tril.reshape(-1, shape[-2], shape[-1])
    eye = torch.eye(shape[-1], dtype=tril.dtype, device=tril.device).expand_as(flat)
    inv_l = torch.linalg.solve_triangular(flat, eye, upper=False)
    return (inv_l.transpose(-1, -2) @ inv_l).reshape(shape)


def check_continuous(mix) -> None:
    """Raise ``TypeError`` when a leaf of ``mix`` is discrete or categorical (no modes or intervals there)."""
    for _, d, _ in flatten_leaves(mix):
        if _is_discrete(d):
            raise TypeError(
                f"modes and intervals are computed here for continuous y; this mixture has "
                f"{type(d).__name__} components (a discrete or categorical target); use the "
                "probabilities of the predictive distribution (e.g. predict_proba or dist.probs) instead"
            )


# ============================================================= mode finding
def _check_options(max_modes, min_weight, tol, max_iter, merge_tol):
    if max_modes is not None and not (
        isinstance(max_modes, numbers.Integral) and not isinstance(max_modes, bool) and max_modes >= 1
    ):
        raise ValueError(f"max_modes must be None or a positive integer, got {max_modes!r}")
    if not (isinstance(min_weight, numbers.Real) and 0 <= min_weight < 1):
        raise ValueError(f"min_weight must be a number in [0, 1), got {min_weight!r}")
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if not (isinstance(max_iter, numbers.Integral) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(merge_tol, numbers.Real) and merge_tol > 0):
        raise ValueError(f"merge_tol must be a positive number, got {merge_tol!r}")


def _mixture_terms(blocks, lw, x, need_grad=True):
    """log p (R, S), and if need_grad: r-weighted grad (R,S,d), A (R,S,d,d), H (R,S,d,d)."""
    if not need_grad:
        lp = torch.cat([bl.logp(x) for bl in blocks], dim=-1)
        return torch.logsumexp(lw[:, None, :] + lp, dim=-1)
    preps = [bl.prepare(x) for bl in blocks]
    lj = lw[:, None, :] + torch.cat([p[0] for p in preps], dim=-1)
    total = torch.logsumexp(lj, dim=-1)
    r = (lj - total[..., None]).exp()
    r = torch.nan_to_num(r, nan=0.0)
    grad = a = q = None
    start = 0
    for bl, (_, cache) in zip(blocks, preps):
        rb = r[..., start : start + bl.k]
        start += bl.k
        g, aa, qq = bl.accumulate(cache, rb)
        grad = g if grad is None else grad + g
        a = aa if a is None else a + aa
        q = qq if q is None else q + qq
    h = -a + q - grad[..., :, None] * grad[..., None, :]
    return total, grad, a, h


def _sum_last(t: torch.Tensor) -> torch.Tensor:
    """Sum over a short last axis (faster than ``.sum(-1)`` for d = 1, 2, 3)."""
    return t @ torch.ones(t.shape[-1], dtype=t.dtype, device=t.device)


def _trust_step(la, h, g, radius):
    """Maximiser of ``g's + s'Hs/2`` subject to ``||s||_A <= radius`` (A = la la').

    With ``B = L^{-1} H L^{-T} = V diag(mu) V'`` and ``c = V' L^{-1} g`` the
    solution is ``s = L^{-T} V c / (lam - mu)`` with the smallest
    ``lam >= max(mu_max, 0)`` giving ``||s||_A <= radius``; lam solves the
    secular equation by Newton's method on ``1/||s||`` from the left (More
    and Sorensen 1983).  Shapes: la, h (P, d, d); g (P, d); radius (P,).
    """
    linv_h = torch.linalg.solve_triangular(la, h, upper=False)
    b = torch.linalg.solve_triangular(la, linv_h.transpose(-1, -2), upper=False)
    mu, v = torch.linalg.eigh(0.5 * (b + b.transpose(-1, -2)))
    c = (v.transpose(-1, -2) @ torch.linalg.solve_triangular(la, g[:, :, None], upper=False))[:, :, 0]
    c2 = c * c
    mu_max = mu[:, -1]
    lo = torch.clamp_min(mu_max, 0.0) + 1e-10 * mu.abs().amax(-1).clamp_min(1e-300)
    lam = lo
    for _ in range(12):
        q = 1.0 / (lam[:, None] - mu)
        q2 = c2 * q * q
        sn = _sum_last(q2).sqrt()
        s3 = _sum_last(q2 * q)
        dl = (1.0 / sn - 1.0 / radius) * sn**3 / s3.clamp_min(1e-300)
        lam = torch.clamp_min(lam + torch.nan_to_num(dl, nan=0.0, posinf=0.0, neginf=0.0), lo)
    z = c / (lam[:, None] - mu)
    zn = z.norm(dim=-1)
    over = zn > radius  # not yet on the trust boundary (hard case, few iterations): shorten, still ascent
    z = torch.where(over[:, None], z * (radius / zn.clamp_min(1e-300))[:, None], z)
    return torch.linalg.solve_triangular(la.transpose(-1, -2), v @ z[:, :, None], upper=True)[:, :, 0]


def _ascend(blocks, lw, x, active, tol, max_iter, method="newton"):
    """Monotone ascent of log p from the points x (R, S, d); ``active`` (R, S) bool.

    Works on the flat list of active points (each carrying its row's
    parameters), compacted as points converge.

    ``method="fixed_point"``: the mean-shift step ``A^{-1} grad`` (A = sum_k
    r_k u_k P_k, so that ``y + A^{-1} grad`` is the fixed-point update), halved
    until log p does not decrease.  ``method="newton"``: a trust-region Newton
    method in the same metric A: the step maximises the quadratic model of
    log p within ``||s||_A <= radius``; near a mode it is the Newton step
    (quadratic convergence), far from one it is a damped mean-shift step.  The
    first radius is the larger of one local standard deviation and the length
    of the mean-shift step.  A step is taken only if log p does not decrease.
    Returns the new points.
    """
    R, S, d = x.shape
    dt, dev = x.dtype, x.device
    x = x.clone()
    flat = x.reshape(R * S, d)
    pt_all = torch.nonzero(active.reshape(-1), as_tuple=False)[:, 0]
    if pt_all.numel() == 0:
        return x
    eye = torch.eye(d, dtype=dt, device=dev)
    # working set: points `pts`, their rows, their gathered parameters
    pts = pt_all
    bl = [b.gather(pts // S) for b in blocks]
    lwp = lw[pts // S]
    xp = flat[pts].clone()
    radius = torch.full((pts.numel(),), math.nan, dtype=dt, device=dev)
    alpha = torch.ones(pts.numel(), dtype=dt, device=dev)
    act = torch.ones(pts.numel(), dtype=torch.bool, device=dev)
    for _ in range(max_iter):
        if not bool(act.any()):
            break
        if int(act.sum()) < 0.5 * act.numel():  # compact the working set
            flat[pts] = xp
            keep = torch.nonzero(act, as_tuple=False)[:, 0]
            pts, xp, radius, alpha = pts[keep], xp[keep], radius[keep], alpha[keep]
            bl = [b.gather(keep) for b in bl]
            lwp = lwp[keep]
            act = torch.ones(pts.numel(), dtype=torch.bool, device=dev)
        f0, g, a, h = _mixture_terms(bl, lwp, xp[:, None, :])
        f0, g, a, h = f0[:, 0], g[:, 0], a[:, 0], h[:, 0]
        la, infa = torch.linalg.cholesky_ex(a)
        good = (infa == 0) & torch.isfinite(f0) & torch.isfinite(g).all(-1)
        la = torch.where(good[:, None, None], la, eye)
        g = torch.where(good[:, None], g, torch.zeros_like(g))
        fp = torch.cholesky_solve(g[:, :, None], la)[:, :, 0]  # mean-shift step A^{-1} grad
        fp_len = _sum_last(fp * g).clamp_min(0).sqrt()  # ||fp||_A
        if method == "fixed_point":
            step = alpha[:, None] * fp
            model = None
        else:
            radius = torch.where(torch.isnan(radius), fp_len.clamp_min(1.0), radius)  # start: one local sd
            h = torch.where(good[:, None, None], h, -eye)
            lh, infh = torch.linalg.cholesky_ex(-h)
            concave = infh == 0
            nt = torch.cholesky_solve(g[:, :, None], torch.where(concave[:, None, None], lh, eye))[:, :, 0]
            nt_len = _sum_last(nt * (a @ nt[:, :, None])[:, :, 0]).clamp_min(0).sqrt()
            newton = concave & (nt_len <= radius) & torch.isfinite(nt_len)
            step = torch.where(newton[:, None], nt, fp)
            tr = torch.nonzero(~newton & good & act, as_tuple=False)[:, 0]
            if tr.numel() > 0:
                step[tr] = _trust_step(la[tr], h[tr], g[tr], radius[tr])
            model = _sum_last(g * step) + 0.5 * _sum_last(step * (h @ step[:, :, None])[:, :, 0])
        step = torch.where((good & act)[:, None], step, torch.zeros_like(step))
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        cand = xp + step
        f1 = _mixture_terms(bl, lwp, cand[:, None, :], need_grad=False)[:, 0]
        ok = (f1 >= f0 - 1e-13 * f0.abs().clamp_min(1.0)) & torch.isfinite(f1)
        move = ok & act
        xp = torch.where(move[:, None], cand, xp)
        size = _sum_last(step * (a @ step[:, :, None])[:, :, 0]).clamp_min(0).sqrt()
        if method == "fixed_point":
            alpha = torch.where(move, torch.ones_like(alpha), alpha * 0.5)
            stop = (move & (size < tol)) | (alpha < 1e-12)
        else:
            rho = (f1 - f0) / model.clamp_min(1e-300)
            radius = torch.where(~ok | (rho < 0.25), 0.25 * size.clamp_min(1e-300), radius)
            grow = ok & (rho > 0.75) & (size > 0.99 * radius)
            radius = torch.where(grow, 2 * radius, radius)
            stop = (move & (size < tol)) | (radius < tol) | (fp_len < tol)
        act = act & ~stop & good
    flat[pts] = xp
    return flat.reshape(R, S, d)


def find_modes(
    mix,
    max_modes: int | None = None,
    min_weight: float = 0.01,
    *,
    tol: float = 1e-9,
    max_iter: int = 500,
    merge_tol: float = 1e-3,
    method: str = "newton",
) -> Modes:
    """Modes of each row's mixture density, with their mass and local covariance.

    Every component mean starts a monotone hill-climb of ``log p(y)``.  The
    fixed-point (mean-shift) update is ``y <- (sum_k r_k u_k P_k)^{-1} sum_k
    r_k u_k P_k mu_k`` (r the posterior component probabilities at y, P_k the
    precisions, u_k = 1 for Gaussians and the t weight ``(nu + d)/(nu +
    delta_k)`` for Student-t), i.e. the step ``A^{-1} grad log p`` with ``A =
    sum_k r_k u_k P_k``.  ``method="fixed_point"`` takes these steps, halved
    until the density does not decrease; the default ``method="newton"``
    solves, in the same metric A, a trust-region problem on the quadratic
    model of log p: Newton steps where log p is concave (quadratic
    convergence at the mode), damped mean-shift-like steps elsewhere, every
    step accepted only if the density does not decrease.  Both are vectorised
    over rows and starts, and converged climbs leave the working set.
    Points that stop at a saddle are pushed off it along the ascending
    eigenvector and climb again.  Climbs that end within ``merge_tol`` local
    standard deviations of each other are one mode; its **mass** is the sum
    of the mixing weights of the components whose climbs end there (the mass
    of the mode's basin of attraction as seen from the component means).

    Parameters
    ----------
    mix : MixtureDistribution
        Batch (n,), scalar or vector y.
    max_modes : int, optional
        Keep at most this many modes per row (the heaviest); the output then
        has exactly ``max_modes`` columns.  Default: as many columns as the
        row with the most modes needs.
    min_weight : float, default=0.01
        Drop modes whose mass is below this (the heaviest mode of a row is
        always kept).  0 keeps every mode.
    tol : float, default=1e-9
        Convergence: a climb stops when its step is shorter than ``tol``
        local standard deviations.
    max_iter : int, default=500
        Most iterations of a climb.
    merge_tol : float, default=1e-3
        Climbs that end closer than this, in local standard deviations
        (Mahalanobis distance under the local precision), are merged.
    method : {"newton", "fixed_point"}, default="newton"
        The hill-climb (see above); both find the same modes.  A component
        mean lying near the boundary between two basins may climb to either
        side depending on the method, which moves its weight between the two
        modes' masses.

    Returns
    -------
    Modes
        Unpacks as ``(modes, weights)``; see :class:`Modes` for the other
        fields (``covariances``, ``log_density``, ``n_modes``).  Tensors in the
        mixture's dtype and device.

    Shapes
    ------
    modes (n, M) for scalar y, (n, M, d_y) for vector y; weights (n, M);
    covariances (n, M) or (n, M, d_y, d_y); log_density (n, M); n_modes (n,).
    NaN pads rows with fewer than M modes.

    Notes
    -----
    Starting from every component mean finds every mode of a Gaussian mixture
    in all but contrived cases (Carreira-Perpinan 2000 shows that a mixture
    can, exceptionally, have modes that no mean climbs to).  The fixed-point
    iteration is the mean-shift algorithm for heteroscedastic Gaussian
    mixtures; for Student-t components it is the EM-like reweighted version.
    Components that are not of the supported families use the fallback
    described in :mod:`moekit.inference.modes`.

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> lw = torch.tensor([[0.7, 0.3]], dtype=torch.float64).log()
    >>> mix = MixtureDistribution(lw, Normal(torch.tensor([[-3.0, 3.0]], dtype=torch.float64),
    ...                                      torch.ones(1, 2, dtype=torch.float64)))
    >>> modes, weights = find_modes(mix)
    >>> modes.round(decimals=4), weights
    (tensor([[-3.,  3.]], dtype=torch.float64), tensor([[0.7000, 0.3000]], dtype=torch.float64))
    """
    _check_options(max_modes, min_weight, tol, max_iter, merge_tol)
    if method not in ("newton", "fixed_point"):
        raise ValueError(f"method must be 'newton' or 'fixed_point', got {method!r}")
    check_continuous(mix)
    out_dtype = mix.log_weights.dtype
    dev = mix.log_weights.device
    dtype = torch.float64
    leaves = flatten_leaves(mix)
    blocks = [_canonical(d, st, dtype) for _, d, st in leaves]
    n = mix.log_weights.shape[0]
    scalar = len(mix.event_shape) == 0
    with torch.no_grad():
        if any(b is None for b in blocks):
            res = _generic_modes(mix, min_weight, max_modes, tol, max_iter, merge_tol)
        else:
            lw = torch.cat([l.to(dtype) for l, _, _ in leaves], dim=1)
            lw = lw - torch.logsumexp(lw, dim=1, keepdim=True)
            k = lw.shape[1]
            d = blocks[0].loc.shape[-1]
            per_row = max(1, k * k * d * d * 3)
            chunk = max(1, _CHUNK_ELEMS // per_row)
            parts = []
            for s in range(0, n, chunk):
                rows = torch.arange(s, min(n, s + chunk), device=dev)
                bl = [b.gather(rows) for b in blocks]
                parts.append(_modes_chunk(bl, lw[rows], tol, max_iter, merge_tol, method))
            res = [torch.cat([p[i] for p in parts], 0) for i in range(5)]
        modes, weights, covs, logd, valid = res
    return _finish(modes, weights, covs, logd, valid, min_weight, max_modes, scalar, out_dtype)


def _modes_chunk(blocks, lw, tol, max_iter, merge_tol, method):
    """Climbs from every component mean of rows in one chunk; merged per row."""
    starts = torch.cat([b.loc for b in blocks], dim=1)  # (R, K, d)
    valid = torch.isfinite(lw) & torch.isfinite(starts).all(-1)
    x0 = torch.where(valid[..., None], starts, torch.zeros_like(starts))
    x = _ascend(blocks, lw, x0, valid, tol, max_iter, method)
    # push points stuck at saddles (a positive Hessian eigenvalue) off along that direction
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)

    def terms(pts):
        f, _, a, h = _mixture_terms(blocks, lw, pts)
        good = valid & torch.isfinite(h).all(-1).all(-1) & torch.isfinite(a).all(-1).all(-1)
        h = torch.where(good[..., None, None], h, -eye)
        a = torch.where(good[..., None, None], a, eye)
        return f, a, h

    f, a, h = terms(x)
    evals, evecs = torch.linalg.eigh(h)
    scale = torch.linalg.eigvalsh(a).abs().amax(-1).clamp_min(1e-300)
    saddle = valid & (evals[..., -1] > 1e-8 * scale)
    if bool(saddle.any()):
        v = evecs[..., :, -1]
        vav = (v * (a @ v[..., None])[..., 0]).sum(-1).clamp_min(1e-300)
        xs = x + 0.1 * v / vav.sqrt()[..., None]
        x2 = _ascend(blocks, lw, torch.where(saddle[..., None], xs, x), saddle, tol, max_iter, method)
        x = torch.where(saddle[..., None], x2, x)
        f, a, h = terms(x)
    # local covariance: (-H)^{-1} where -H is positive definite, else A^{-1}
    lneg, info = torch.linalg.cholesky_ex(-h)
    cov_h = torch.cholesky_inverse(torch.where((info == 0)[..., None, None], lneg, eye))
    la, _ = torch.linalg.cholesky_ex(a)
    cov_a = torch.cholesky_inverse(la)
    cov = torch.where((info == 0)[..., None, None], cov_h, cov_a)
    return _merge_climbs(x, f, valid, a, cov, lw, merge_tol)


def _merge_climbs(x, f, valid, metric, cov, lw, tol):
    """Merge climbs that ended together: greedy from the highest, j joins the first kept i within ``tol``.

    Distances are Mahalanobis in the metric of point i (the higher one).  A
    mode's mass is the summed weight ``exp(lw)`` of the components whose
    climbs joined it.  Shapes: x (R, S, d); f, valid, lw (R, S); metric, cov
    (R, S, d, d).  Returns (modes, mass, cov, log p, kept), sorted by
    decreasing log p; mass is NaN where a climb was merged into another.
    """
    R, S, d = x.shape
    fv = torch.where(valid, f, torch.full_like(f, -math.inf))
    order = torch.argsort(fv, dim=1, descending=True)
    xo = x.gather(1, order[..., None].expand(R, S, d))
    mo = metric.gather(1, order[..., None, None].expand(R, S, d, d))
    vo = valid.gather(1, order)
    diff = xo[:, :, None, :] - xo[:, None, :, :]  # (R, i, j, d)
    dist2 = torch.einsum("rijd,ride,rije->rij", diff, mo, diff)
    close = dist2 < tol**2
    rep = torch.arange(S, device=x.device).expand(R, S).clone()
    is_rep = vo.clone()
    for j in range(1, S):
        cand = close[:, :j, j] & is_rep[:, :j]  # (R, j)
        has = cand.any(1) & vo[:, j]
        first = torch.argmax(cand.to(torch.int8), dim=1)
        rep[:, j] = torch.where(has, first, rep[:, j])
        is_rep[:, j] = is_rep[:, j] & ~has
    w = torch.where(valid, lw.exp(), torch.zeros_like(lw)).gather(1, order)
    mass = torch.zeros_like(w).scatter_add_(1, rep, w)
    mass = torch.where(is_rep, mass, torch.full_like(mass, math.nan))
    return xo, mass, cov.gather(1, order[..., None, None].expand(R, S, d, d)), fv.gather(1, order), is_rep


def _finish(modes, mass, covs, logd, keep, min_weight, max_modes, scalar, out_dtype) -> Modes:
    """Filter by mass, sort by mass (then density), pad with NaN, cut to M columns."""
    n, S = mass.shape
    m0 = torch.where(keep, mass, torch.full_like(mass, -1.0))
    top = m0.amax(1, keepdim=True)
    keep = keep & ((m0 >= min_weight) | (m0 == top))
    key = torch.where(keep, m0, torch.full_like(m0, -math.inf))
    # sort by mass, ties by density (lexicographic through a stable two-pass sort)
    o1 = torch.argsort(torch.where(keep, logd, torch.full_like(logd, -math.inf)), dim=1, descending=True, stable=True)
    k1 = key.gather(1, o1)
    o2 = torch.argsort(k1, dim=1, descending=True, stable=True)
    order = o1.gather(1, o2)
    n_modes = keep.sum(1)
    m_cols = int(n_modes.max()) if n > 0 else 1
    m_cols = max(m_cols, 1)
    if max_modes is not None:
        m_cols = int(max_modes)
        n_modes = n_modes.clamp_max(m_cols)
    take = min(m_cols, S)
    order = order[:, :take]
    kept = keep.gather(1, order)
    d = modes.shape[-1]
    nan = math.nan
    mo = modes.gather(1, order[..., None].expand(n, take, d))
    mo = torch.where(kept[..., None], mo, torch.full_like(mo, nan))
    wo = torch.where(kept, mass.gather(1, order), torch.full((n, take), nan, dtype=mass.dtype, device=mass.device))
    co = covs.gather(1, order[..., None, None].expand(n, take, d, d))
    co = torch.where(kept[..., None, None], co, torch.full_like(co, nan))
    lo = torch.where(kept, logd.gather(1, order), torch.full((n, take), nan, dtype=logd.dtype, device=logd.device))
    if take < m_cols:  # pad to max_modes columns
        pad = m_cols - take
        mo = torch.cat([mo, torch.full((n, pad, d), nan, dtype=mo.dtype, device=mo.device)], 1)
        wo = torch.cat([wo, torch.full((n, pad), nan, dtype=wo.dtype, device=wo.device)], 1)
        co = torch.cat([co, torch.full((n, pad, d, d), nan, dtype=co.dtype, device=co.device)], 1)
        lo = torch.cat([lo, torch.full((n, pad), nan, dtype=lo.dtype, device=lo.device)], 1)
    if scalar:
        mo = mo[..., 0]
        co = co[..., 0, 0]
    c = lambda t: t.to(out_dtype)
    return Modes(c(mo), c(wo), c(co), c(lo), n_modes)


# ------------------------------------------------------ generic (autograd)
def _generic_modes(mix, min_weight, max_modes, tol, max_iter, merge_tol):
    """Fallback for continuous families without closed forms: preconditioned
    gradient ascent on ``mix.log_prob`` (autograd) from every component mean,
    adaptive step with halving; finite-difference Hessian at the end."""
    scalar = len(mix.event_shape) == 0
    leaves = flatten_leaves(mix)
    lw = torch.cat([g.log_weights for g in leaves], dim=1).to(torch.float64)
    means = torch.cat([g.attr("mean") for g in leaves], dim=1).to(torch.float64)
    var = torch.cat([g.attr("variance") for g in leaves], dim=1).to(torch.float64)
    if scalar:
        means, var = means[..., None], var[..., None]
    n, S, d = means.shape
    valid = torch.isfinite(lw) & torch.isfinite(means).all(-1)
    var = torch.where(torch.isfinite(var) & (var > 0), var, torch.ones_like(var))
    x = torch.where(valid[..., None], means, torch.zeros_like(means))
    pdtype = mix.log_weights.dtype

    def logp(pts):  # pts (n, S, d) -> (n, S)
        v = pts.permute(1, 0, 2).to(pdtype)
        if scalar:
            v = v[..., 0]
        return mix.log_prob(v).permute(1, 0).to(torch.float64)

    def value_grad(pts):
        with torch.enable_grad():
            p = pts.detach().clone().requires_grad_(True)
            f = logp(p)
            (g,) = torch.autograd.grad(f.sum(), p)
        return f.detach(), g.detach()

    dev = means.device
    alpha = torch.ones(n, S, dtype=torch.float64, device=dev)
    act = valid.clone()
    f, g = value_grad(x)
    for _ in range(max_iter * 4):
        if not bool(act.any()):
            break
        step = alpha[..., None] * var * g
        cand = x + step
        f1 = logp(cand)
        ok = (f1 >= f - 1e-12 * f.abs().clamp_min(1.0)) & torch.isfinite(f1) & act
        x = torch.where(ok[..., None], cand, x)
        size = (step * step / var).sum(-1).sqrt()
        act = act & ~(ok & (size < tol)) & ~(~ok & (alpha < 1e-12))
        alpha = torch.where(ok, alpha * 2, alpha * 0.5)
        f, g = value_grad(x)
        f = torch.where(valid, f, torch.full_like(f, -math.inf))
    # Hessian by central differences of the gradient
    sd = var.sqrt()
    h = torch.zeros(n, S, d, d, dtype=torch.float64, device=dev)
    for j in range(d):
        e = torch.zeros(d, dtype=torch.float64, device=dev)
        e[j] = 1.0
        hj = 1e-4 * sd[..., j : j + 1]
        _, gp = value_grad(x + hj * e)
        _, gm = value_grad(x - hj * e)
        h[..., :, j] = (gp - gm) / (2 * hj)
    h = 0.5 * (h + h.transpose(-1, -2))
    lneg, info = torch.linalg.cholesky_ex(-h)
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    cov = torch.where(
        (info == 0)[..., None, None],
        torch.cholesky_inverse(torch.where((info == 0)[..., None, None], lneg, eye)),
        torch.diag_embed(var),
    )
    return _merge_climbs(x, f, valid, torch.linalg.inv(cov), cov, lw, max(merge_tol, 1e-4))


# ================================================================== branches
def branches(mix, sort: bool = True):
    """Component means with their mixing weights: the cheap view of the branches.

    A nested mixture (hierarchical MoE) is flattened into its leaves, whose
    weights are the products of the gate weights along each path.

    Parameters
    ----------
    mix : MixtureDistribution
    sort : bool, default=True
        Sort each row by decreasing weight (the heaviest branch first).

    Returns
    -------
    means : Tensor (n, K) for scalar y, (n, K, d_y) for vector y
    weights : Tensor (n, K)

    Shapes
    ------
    mix: batch (n,) with K components (K = the number of leaves of a nested
    mixture); means (n, K) for scalar y, (n, K, d_y) for vector y;
    weights (n, K).

    Examples
    --------
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from moekit import MixtureDistribution
    >>> lw = torch.tensor([[0.2, 0.8]]).log()
    >>> means, w = branches(MixtureDistribution(lw, Normal(torch.tensor([[0.0, 5.0]]), torch.ones(1, 2))))
    >>> means, w
    (tensor([[5., 0.]]), tensor([[0.8000, 0.2000]]))
    """
    leaves = flatten_leaves(mix)
    lw = torch.cat([g.log_weights for g in leaves], dim=1)
    means = torch.cat([g.attr("mean") for g in leaves], dim=1)
    w = lw.exp()
    if sort:
        order = torch.argsort(w, dim=1, descending=True, stable=True)
        w = w.gather(1, order)
        idx = order.reshape(order.shape + (1,) * (means.dim() - 2)).expand_as(means)
        means = means.gather(1, idx)
    return means, w
