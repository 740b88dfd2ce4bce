"""Linear-Gaussian regression experts (scalar or vector y)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from .._linalg import add_intercept, affine, chunk_rows, solve_spd, weighted_grams
from ..stats import SuffStats
from .base import Expert

_COVARIANCES = ("full", "diag", "spherical")


class LinearGaussianExpert(Expert):
    """Linear regression with Gaussian noise: ``y | x ~ N(B^T [1, x], Sigma)``.

    Parameters
    ----------
    n_features : int
        Number of input columns d_x.
    n_outputs : int or None
        ``None`` for a scalar target (event shape ``()``), otherwise d_y.
    covariance : {"full", "diag", "spherical"}
        Structure of Sigma for vector targets (ignored for scalar y).
    n_experts : int or None
        ``None`` for one expert; K for K stacked experts evaluated together.
    var_floor : float
        Lower bound on every variance (eigenvalue of Sigma), in y's units squared.
    alpha : float
        Ridge penalty ``0.5 * alpha * ||B[1:]||^2 / sigma^2`` on the slopes (not
        the intercept): the M-step solves ``(X^T W X + alpha I) B = X^T W y``.
        0 (the default) is maximum likelihood.
    dtype : torch.dtype
        Parameter dtype (float64 by default, as EM wants).

    Shapes
    ------
    forward(x): x (n, d_x) -> distribution with batch shape (n,) [single] or
    (n, K) [stacked] and event shape () [scalar y] or (d_y,).

    Examples
    --------
    >>> import torch
    >>> e = LinearGaussianExpert(n_features=1)
    >>> x = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    >>> y = 2 * x[:, 0] + 1
    >>> _ = e.fit_weighted(x, y)
    >>> [round(v, 6) for v in e.coef[0, :, 0].tolist()]
    [1.0, 2.0]
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
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.covariance = "spherical" if n_outputs is None else covariance
        self.var_floor = float(var_floor)
        k, p, d = self._k, n_features + 1, self._d
        self.coef = nn.Parameter(torch.zeros(k, p, d, dtype=dtype))
        if self.covariance == "full":
            self.scale_tril_raw = nn.Parameter(torch.zeros(k, d, d, dtype=dtype))
        else:
            self.log_scale = nn.Parameter(torch.zeros(k, d if self.covariance == "diag" else 1, dtype=dtype))

    @property
    def _d(self) -> int:
        return 1 if self.n_outputs is None else self.n_outputs

    def extra_repr(self) -> str:
        return (
            f"n_features={self.n_features}, n_outputs={self.n_outputs}, "
            f"covariance={self.covariance!r}, n_experts={self.n_experts}"
        )

    # ----------------------------------------------------------- parameters
    def input_slopes(self) -> torch.Tensor:
        """The coefficients of x: ``coef[:, 1:, :]`` (row 0 holds the intercepts)."""
        return self.coef.data[:, 1:, :]

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors of the noise covariances, floored: (K, d, d)."""
        floor = math.sqrt(self.var_floor)
        if self.covariance == "full":
            raw = self.scale_tril_raw
            diag = raw.diagonal(dim1=-2, dim2=-1).exp().clamp_min(floor)
            return torch.tril(raw, -1) + torch.diag_embed(diag)
        s = self.log_scale.exp().clamp_min(floor).expand(self._k, self._d)
        return torch.diag_embed(s)

    def covariance_matrix(self) -> torch.Tensor:
        """Noise covariances: (K, d, d)."""
        l = self.scale_tril()
        return l @ l.transpose(-1, -2)

    def _set_covariance(self, cov: torch.Tensor, keep: torch.Tensor) -> None:
        """Set the noise covariance (K, d, d) for experts where ``keep`` is true."""
        floor = self.var_floor
        if self.covariance == "full":
            evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
            cov = evecs @ torch.diag_embed(evals.clamp_min(floor)) @ evecs.transpose(-1, -2)
            l = torch.linalg.cholesky(0.5 * (cov + cov.transpose(-1, -2)))
            raw = torch.tril(l, -1) + torch.diag_embed(l.diagonal(dim1=-2, dim2=-1).log())
            self.scale_tril_raw.data[keep] = raw[keep]
        else:
            var = cov.diagonal(dim1=-2, dim2=-1)
            if self.covariance == "spherical":
                var = var.mean(-1, keepdim=True)
            self.log_scale.data[keep] = 0.5 * var.clamp_min(floor).log()[keep]

    def n_parameters(self) -> int:
        d, p = self._d, self.n_features + 1
        cov = {"full": d * (d + 1) // 2, "diag": d, "spherical": 1}[self.covariance]
        return p * d + cov

    # ----------------------------------------------------------- likelihood
    def _loc(self, x: torch.Tensor) -> torch.Tensor:
        """Means: (n, K, d)."""
        coef = self.coef.permute(1, 0, 2).reshape(self.coef.shape[1], -1)  # (p, K d)
        return affine(x, coef.T).reshape(x.shape[0], self._k, self._d)

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
        resid = yy[:, None, :] - self._loc(x)  # (n, K, d)
        l = self.scale_tril()
        if self.covariance == "full" and self._d > 1:
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

        Shapes
        ------
        x : (n, d_x); y : (n,) or (n, d_y); weight : (n,) or (n, K).
        Returns ``sw`` (K,), ``xwx`` (K, p, p), ``xwy`` (K, p, d), ``ywy`` (K, d, d).
        """
        c = chunk_rows(self._k * (self.n_features + 1))
        if x.shape[0] > c:  # statistics are additive: sum them over row chunks
            return sum(
                self.suff_stats(x[i : i + c], y[i : i + c], None if weight is None else weight[i : i + c])
                for i in range(0, x.shape[0], c)
            )
        xd = add_intercept(x)
        n, p = xd.shape
        yy = (y[:, None] if y.dim() == 1 else y).to(xd.dtype)
        w = self._weight_nk(weight, n, xd)
        k, d = self._k, self._d
        wy = (w[:, :, None] * yy[:, None, :]).reshape(n, k * d)
        return SuffStats(
            sw=w.sum(0),
            xwx=weighted_grams(xd, w),
            xwy=(xd.T @ wy).reshape(p, k, d).permute(1, 0, 2),
            ywy=(yy.T @ wy).reshape(d, k, d).permute(1, 0, 2),
        )

    @torch.no_grad()
    def m_step(self, stats: SuffStats) -> None:
        """Exact weighted least squares and covariance; experts with no weight are left as they are."""
        sw = stats["sw"]
        total = sw.sum()
        keep = sw > 1e-12 * total.clamp_min(torch.finfo(sw.dtype).tiny)
        if not bool(keep.any()):
            return
        xwx = stats["xwx"]
        if self.alpha > 0:
            pen = torch.full((xwx.shape[-1],), self.alpha, dtype=xwx.dtype, device=xwx.device)
            pen[0] = 0.0
            xwx = xwx + torch.diag(pen)
        beta = solve_spd(xwx, stats["xwy"])
        xwy = stats["xwy"]
        resid = stats["ywy"] - xwy.transpose(-1, -2) @ beta  # residual sum of squares at the LS solution
        if self.alpha > 0:  # the ridge solution is not the LS one: expand the square
            bt = beta.transpose(-1, -2)
            resid = resid - bt @ xwy + bt @ stats["xwx"] @ beta
        cov = resid / sw.clamp_min(torch.finfo(sw.dtype).tiny)[:, None, None]
        self.coef.data[keep] = beta[keep].to(self.coef.dtype)
        self._set_covariance(cov.to(self.coef.dtype), keep)
