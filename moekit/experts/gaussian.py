"""Linear-Gaussian regression experts (scalar or vector y)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from .._linalg import add_intercept, affine, chunk_rows, solve_shared, solve_spd, transposed_design, weighted_grams
from ..stats import SuffStats
from ._missing import expected_stats, has_missing, iterate_em, marginal_log_prob
from .base import Expert

_COVARIANCES = ("full", "diag", "spherical", "tied", "tied_diag", "tied_spherical")
#: How each covariance option is stored: the structure of one noise covariance.
_STRUCTURE = {"full": "full", "diag": "diag", "spherical": "spherical", "tied": "full", "tied_diag": "diag",
              "tied_spherical": "spherical"}
#: Most conditional-maximisation cycles (coefficients, then covariances) of one M-step with shared coefficients.
ECM_CYCLES = 200


class LinearGaussianExpert(Expert):
    """Linear regression with Gaussian noise: ``y | x ~ N(B^T [1, x] (+ offset), Sigma)``.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x (0: intercept-only experts, x of shape (n, 0)).
    n_outputs : int or None
        ``None`` for a scalar target (event shape ``()``), otherwise d_y.
    covariance : {"full", "diag", "spherical", "tied", "tied_diag", "tied_spherical"}
        Structure of Sigma.  ``"full"``, ``"diag"``, ``"spherical"``: one
        noise covariance per expert (for scalar y all three are one variance
        per expert).  ``"tied"``, ``"tied_diag"``, ``"tied_spherical"``: one
        full / diagonal / spherical noise covariance shared by all K experts
        of a stack (flexmix's ``varFix``, scikit-learn's ``"tied"``; for
        scalar y any of them is one variance for all experts); the M-step
        takes the pooled residual covariance ``sum_k RSS_k / sum_k sw_k``.
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    var_floor : float
        Lower bound on every variance (eigenvalue of Sigma), in y's units squared.
    alpha : float
        Ridge penalty ``0.5 * alpha * tr(Sigma^-1 B[1:]^T B[1:])`` on the
        slopes (not the intercept): the M-step solves
        ``(X^T W X + alpha I) B = X^T W y`` (jointly over the stack with
        shared coefficients), and the covariance is the residual covariance
        at that B.  0 (the default) is maximum likelihood.
    dtype : torch.dtype
        Parameter dtype (float64 by default, as EM wants).
    offset : bool
        Whether x carries one more column, last, holding a known offset of
        the mean (coefficient fixed at one): ``E[y | x] = B^T [1, x] + offset``.
        Scalar y only.  The offset is not a feature (``input_slopes`` holds
        the features' coefficients only).
    shared : sequence of int
        Feature indices (into the d_x features) whose coefficients are
        common to all K experts of a stack (flexmix's ``FLXMRglmfix(fixed=)``).
        The M-step is an ECM: the joint weighted least squares of all
        coefficients at the current noise covariances (weights
        ``r_k / sigma_k^2``; for vector y its ``Sigma_k^-1 (x) X^T W_k X``
        form), solved by :func:`~moekit._linalg.solve_shared`, then the
        covariances at the new coefficients, repeated from the same
        statistics until it converges.  Each cycle never lowers the weighted
        log-likelihood.

    Attributes
    ----------
    coef : Parameter (K, d_x + 1, d)
        Intercepts (row 0), then one row per feature; d = 1 for scalar y.
        With ``shared``, rows ``1 + j`` of the shared features hold the same
        value in every expert (the model uses their mean over the stack, so
        that any move of them is a move of the one shared coefficient).
    scale_tril_raw : Parameter (K, d, d)
        ``"full"`` / ``"tied"``: Cholesky factors with log diagonals.
    log_scale : Parameter (K, m)
        Otherwise: log standard deviations, m = d (diagonal) or 1.  Tied
        covariances keep K equal copies (the model uses their mean).
    tied : bool
        Whether the noise covariance is one for the whole stack.
    structure : {"full", "diag", "spherical"}
        The structure of each noise covariance ("spherical" for scalar y).

    Shapes
    ------
    x : (n, d_x), or (n, d_x + 1) with ``offset`` (the offset last).
    forward(x): a distribution with batch shape (n,) [single] or (n, K)
    [stacked] and event shape () [scalar y] or (d_y,).

    Examples
    --------
    >>> import torch
    >>> e = LinearGaussianExpert(n_features=1)
    >>> x = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    >>> y = 2 * x[:, 0] + 1
    >>> _ = e.fit_weighted(x, y)
    >>> [round(v, 6) for v in e.coef[0, :, 0].tolist()]
    [1.0, 2.0]
    >>> tied = LinearGaussianExpert(1, n_experts=3, covariance="tied")
    >>> tied.n_parameters_total()  # 3 x (intercept, slope) + one variance
    7
    >>> shared = LinearGaussianExpert(2, n_experts=3, shared=[1])
    >>> shared.n_parameters_total()  # 3 x (intercept, slope 0, variance) + one shared slope
    10
    """

    m_step_exact = True

    def __init__(
        self,
        n_features: int,
        n_outputs: int | None = None,
        covariance: str = "full",
        n_experts: int | None = None,
        var_floor: float = 1e-6,
        alpha: float = 0.0,
        dtype: torch.dtype = torch.float64,
        offset: bool = False,
        shared=(),
    ):
        super().__init__(n_experts)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, got {covariance!r}")
        if not (isinstance(n_features, int) and n_features >= 0):
            raise ValueError(f"n_features must be a non-negative int, got {n_features!r}")
        if n_outputs is not None and not (isinstance(n_outputs, int) and n_outputs >= 1):
            raise ValueError(f"n_outputs must be None (scalar y) or a positive int, got {n_outputs!r}")
        if not var_floor > 0:
            raise ValueError(f"var_floor must be > 0, got {var_floor!r}")
        if not isinstance(offset, bool):
            raise TypeError(f"offset must be True or False, got {offset!r}")
        if offset and n_outputs is not None:
            raise ValueError(
                f"offset=True needs a scalar target (n_outputs=None), got n_outputs={n_outputs!r}; "
                "subtract a known offset of a vector y from y before fitting"
            )
        try:
            shared = sorted({int(j) for j in shared})
        except (TypeError, ValueError):
            raise TypeError(f"shared must be a sequence of feature indices, got {shared!r}") from None
        if shared and n_features == 0:
            raise ValueError(f"shared must be empty for an expert without features (n_features=0), got {shared!r}")
        if any(not 0 <= j < n_features for j in shared):
            raise ValueError(
                f"shared must list feature indices in 0..{n_features - 1} (the expert has {n_features} features), "
                f"got {shared!r}"
            )
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.tied = covariance.startswith("tied")
        if n_outputs is None:  # scalar y: one variance, per expert or for all
            covariance = "tied_spherical" if self.tied else "spherical"
        self.covariance = covariance
        self.var_floor = float(var_floor)
        self.offset = offset
        self.extras = ("offset",) if offset else ()
        self.shared = shared
        k, p, d = self._k, n_features + 1, self._d
        self.coef = nn.Parameter(torch.zeros(k, p, d, dtype=dtype))
        if self.structure == "full":
            self.scale_tril_raw = nn.Parameter(torch.zeros(k, d, d, dtype=dtype))
        else:
            self.log_scale = nn.Parameter(torch.zeros(k, d if self.structure == "diag" else 1, dtype=dtype))

    @property
    def _d(self) -> int:
        return 1 if self.n_outputs is None else self.n_outputs

    @property
    def structure(self) -> str:
        """The structure of each noise covariance: "full", "diag" or "spherical" (tied or not)."""
        return _STRUCTURE[self.covariance]

    def extra_repr(self) -> str:
        more = (", offset=True" if self.offset else "") + (f", shared={self.shared}" if self.shared else "")
        return (
            f"n_features={self.n_features}, n_outputs={self.n_outputs}, "
            f"covariance={self.covariance!r}, n_experts={self.n_experts}{more}"
        )

    # ----------------------------------------------------------- parameters
    def input_slopes(self) -> torch.Tensor:
        """The coefficients of x: ``coef[:, 1:, :]`` (row 0 holds the intercepts; an offset has none)."""
        return self.coef.data[:, 1:, :]

    def shared_mask(self) -> torch.Tensor:
        """Which entries of one expert's ``coef`` (p, d) the stack shares: the rows ``1 + j`` of the shared features."""
        mask = torch.zeros(self.coef.shape[1:], dtype=torch.bool, device=self.coef.device)
        mask[[1 + j for j in self.shared]] = True
        return mask

    def _coef(self) -> torch.Tensor:
        """The coefficients the model uses (K, p, d): the rows of shared features are their mean over the stack."""
        coef = self.coef
        if not self.shared or coef.shape[0] == 1:
            return coef
        mask = torch.zeros(coef.shape[1], dtype=torch.bool, device=coef.device)
        mask[[1 + j for j in self.shared]] = True
        return torch.where(mask[None, :, None], _stack_mean(coef), coef)

    def _tied_mean(self, t: torch.Tensor) -> torch.Tensor:
        """A noise parameter as the model uses it: tied ones are the mean of their K copies."""
        if self.tied and t.shape[0] > 1:
            return _stack_mean(t).expand_as(t)
        return t

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors of the noise covariances, floored: (K, d, d) (K equal ones when tied)."""
        if self.structure == "full":
            raw = self._tied_mean(self.scale_tril_raw)
            diag = raw.diagonal(dim1=-2, dim2=-1).exp().clamp_min(math.sqrt(self.var_floor))
            return torch.tril(raw, -1) + torch.diag_embed(diag)
        return torch.diag_embed(self._scales().expand(self._k, self._d))

    def _scales(self) -> torch.Tensor:
        """The noise standard deviations of a diagonal or spherical structure, floored (the diagonal of
        :meth:`scale_tril`): (K, d) for "diag", (K, 1) for "spherical" (scalar y)."""
        return self._tied_mean(self.log_scale).exp().clamp_min(math.sqrt(self.var_floor))

    def covariance_matrix(self) -> torch.Tensor:
        """Noise covariances: (K, d, d)."""
        l = self.scale_tril()
        return l @ l.transpose(-1, -2)

    def _structured(self, cov: torch.Tensor) -> torch.Tensor:
        """The covariance of this structure nearest ``cov`` (K, d, d) in the M-step's sense, floored.

        Full: the eigenvalues floored at ``var_floor``; diagonal: the diagonal;
        spherical: the mean of the diagonal (each the maximum-likelihood
        covariance of that structure given the residual covariance ``cov``).
        """
        floor = self.var_floor
        if self.structure == "full":
            evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
            out = evecs @ torch.diag_embed(evals.clamp_min(floor)) @ evecs.transpose(-1, -2)
            return 0.5 * (out + out.transpose(-1, -2))
        var = cov.diagonal(dim1=-2, dim2=-1)
        if self.structure == "spherical":
            var = var.mean(-1, keepdim=True).expand_as(var)
        return torch.diag_embed(var.clamp_min(floor))

    def _set_covariance(self, cov: torch.Tensor, keep: torch.Tensor) -> None:
        """Set the noise covariance (K, d, d) for experts where ``keep`` is true (tied: all K, from ``cov[keep][0]``)."""
        cov = self._structured(cov)
        if self.tied:  # one covariance for the stack: every copy gets it
            cov = cov[keep][:1].expand_as(cov)
            keep = torch.ones_like(keep)
        if self.structure == "full":
            l = torch.linalg.cholesky(cov)
            raw = torch.tril(l, -1) + torch.diag_embed(l.diagonal(dim1=-2, dim2=-1).log())
            self.scale_tril_raw.data[keep] = raw[keep]
        else:
            var = cov.diagonal(dim1=-2, dim2=-1)
            if self.structure == "spherical":
                var = var[..., :1]
            self.log_scale.data[keep] = 0.5 * var.log()[keep]

    def _n_covariance(self) -> int:
        d = self._d
        return {"full": d * (d + 1) // 2, "diag": d, "spherical": 1}[self.structure]

    def n_parameters(self) -> int:
        """Free parameters of one expert on its own: ``p d`` coefficients and its noise covariance.

        For a stack whose covariance or coefficients are shared, the whole
        stack's count is :meth:`n_parameters_total` (what BIC uses).
        """
        return (self.n_features + 1) * self._d + self._n_covariance()

    def n_parameters_total(self) -> int:
        """Free parameters of the whole module: shared coefficients and a tied covariance counted once.

        ``K (p - p_s) d + p_s d`` coefficients (``p_s`` shared features when
        K > 1) plus one covariance per expert, or one for the stack when tied.
        """
        k, d, p = self._k, self._d, self.n_features + 1
        ps = len(self.shared) if k > 1 else 0
        cov = self._n_covariance() * (1 if self.tied else k)
        return k * (p - ps) * d + ps * d + cov

    # ----------------------------------------------------------- likelihood
    def _split_x(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x checked and split into its features (n, d_x) and the offset (n,) (None without ``offset``)."""
        width = self.n_features + len(self.extras)
        if x.dim() != 2 or x.shape[1] != width:
            more = f" ({self.n_features} features, then the offset)" if self.offset else ""
            raise ValueError(f"x must have shape (n, {width}){more} for this expert, got {tuple(x.shape)}")
        if not self.offset:
            return x, None
        return x[:, : self.n_features], x[:, self.n_features]

    def _loc(self, x: torch.Tensor) -> torch.Tensor:
        """Means: (n, K, d), the offset included."""
        feats, off = self._split_x(x)
        c = self._coef()
        coef = c.permute(1, 0, 2).reshape(c.shape[1], -1)  # (p, K d)
        loc = affine(feats, coef.T).reshape(x.shape[0], self._k, self._d)
        if off is not None:
            loc = loc + off.to(loc.dtype)[:, None, None]
        return loc

    def forward(self, x: torch.Tensor):
        loc = self._loc(x)
        l = self.scale_tril()
        if self.n_outputs is None:
            scale = l[:, 0, 0]
            if self.stacked:
                return Normal(loc[..., 0], scale.expand(loc.shape[0], -1), validate_args=False)
            return Normal(loc[:, 0, 0], scale[0].expand(loc.shape[0]), validate_args=False)
        if self.stacked:
            return MultivariateNormal(loc, scale_tril=l, validate_args=False)
        return MultivariateNormal(loc[:, 0], scale_tril=l[0], validate_args=False)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Log-density of y under each expert: (n,) single or (n, K) stacked."""
        yy = y[:, None] if self.n_outputs is None else y
        if self.n_outputs is not None and has_missing(yy):  # NaN coordinates: the observed ones' marginal
            return self._out(marginal_log_prob(yy, self._loc(x), self.scale_tril()))
        l = self.scale_tril()
        if self._d == 1:  # scalar y: (n, K) throughout, no reduction over a unit axis
            s = l[:, 0, 0]  # (K,)
            z = (yy - self._loc(x)[..., 0]) / s
            return self._out(torch.square(z).mul(-0.5) - (s.log() + 0.5 * math.log(2 * math.pi)))
        resid = yy[:, None, :] - self._loc(x)  # (n, K, d)
        if self.structure == "full" and self._d > 1:
            z = torch.linalg.solve_triangular(l, resid.permute(1, 2, 0), upper=False)  # (K, d, n)
            maha = (z * z).sum(1).T  # (n, K)
        else:
            s = l.diagonal(dim1=-2, dim2=-1)  # (K, d)
            maha = ((resid / s) ** 2).sum(-1)
        logdet = l.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        out = -0.5 * maha - logdet - 0.5 * self._d * math.log(2 * math.pi)
        return self._out(out)

    # --------------------------------------------------------------- M-step
    def suff_stats(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> SuffStats:
        """Weighted least-squares statistics (additive over rows).

        With ``offset``, y less the offset enters the statistics.

        Shapes
        ------
        x : (n, d_x) (or (n, d_x + 1) with the offset); y : (n,) or (n, d_y); weight : (n,) or (n, K).
        Returns ``sw`` (K,), ``xwx`` (K, p, p), ``xwy`` (K, p, d), ``ywy`` (K, d, d).
        """
        if self.design_coef(self.n_features + 1) is not None and x.dtype == self.coef.dtype and x.shape[0] > 0:
            return self._stats_transposed(x, y, weight)
        c = chunk_rows(self._k * (self._d + 1) + self.n_features + 1)  # per row: w, w y and [1, x]
        if x.shape[0] > c:  # statistics are additive: sum them over row chunks
            return sum(
                self.suff_stats(x[i : i + c], y[i : i + c], None if weight is None else weight[i : i + c])
                for i in range(0, x.shape[0], c)
            )
        feats, off = self._split_x(x)
        xd = add_intercept(feats)
        n = xd.shape[0]
        yy = (y[:, None] if y.dim() == 1 else y).to(xd.dtype)
        if off is not None:  # y less its known offset
            yy = yy - off.to(xd.dtype)[:, None]
        w = self._weight_nk(weight, n, xd)
        if self.n_outputs is not None and has_missing(yy):  # NaN coordinates: their conditional moments
            with torch.no_grad():
                loc = self._loc(x) if off is None else self._loc(x) - off.to(xd.dtype)[:, None, None]  # yy's means
                return expected_stats(xd, yy, w, loc, self.scale_tril())
        partial, wy = self._least_squares_terms(yy, w)
        return self.design_finish(partial, (xd.T @ wy).T, weighted_grams(xd, w))

    def _stats_transposed(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> SuffStats:
        """:meth:`suff_stats` for scalar y over the transposed design ``[1, x]^T`` (kept across EM iterations by
        :func:`~moekit._linalg.design_cache`), experts by rows, in row chunks: the experts' initial fit, as the
        mixture's E-step over that design forms them."""
        self._split_x(x)  # the shape check
        n = x.shape[0]
        w = self._weight_nk(weight, n, x).T  # (K, n)
        yy = y.to(x.dtype)
        xt = transposed_design(x)
        c = chunk_rows(2 * self._k)  # per row: w and w y
        total = None
        for i in range(0, n, c):
            xc = xt[:, i : i + c]
            partial, wy, wc = self.design_terms_t(yy[i : i + c], w[:, i : i + c])
            part = (partial, wy @ xc.T, weighted_grams(None, wc.T, xt=xc))
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        return self.design_finish(*total)

    def _least_squares_terms(self, yy: torch.Tensor, w: torch.Tensor) -> tuple[SuffStats, torch.Tensor]:
        """``sw`` and ``ywy``, and the rows ``w y`` (n, K d) whose product with the design is ``xwy``.

        Shapes
        ------
        yy (n, d); w (n, K).
        """
        k, d = self._k, self._d
        wy = (w[:, :, None] * yy[:, None, :]).reshape(yy.shape[0], k * d)
        return SuffStats(sw=w.sum(0), ywy=(yy.T @ wy).reshape(d, k, d).permute(1, 0, 2)), wy

    # ------------------------------------------------- statistics on a shared design
    def design_columns(self, p: int) -> int | None:
        """How many weighted Gram blocks of the design ``[1, x]`` (``p`` columns) :meth:`design_terms` asks for:
        one per expert; None with an offset (the design would not be the caller's)."""
        if self.offset or p != self.n_features + 1:
            return None
        return self._k

    def design_terms(self, xd: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                     out: torch.Tensor | None = None):
        """The per-row terms of :meth:`suff_stats` on a design ``xd = [1, x]`` that the caller shares.

        Returns ``(partial, lin, w)``: the statistics that need no product with the design (``sw``,
        ``ywy``), the rows ``lin = w y`` whose product ``lin^T xd`` the caller forms, and the
        weights ``w`` of the Gram blocks ``X^T diag(w_k) X``; :meth:`design_finish` completes the
        statistics from their sums over row chunks.  None where y has missing coordinates (their
        statistics are conditional moments: :meth:`suff_stats`).  ``out`` (n, K), e.g. columns of the
        caller's work array, receives ``w``.

        Shapes
        ------
        xd (n, p); y (n,) or (n, d); weight (n,) or (n, K).
        Returns partial, lin (n, K d), w (n, K).
        """
        yy = (y[:, None] if y.dim() == 1 else y).to(xd.dtype)
        if self.n_outputs is not None and has_missing(yy):
            return None
        w = self._weight_nk(weight, xd.shape[0], xd)
        partial, wy = self._least_squares_terms(yy, w)
        return partial, wy, (w if out is None else out.copy_(w))

    def design_finish(self, partial: SuffStats, lin_x: torch.Tensor, grams: torch.Tensor) -> SuffStats:
        """:meth:`suff_stats` from the summed ``partial``, ``lin^T xd`` (K d, p) and Gram blocks (K, p, p)."""
        k, d = self._k, self._d
        xwy = lin_x.T.reshape(-1, k, d).permute(1, 0, 2)
        return SuffStats(sw=partial["sw"], xwx=grams, xwy=xwy, ywy=partial["ywy"])

    # ---------------------------------------- one pass over a transposed design (experts by rows)
    def design_coef(self, p: int) -> torch.Tensor | None:
        """The rows whose products with ``[1, x]`` (``p`` columns) are the experts' means: (K, p), for
        scalar y without an offset; None otherwise."""
        if self.offset or self.n_outputs is not None or self._d != 1 or p != self.n_features + 1:
            return None
        return self._coef().detach()[:, :, 0]

    def log_prob_t(self, mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` from the means ``design_coef(p) @ [1, x]^T``, experts by rows (scalar y).

        Shapes
        ------
        mean (K, n); y (n,) -> (K, n).
        """
        s = self._scales().detach()[:, 0]  # (K,)
        z = (y - mean).div_(s[:, None])
        return z.square_().mul_(-0.5).sub_((s.log() + 0.5 * math.log(2 * math.pi))[:, None])

    def design_terms_t(self, y: torch.Tensor, targets: torch.Tensor):
        """:meth:`design_terms` with experts by rows (scalar y): ``(partial, lin = w y (K, n), w (K, n))``.

        Shapes
        ------
        y (n,); targets (K, n).
        """
        wy = targets * y
        return SuffStats(sw=targets.sum(1), ywy=(wy @ y)[:, None, None]), wy, targets

    @property
    def accepts_missing_y(self) -> bool:
        """Whether NaN coordinates of y are marginalised (vector y: ``n_outputs`` set); see :mod:`._missing`."""
        return self.n_outputs is not None

    def fit_weighted(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None):
        """Weighted M-step on in-memory data: the exact maximiser of ``sum(weight * log p)``.

        With NaN coordinates in a vector y, ``m_step(suff_stats(...))`` is one
        EM step of the missing-data problem (Ghahramani & Jordan 1994; it never
        lowers the objective); they are repeated until the objective stops
        improving (:func:`~moekit.experts._missing.iterate_em`).

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) single or (n, K) stacked.
        """
        if self.n_outputs is not None and has_missing(y):
            iterate_em(self, x, y, weight)
            return self
        return super().fit_weighted(x, y, weight)

    def _penalised(self, xwx: torch.Tensor) -> torch.Tensor:
        """``X^T W X`` plus the ridge penalty on the slopes (not the intercept)."""
        if not self.alpha > 0:
            return xwx
        pen = torch.full((xwx.shape[-1],), self.alpha, dtype=xwx.dtype, device=xwx.device)
        pen[0] = 0.0
        return xwx + torch.diag(pen)

    @staticmethod
    def _rss(stats_xwx, xwy, ywy, beta) -> torch.Tensor:
        """Residual sums of squares and products at coefficients ``beta``: (K, d, d)."""
        bt = beta.transpose(-1, -2)
        cross = bt @ xwy
        return ywy - cross - cross.transpose(-1, -2) + bt @ stats_xwx @ beta

    def _pooled(self, cov_num: torch.Tensor, sw: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The M-step's covariance from residual sums ``cov_num`` (K, d, d): per expert, or pooled when tied."""
        tiny = torch.finfo(sw.dtype).tiny
        if self.tied:
            pooled = cov_num[keep].sum(0) / sw[keep].sum().clamp_min(tiny)
            return pooled.expand_as(cov_num)
        return cov_num / sw.clamp_min(tiny)[:, None, None]

    def shared_coef_step(self, stats: SuffStats, cov: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The joint weighted least squares of all coefficients at noise covariances ``cov``, shared rows tied.

        Maximises ``sum_k [tr(P_k B_k^T xwy_k) - 0.5 tr(P_k B_k^T A_k B_k)]``
        (``P_k = cov_k^-1``, ``A_k = xwx_k`` plus the ridge) over the experts
        ``keep``, with the rows of the shared features equal across them: in
        vec form ``(A_k (x) P_k) vec(B_k) = vec(xwy_k P_k)``, solved by
        :func:`~moekit._linalg.solve_shared`.

        Shapes
        ------
        cov : (K, d, d) -> (K', p, d) for the K' experts in ``keep`` (all by default).
        """
        xwx, xwy = self._penalised(stats["xwx"]), stats["xwy"]
        if keep is not None:
            xwx, xwy, cov = xwx[keep], xwy[keep], cov[keep]
        k, p, d = xwy.shape
        prec = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        prec = 0.5 * (prec + prec.transpose(-1, -2))
        a = (xwx[:, :, None, :, None] * prec[:, None, :, None, :]).reshape(k, p * d, p * d)  # A_k (x) P_k, row-major
        b = (xwy @ prec).reshape(k, p * d, 1)
        idx = [(1 + j) * d + c for j in self.shared for c in range(d)]
        return solve_shared(a, b, idx).reshape(k, p, d)

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """The weighted M-step from the statistics; experts with no weight are left as they are.

        Without shared coefficients: the exact weighted least squares and the
        (pooled, when tied) residual covariance.  With shared coefficients:
        ECM cycles (joint coefficients at the current covariances, then the
        covariances) from the same statistics until the coefficients and
        covariances stop moving (at most :data:`ECM_CYCLES`); each cycle
        never lowers the weighted log-likelihood.
        """
        sw = stats["sw"]
        total = sw.sum()
        keep = sw > 1e-12 * total.clamp_min(torch.finfo(sw.dtype).tiny)
        if not bool(keep.any()):
            return
        dtype = self.coef.dtype
        xwx, xwy, ywy = stats["xwx"], stats["xwy"], stats["ywy"]
        if self.shared and self._k > 1:
            self._ecm(stats, keep)
            return
        beta = solve_spd(self._penalised(xwx), xwy)
        if self.n_outputs is None and not self.tied and bool(keep.all()):  # scalar y, every expert kept: no masks needed
            var = (self._rss(xwx, xwy, ywy, beta)[:, 0, 0] / sw.clamp_min(torch.finfo(sw.dtype).tiny))
            self.coef.data.copy_(beta)
            self.log_scale.data.copy_(var.clamp_min(self.var_floor).log_().mul_(0.5)[:, None])
            return
        cov = self._pooled(self._rss(xwx, xwy, ywy, beta), sw, keep)
        self.coef.data[keep] = beta[keep].to(dtype)
        self._set_covariance(cov.to(dtype), keep)

    def _ecm(self, stats: SuffStats, keep: torch.Tensor) -> None:
        """ECM cycles of experts with shared coefficients, from one set of statistics."""
        dtype = self.coef.dtype
        sw = stats["sw"].to(dtype)
        xwx, xwy, ywy = (stats[n].to(dtype) for n in ("xwx", "xwy", "ywy"))
        kept = keep.nonzero()[:, 0]
        sh = [1 + j for j in self.shared]
        cov = self.covariance_matrix().detach().clone()
        beta = self._coef().detach().clone()
        for _ in range(ECM_CYCLES):
            new_beta = beta.clone()
            new_beta[kept] = self.shared_coef_step(stats, cov, keep).to(dtype)
            new_beta[:, sh] = new_beta[kept[0], sh]  # experts without weight move their shared rows with the others
            resid = self._rss(xwx, xwy, ywy, new_beta)
            new_cov = cov.clone()
            upd = self._structured(self._pooled(resid, sw, keep))
            new_cov[keep] = upd[keep]
            if self.tied:
                new_cov[:] = upd[kept[0]]
            moved = max(_rel_change(new_beta, beta), _rel_change(new_cov, cov))
            beta, cov = new_beta, new_cov
            if moved <= 1e-13:
                break
        self.coef.data.copy_(beta)
        self._set_covariance(cov, torch.ones_like(keep) if self.tied else keep)

    @classmethod
    def stack(cls, experts: list["Expert"]) -> "Expert":
        """Stack single experts of this family; tied covariances and shared coefficients must agree."""
        first = experts[0] if experts else None
        for e in experts:
            if isinstance(e, LinearGaussianExpert) and isinstance(first, LinearGaussianExpert):
                same = (e.covariance, e.shared, e.offset, e.n_features, e.n_outputs)
                if same != (first.covariance, first.shared, first.offset, first.n_features, first.n_outputs):
                    raise ValueError(
                        "experts must agree in covariance, shared, offset, n_features and n_outputs to be stacked; "
                        f"got {first!r} and {e!r}"
                    )
        new = super().stack(experts)
        if isinstance(new, LinearGaussianExpert) and new._k > 1:
            parts = []
            if new.tied:
                parts.append(new.scale_tril_raw if new.structure == "full" else new.log_scale)
            if new.shared:
                parts.append(new.coef[:, [1 + j for j in new.shared]])
            for t in parts:
                if not bool((t.detach() == t.detach()[:1]).all()):
                    raise ValueError(
                        "experts with a tied covariance or shared coefficients can be stacked only when those agree; "
                        "these differ: fit them as one stack, or use covariance='full' / shared=() "
                    )
        return new


def _rel_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """Largest change of ``new`` from ``old``, relative to their size."""
    scale = float(torch.maximum(new.abs().max(), old.abs().max())) if new.numel() else 0.0
    return float((new - old).abs().max()) / (1.0 + scale) if new.numel() else 0.0


def _stack_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over the leading (expert) axis, (1, ...), exactly ``t[0]`` when the K copies are equal.

    Written ``t[0] + mean(t - t[0])``: the same function as the mean (each copy's gradient is 1/K), but
    without the rounding of ``(a + ... + a) / K``, so a tied stack gives the same numbers as its experts alone.
    """
    first = t[:1]
    return first + (t - first).mean(0, keepdim=True)
