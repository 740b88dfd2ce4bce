"""The Newton (IRLS) machinery shared by the GLM experts and the softmax gate.

A GLM expert's weighted M-step is Newton-Raphson on the weighted
log-likelihood.  What one Newton step needs -- the objective, its gradient
and the information matrix at the current coefficients -- is a sum over rows,
so it is an additive :class:`~moekit.stats.SuffStats`.  ``m_step(stats)``
takes one full step; :func:`moekit._mstep.maximize` iterates with
step-halving, so an M-step never lowers its objective.
"""

from __future__ import annotations

import functools
import math

import torch

from .._linalg import add_intercept, chunk_rows, gram, row_sums, solve_shared, solve_spd, weighted_grams
from .._mstep import fit_in_memory
from ..stats import SuffStats
from .base import Expert

__all__ = ["FIT_STEPS", "NewtonExpert", "multinomial_finish", "multinomial_gram_columns", "multinomial_newton_stats", "multinomial_row_terms",
           "multinomial_row_terms_t"]

#: Fewest Newton steps of a GLM expert's ``fit_weighted`` (a weighted fit of its own, or the initial fit);
#: inside EM the M-step takes ``max_m_steps`` (default one, an ECM step).
FIT_STEPS = 10


def multinomial_newton_stats(xd: torch.Tensor, logp: torch.Tensor, counts: torch.Tensor, hessian: str = "full"):
    """Objective, gradient and information of B weighted multinomial regressions (the last class is the reference).

    The objective is ``sum(counts * logp)``; the free coefficients are the
    first C-1 class rows of each regression (the last row is held at zero),
    so the information of regression b is
    ``sum_i s_ib (diag(g_ib) - g_ib g_ib^T) (x) x_i x_i^T`` over the first
    C-1 classes, with ``g = exp(logp)`` and ``s = counts.sum(-1)``.  The
    softmax gate is one regression over K experts (soft counts: the targets);
    a stack of K softmax experts is K regressions over C classes (counts:
    weight times one-hot y).

    Computed in two phases, which a caller holding several components' statistics on the same design
    may run itself to share one pass over the rows (see
    :meth:`moekit.MixtureOfExperts.suff_stats`): :func:`multinomial_row_terms` (the per-row
    weights), then :func:`multinomial_finish` (from their products with the design).

    Parameters
    ----------
    hessian : {"full", "block", "bound"}
        ``"full"``: the exact information, its (C-1) C / 2 distinct p x p
        blocks as weighted Gram matrices: about ``n C^2 p^2 / 2`` multiply-adds
        (where a cost model favours it, few inputs and many classes, one symmetric
        product per regression instead: :func:`_symmetric_product_information`).
        ``"block"``: only the diagonal blocks
        ``X^T diag(s g_j (1 - g_j)) X`` (``2 n (C-1) p^2`` flops).
        ``"bound"``: Böhning's (1992) fixed curvature, which needs only
        ``G = X^T diag(s) X`` (``n p^2`` flops): the information is bounded by
        ``0.5 (I - 1 1^T / C) (x) G``.

    Shapes
    ------
    xd : (n, p) with the intercept column; logp, counts : (n, B, C).
    Returns objective (), grad (B, (C-1) p) and info: (B, (C-1) p, (C-1) p)
    for "full"; (B, C-1, p, p) for "block"; (B, p, p) (the matrix G) for "bound".
    """
    b, c = logp.shape[1], logp.shape[2]
    packed = multinomial_gram_columns(b, c, hessian, xd.shape[1]) is not None
    if packed:
        objective, resid, w = multinomial_row_terms(logp, counts, hessian, xd.shape[1])
        grams = weighted_grams(xd, w)
    else:  # the symmetric product is cheaper for this shape
        g, s, objective, resid = _probabilities_and_residuals(logp, counts)
        grams = _symmetric_product_information(xd, g[..., :-1], s)
    grad, info = multinomial_finish(resid.T @ xd, grams, b, c, hessian, packed=packed)
    return objective, grad, info


def _probabilities_and_residuals(logp: torch.Tensor, counts: torch.Tensor):
    """``g = exp(logp)``, ``s = counts.sum(-1)``, the objective ``sum(counts * logp)`` and the residuals
    ``counts - s g`` (n, B C) of every class: what both forms of the information start from.

    Shapes
    ------
    logp, counts : (n, B, C) -> g (n, B, C), s (n, B), objective (), resid (n, B C).
    """
    n, b, c = logp.shape
    g = logp.exp()
    s = row_sums(counts.reshape(n * b, c)).reshape(n, b)  # counts.sum(-1), faster on the CPU
    resid = (counts - s[..., None] * g).reshape(n, b * c)  # every class (contiguous)
    return g, s, (counts * logp).sum(), resid


def multinomial_row_terms(logp: torch.Tensor, counts: torch.Tensor, hessian: str, p: int, out: torch.Tensor | None = None):
    """The per-row terms of :func:`multinomial_newton_stats` on a design of ``p`` columns.

    Returns ``objective`` (the sum), ``resid`` (n, B C), whose product ``resid^T xd`` is the
    gradient (every class, the reference's dropped by :func:`multinomial_finish`), and ``w`` (n, m),
    the weights of the m Gram blocks ``X^T diag(w_j) X`` that make up the information: the
    (C-1) C / 2 upper pairs ``s (delta_jl g_j - g_j g_l)`` per regression for "full", the
    ``s g_j (1 - g_j)`` for "block", ``s`` for "bound".  ``w`` is None where the symmetric
    product (:func:`_symmetric_product_information`) is cheaper than Gram blocks (few inputs, many classes).
    ``out`` (n, m), e.g. columns of a caller's larger work array, receives ``w`` (and is returned as it).

    Shapes
    ------
    logp, counts : (n, B, C) -> objective (), resid (n, B C), w (n, m) or None.
    """
    n, b, c = logp.shape
    km = c - 1
    g, s, objective, resid = _probabilities_and_residuals(logp, counts)
    if hessian == "bound":
        w = s
    elif hessian == "block":
        w = (s[..., None] * g[..., :km] * (1.0 - g[..., :km])).reshape(n, b * km)
    elif multinomial_gram_columns(b, c, hessian, p) is None:
        return objective, resid, None
    else:
        t = km * (km + 1) // 2
        gs = s[..., None] * g[..., :km]  # (n, B, C-1)
        flat = g.new_empty(n, b * t) if out is None else out
        w = flat.unflatten(1, (b, t))  # w[..., (j, l)] = s (delta_jl g_j - g_j g_l), the upper pairs row by row
        o = 0
        for j in range(km):
            torch.mul(gs[:, :, j : j + 1], g[:, :, j:km], out=w[:, :, o : o + km - j])
            w[:, :, o].sub_(gs[:, :, j])  # the diagonal pair (j, j): s g_j g_j - s g_j, negated below
            o += km - j
        return objective, resid, flat.neg_()
    if out is not None:
        w = out.copy_(w)
    return objective, resid, w


def multinomial_row_terms_t(logp: torch.Tensor, counts: torch.Tensor, hessian: str, p: int):
    """:func:`multinomial_row_terms` of one regression in the transposed layout: classes by rows.

    The same terms with rows and classes swapped, so that every per-class quantity is a contiguous
    row of length n (what a pass over a transposed design ``[1, x]^T``, p x n, works on):
    ``objective`` (the sum), ``resid`` (C, n) ``counts - s g`` and ``w`` (m, n), the weights of
    the m Gram blocks (the upper pairs for "full", ``s g_j (1 - g_j)`` for "block", ``s`` for
    "bound"); ``w`` is None where the symmetric product is cheaper (:func:`multinomial_gram_columns`).

    Shapes
    ------
    logp, counts : (C, n) -> objective (), resid (C, n), w (m, n) or None.
    """
    c, n = logp.shape
    km = c - 1
    m = multinomial_gram_columns(1, c, hessian, p)
    g = logp.exp()
    s = counts.sum(0)
    resid = counts - s * g
    objective = (counts * logp).sum()
    if m is None:
        return objective, resid, None
    if hessian == "bound":
        return objective, resid, s[None]
    gs = s * g[:km]  # (C-1, n)
    if hessian == "block":
        return objective, resid, gs - gs * g[:km]
    w = g.new_empty(m, n)  # w[(j, l)] = s (delta_jl g_j - g_j g_l), the upper pairs row by row
    o = 0
    for j in range(km):
        torch.mul(gs[j], g[j:km], out=w[o : o + km - j])
        w[o].sub_(gs[j])  # the diagonal pair (j, j): s g_j g_j - s g_j, negated below
        o += km - j
    return objective, resid, w.neg_()


def multinomial_gram_columns(b: int, c: int, hessian: str, p: int) -> int | None:
    """How many Gram blocks (weight columns) :func:`multinomial_row_terms` hands over for B regressions over C
    classes on a design of ``p`` columns; None where the information is cheaper as a symmetric product.

    The cost model of the exact ("full") information: the pair blocks cost ``T p (p + 1) / 2``
    multiply-adds per row plus four per element written, the symmetric product ``((C-1) p + p)^2 / 2``.
    """
    km = c - 1
    if hessian == "bound":
        return b
    if hessian == "block":
        return b * km
    t = km * (km + 1) // 2
    m = (km + 1) * p
    if km > 1 and t * p * (p + 1) / 2 + 4 * (t + p * (p + 1) / 2) >= m * m / 2:  # few inputs, many classes
        return None
    return b * t


def multinomial_finish(resid_x: torch.Tensor, grams: torch.Tensor, b: int, c: int, hessian: str, packed: bool = True):
    """Gradient and information of :func:`multinomial_newton_stats` from the row terms' products with the design.

    ``resid_x`` is ``resid^T xd`` and ``grams`` the Gram blocks ``X^T diag(w_j) X`` of
    :func:`multinomial_row_terms`' weights (summed over any number of row chunks: both are additive);
    with ``packed=False``, ``grams`` is already :func:`_symmetric_product_information`'s information.

    Shapes
    ------
    resid_x : (B C, p); grams : (m, p, p) -> grad (B, (C-1) p) and info as in :func:`multinomial_newton_stats`.
    """
    p = resid_x.shape[1]
    km = c - 1
    grad = resid_x.reshape(b, c, p)[:, :km].reshape(b, km * p)
    if hessian == "bound":
        return grad, grams
    if hessian == "block":
        return grad, grams.reshape(b, km, p, p)
    if not packed:
        return grad, grams
    if km == 0:
        return grad, grams.new_zeros(b, 0, 0)
    t = km * (km + 1) // 2
    return grad, grams.reshape(b, t * p * p)[:, _pair_layout(km, p, str(grams.device))].reshape(b, km * p, km * p)


def _symmetric_product_information(xd: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The exact multinomial information as one symmetric product ``M^T M`` per regression (BLAS ``syrk``).

    ``M = [Z, sqrt(s) x]`` with ``Z = g (x) sqrt(s) x`` over the free classes: ``Z^T Z`` is the
    ``g g^T`` term, ``Z^T sqrt(s) x`` the ``diag(g)`` blocks.  About ``n (C p)^2 / 2``
    multiply-adds, fewer passes over memory than the pair blocks: faster where p is small and C
    large (1.6x at p = 2, C = 8).

    Shapes
    ------
    xd : (n, p); g : (n, B, C-1); s : (n, B) -> (B, (C-1) p, (C-1) p).
    """
    n, p = xd.shape
    b, km = g.shape[1], g.shape[2]
    rs = s.clamp_min(0).sqrt()  # (n, B)
    zm = xd.new_empty(n, km * p + p)  # [Z_0 .. Z_{C-2}, sqrt(s) x] with Z_j = g_j sqrt(s) x
    infos = []
    for j in range(b):
        xs = zm[:, km * p :]
        torch.mul(xd, rs[:, j, None], out=xs)
        torch.mul(g[:, j, :, None], xs[:, None, :], out=zm[:, : km * p].view(n, km, p))
        zz = gram(zm)[: km * p]
        infos.append(torch.block_diag(*zz[:, km * p :].reshape(km, p, p)) - zz[:, : km * p])
    return torch.stack(infos)


@functools.lru_cache(maxsize=8)
def _pair_layout(km: int, p: int, device: str) -> torch.Tensor:
    """Where the pair blocks of :func:`multinomial_row_terms` go: for every entry of the (km p) x (km p) information,
    its index in the flattened (T, p, p) blocks of the upper pairs j <= l, row by row (below the
    diagonal, the transpose of block (l, j)).  Shape ((km p)^2,).
    """
    upper_j, upper_l = torch.triu_indices(km, km)
    pair = torch.empty(km, km, dtype=torch.long)
    pair[upper_j, upper_l] = torch.arange(upper_j.numel())
    pair[upper_l, upper_j] = torch.arange(upper_j.numel())
    j, a, l, c = torch.meshgrid(*(torch.arange(v) for v in (km, p, km, p)), indexing="ij")  # entry (j a, l c)
    lower = j > l
    row = torch.where(lower, c, a)
    col = torch.where(lower, a, c)
    placement = (pair[j, l] * p + row) * p + col
    return placement.reshape(-1).to(device)


class NewtonExpert(Expert):
    """A GLM expert fitted by Newton steps from additive statistics (base class of the GLM experts).

    Subclasses hold one parameter ``coef`` with a leading expert axis and
    implement ``_prepare_y``, ``_stats_chunk(xd, ex, y, w, coef)`` (returning
    ``objective`` (), ``grad`` (K, m), ``info`` (K, m, m), ``sw`` (K,) for the
    m free coefficients of each expert), ``_free`` / ``_set_free`` (the free
    coefficients as a (K, m) tensor) and ``_penalty_mask`` (an (m,) tensor,
    1 where the ridge penalty applies).

    Per-row extras.  A family that needs known per-row values besides the
    features (an offset of the linear predictor, the number of trials of a
    binomial) names them in ``extras``: x then has ``n_features +
    len(extras)`` columns, the features first and the extras last in that
    order, and :meth:`_design` splits a chunk of x into the design matrix and
    a dict of extras.  Extras travel with x through every row slice, chunk
    and batch, so they need no path of their own.  The ``"offset"`` extra is
    added to the linear predictor by :meth:`_eta` (coefficient fixed at one).

    Shared coefficients.  ``shared`` lists feature indices whose
    coefficients are common to all K experts of a stack (flexmix's
    ``FLXMRglmfix(fixed = ...)``): the Newton step is then solved jointly by
    :func:`~moekit._linalg.solve_shared`; ``_shared_free_positions`` says where
    the shared coefficients sit among an expert's free coefficients (a softmax
    expert has one per free class).
    """

    m_step_exact = False

    def __init__(
        self,
        n_features: int,
        n_experts: int | None,
        l2: float,
        max_m_steps: int,
        extras: tuple = (),
        shared=(),
    ):
        super().__init__(n_experts)
        if not (isinstance(n_features, int) and n_features >= 0):
            raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
        extras = tuple(extras)
        if len(set(extras)) != len(extras) or not all(isinstance(e, str) for e in extras):
            raise ValueError(f"extras must be distinct names, got {extras!r}")
        shared = sorted({int(j) for j in shared})
        if any(not 0 <= j < n_features for j in shared):
            raise ValueError(f"shared must list feature indices in 0..{n_features - 1}, got {shared!r}")
        self.extras = extras
        self.shared = shared
        if not (isinstance(max_m_steps, int) and max_m_steps >= 1):
            raise ValueError(f"max_m_steps must be a positive int, got {max_m_steps!r}")
        l2 = float(l2)
        if not (l2 >= 0 and math.isfinite(l2)):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        self.n_features = n_features
        self.l2 = l2
        self.max_m_steps = max_m_steps

    # ------------------------------------------------------------- inputs
    def input_slopes(self) -> torch.Tensor:
        """The coefficients of x: ``coef[..., 1:]`` (the intercept comes first)."""
        return self.coef.data[..., 1:]

    def _prepare_x(self, x: torch.Tensor) -> torch.Tensor:
        """x in the parameters' dtype and device, with its shape checked: (n, d_x + len(extras))."""
        width = self.n_features + len(self.extras)
        if x.dim() != 2 or x.shape[1] != width:
            more = f" ({self.n_features} features, then {', '.join(self.extras)})" if self.extras else ""
            raise ValueError(f"x must have shape (n, {width}){more} for this expert, got {tuple(x.shape)}")
        return x.to(dtype=self.coef.dtype, device=self.coef.device)

    def _design(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """A prepared chunk of x split into ``[1, features]`` (n, p) and the extras by name, each (n,)."""
        d = self.n_features
        return add_intercept(x[:, :d]), {name: x[:, d + i] for i, name in enumerate(self.extras)}

    def _eta_x(self, x: torch.Tensor) -> torch.Tensor:
        """Linear predictors (offset included) at the current coefficients for raw x: (n, K, ...)."""
        xd, ex = self._design(self._prepare_x(x))
        return self._eta(xd, self.coef, ex)

    def _eta(self, xd: torch.Tensor, coef: torch.Tensor, ex: dict | None = None) -> torch.Tensor:
        """Linear predictors for every expert: ``xd`` (n, p), ``coef`` (K, ..., p) -> (n, K, ...), plus any offset."""
        k = coef.shape[0]
        out = (xd @ coef.reshape(-1, xd.shape[1]).T).reshape(xd.shape[0], k, *coef.shape[1:-1])
        if ex and "offset" in ex:
            off = ex["offset"]
            out = out + off.reshape(off.shape[0], *([1] * (out.dim() - 1)))
        return out

    # --------------------------------------------------------- statistics
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """Newton statistics at the current coefficients (additive over rows).

        The data are processed in chunks of rows, so memory stays bounded
        however many rows there are.

        Shapes
        ------
        x : (n, d_x); y : (n,); weight : (n,) single or (n, K) stacked.
        Returns ``objective`` () the weighted log-likelihood summed over the
        experts (without the ridge penalty), ``grad`` (K, m) its gradient with
        respect to each expert's m free coefficients, ``info`` (K, m, m) the
        information matrices (minus the Hessians, one block per expert) and
        ``sw`` (K,) the total weight of each expert.
        """
        xx = self._prepare_x(x)
        yy = self._prepare_y(y, xx.shape[0])
        w = self._weight_nk(weight, xx.shape[0], xx)
        coef = self.coef.detach()
        rows = chunk_rows(self._k * self._n_free())
        n = xx.shape[0]
        return sum(
            self._stats_chunk(*self._design(xx[i : i + rows]), yy[i : i + rows], w[i : i + rows], coef)
            for i in range(0, max(n, 1), rows)
        )

    def n_parameters_total(self) -> int:
        """Free parameters of the whole stack, the ``shared`` coefficients counted once (what BIC counts)."""
        return self.n_parameters() * self._k - (self._k - 1) * len(self._shared_free_positions())

    def _shared_free_positions(self) -> list[int]:
        """Positions of the shared coefficients among an expert's free coefficients (``_free``): ``1 + j``."""
        return [1 + j for j in self.shared]

    def shared_mask(self) -> torch.Tensor:
        """Which entries of one expert's ``coef`` (``coef.shape[1:]``) hold a coefficient shared by the stack.

        The shared features' coefficients, ``coef[k, ..., 1 + j]``: their values are one value for all K.
        """
        mask = torch.zeros(self.coef.shape[1:], dtype=torch.bool, device=self.coef.device)
        mask[..., [1 + j for j in self.shared]] = True
        return mask

    def _n_free(self) -> int:
        return self._penalty_mask().numel()

    def penalty(self) -> torch.Tensor:
        """The ridge penalty ``0.5 * l2 * ||non-intercept free coefficients||^2`` summed over experts."""
        free = self._free(self.coef.detach())
        return 0.5 * self.l2 * ((free * self._penalty_mask()) ** 2).sum()

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Weighted fit: up to ``max(max_m_steps, FIT_STEPS)`` Newton steps with step-halving; never lowers the (penalised) objective.

        The objective is ``sum_ik w_ik log p_k(y_i | x_i) - penalty()``.

        Shapes
        ------
        x : (n, d_x); y : (n,); weight : (n,) single or (n, K) stacked.
        """
        xx = self._prepare_x(x)
        yy = self._prepare_y(y, xx.shape[0])
        fit_in_memory(self, xx, yy, self._weight_nk(weight, xx.shape[0], xx), max_steps=max(self.max_m_steps, FIT_STEPS))
        return self

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """One full Newton step per expert from the statistics (the driver adds step-halving).

        Each expert's information matrix is solved on its own (a batch of K
        small systems); a singular one (separable data, too few rows) gets
        :func:`~moekit.experts.gaussian.solve_spd`'s jitter.  Experts with no
        weight are left as they are.
        """
        coef = self.coef.data
        self._normalise(coef)
        free = self._free(coef)  # (K, m)
        grad = stats["grad"].to(coef.dtype)
        info = stats["info"].to(coef.dtype)
        if self.l2 > 0:
            pen = self.l2 * self._penalty_mask()
            grad = grad - pen * free
            info = info + torch.diag(pen)
        sw = stats["sw"].to(coef.dtype)
        keep = sw > 1e-12 * sw.sum().clamp_min(torch.finfo(sw.dtype).tiny)
        if self.shared and self._k > 1:  # one joint step: the shared coordinates stay tied across the experts
            tied = self._shared_free_positions()
            cols = torch.zeros(grad.shape[-1], dtype=torch.bool, device=grad.device)
            cols[tied] = True
            step = solve_shared(info, grad[..., None], tied)[..., 0]
            # an expert without weight keeps its own coefficients but moves the shared ones with the others
            movable = keep[:, None] | cols[None, :]
        else:
            step = solve_spd(info, grad[..., None])[..., 0]
            movable = keep[:, None]
        movable = movable & torch.isfinite(step).all(-1, keepdim=True)
        step = torch.where(movable, step, torch.zeros_like(step))
        self._set_free(coef, free + step)

    def _normalise(self, coef: torch.Tensor) -> None:
        """Move coef to its canonical representative in place (softmax: reference class at zero)."""

    def _free(self, coef: torch.Tensor) -> torch.Tensor:
        return coef

    def _set_free(self, coef: torch.Tensor, free: torch.Tensor) -> None:
        coef.copy_(free)

    def _penalty_mask(self) -> torch.Tensor:
        mask = torch.ones(self.n_features + 1, dtype=self.coef.dtype, device=self.coef.device)
        mask[0] = 0.0
        return mask

    def _weighted_mean_y(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per-expert weighted mean of y (or of its one-hot code): (K,) or (K, C)."""
        sw = weight.sum(0)
        tot = weight.T @ y
        safe = sw.clamp_min(torch.finfo(sw.dtype).tiny)
        return tot / (safe[:, None] if tot.dim() == 2 else safe)

    def init_from_responsibilities(self, x, y, weight):
        """Initial fit: intercept-only maximum likelihood, then Newton steps.

        Starting from the intercept-only fit (the weighted mean response
        through the link) makes the first Newton steps short and safe.
        """
        xx = self._prepare_x(x)
        yy = self._prepare_y(y, xx.shape[0])
        w = self._weight_nk(weight, xx.shape[0], xx)
        with torch.no_grad():
            self.coef.data.zero_()
            self._set_intercept_only(yy, w)
        return self.fit_weighted(xx, yy, w)  # shared slopes start tied at zero, and joint steps keep them tied

    def extra_repr(self) -> str:
        more = (f", extras={self.extras}" if self.extras else "") + (f", shared={self.shared}" if self.shared else "")
        return f"n_features={self.n_features}, n_experts={self.n_experts}, l2={self.l2}{more}"


